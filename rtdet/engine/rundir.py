"""Run folders: ``<project>/<task>/<name>``, incremented (exp, exp2, exp3, ...) so a run never overwrites
another unless ``exist_ok``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["run_dir", "latest_run"]


def run_dir(project: str | Path, task: str, name: str | None = None, exist_ok: bool = False,
            create: bool = True) -> Path:
    """The folder for a new run. ``name`` defaults to the task; taken names get 2, 3, ... appended."""
    base = Path(project or "runs") / task
    name = name or task
    path = base / name
    if not exist_ok:
        n = 2
        while path.exists():
            path = base / f"{name}{n}"
            n += 1
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def latest_run(project: str | Path = "runs", pattern: str = "*/*/weights/last.pt") -> Path:
    """The most recently written last.pt under ``project`` (for ``resume=true``)."""
    found = sorted(Path(project or "runs").glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"resume=true found no {pattern} under '{project}'; pass resume=path/to/weights/last.pt"
        )
    return found[-1]
