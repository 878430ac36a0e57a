"""Run folders: ``<project>/<task>/<name>``, the one place every verb gets its folder from.

    with RunFolder(args["project"], "val", args["name"], args["exist_ok"]) as folder:
        ...                                    # nothing on disk yet: a failure here leaves nothing behind
        write(folder.path / "predictions.json")   # the folder is claimed on first use

* A folder is *claimed*: created with ``mkdir`` (never ``exist_ok``), so two runs started at the same time
  with the same ``name`` get two folders (exp, exp2, exp3, ...); the file system decides who wins, not a
  check followed by a create. ``exist_ok=true`` reuses the named folder instead.
* A run name is one path component: ``name=../../x`` (or ``a/b``, ``.``, ``..``) is a bad setting, refused by
  the schema (:func:`check_run_name`) before anything runs.
* A run that fails (an error, Ctrl-C, SIGTERM) removes the folder it claimed when it holds nothing but empty
  folders, rtdet's own temporaries and the records it names as disposable (training's args.yaml), and the
  ``<project>/<task>`` parents it made when they are empty again: no empty run folder is left behind. A
  folder that existed before (``exist_ok``) is never removed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rtdet.utils.checkpoint import is_temporary
from rtdet.utils.schema import SettingError

__all__ = ["RunFolder", "check_run_name", "claim_run_dir", "holds_nothing", "latest_run", "run_dir"]


def check_run_name(name: str) -> str:
    """``name`` if it is a single folder name; ValueError saying why not (the schema's check of ``name``)."""
    text = str(name)
    if text.strip() in (".", "..") or "/" in text or "\\" in text or "\0" in text or text != text.strip():
        raise ValueError("a run name is one folder name (no '/', '\\', '.', '..' or surrounding spaces), "
                         "e.g. name=exp; use project= to choose where runs go")
    return text


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the ones this call created, deepest first."""
    made = []
    for p in reversed([folder, *folder.parents]):
        if not p.exists():
            try:
                p.mkdir()
                made.append(p)
            except FileExistsError:  # made by a concurrent run at the same moment: fine
                pass
    return made[::-1]


def claim_run_dir(project: str | Path, task: str, name: str | None = None,
                  exist_ok: bool = False) -> tuple[Path, bool, list[Path]]:
    """Create the run folder: ``<project>/<task>/<name>``, or with 2, 3, ... appended when taken (the
    ``mkdir`` that succeeds is the claim). Returns (folder, created by this call, parents created)."""
    name = check_run_name(name or task)
    base = Path(project or "runs") / task
    parents = _make_parents(base)
    path = base / name
    if exist_ok:
        created = not path.is_dir()
        path.mkdir(exist_ok=True)
        return path, created, parents
    n = 2
    while True:
        try:
            path.mkdir()
            return path, True, parents
        except FileExistsError:
            path = base / f"{name}{n}"
            n += 1
        except FileNotFoundError:  # a failed run removed the empty <project>/<task> just now: make it again
            parents += _make_parents(base)


def run_dir(project: str | Path, task: str, name: str | None = None, exist_ok: bool = False) -> Path:
    """Claim and return a run folder (see :func:`claim_run_dir`); prefer :class:`RunFolder` in a verb,
    which also removes it again when the run fails."""
    return claim_run_dir(project, task, name, exist_ok)[0]


def holds_nothing(folder: Path, disposable: tuple[str, ...] = ()) -> bool:
    """True when ``folder`` holds only (empty) folders, rtdet's own temporaries and the ``disposable`` files
    at its top (a run's settings record, worthless without its results): nothing of value."""
    folder = Path(folder)
    return all(is_temporary(f) or (Path(root) == folder and f in disposable)
               for root, _dirs, files in os.walk(folder) for f in files)


class RunFolder:
    """The folder of one run: claimed on first use of :attr:`path`, removed on failure if still empty.

    Use it as a context manager around the whole verb; after a success the folder stays as it is."""

    def __init__(self, project: str | Path | None, task: str, name: str | None = None, exist_ok: bool = False,
                 disposable: tuple[str, ...] = ()):
        try:
            check_run_name(name or task)
        except ValueError as e:
            raise SettingError(f"name={name!r}: {e}") from None
        self.project, self.task, self.name, self.exist_ok = project or "runs", task, name, bool(exist_ok)
        self.disposable = tuple(disposable)  # top-level files that alone are not worth keeping (see holds_nothing)
        self._path: Path | None = None
        self._created = False
        self._parents: list[Path] = []

    @property
    def claimed(self) -> bool:
        return self._path is not None

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path, self._created, self._parents = claim_run_dir(self.project, self.task, self.name,
                                                                      self.exist_ok)
        return self._path

    def discard_if_empty(self) -> bool:
        """Remove the claimed folder (and the parents made for it) when it holds nothing of value."""
        if self._path is None or not self._created or not self._path.is_dir():
            return False
        if not holds_nothing(self._path, self.disposable):
            return False
        shutil.rmtree(self._path, ignore_errors=True)
        for parent in self._parents:  # deepest first; a parent another run now uses is not empty
            try:
                parent.rmdir()
            except OSError:
                break
        return True

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.discard_if_empty()
        return False


def latest_run(project: str | Path = "runs", pattern: str = "*/*/weights/last.pt") -> Path:
    """The most recently written last.pt under ``project`` (for ``resume=true``)."""
    found = sorted(Path(project or "runs").glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"resume=true found no {pattern} under '{project}'; pass resume=path/to/weights/last.pt"
        )
    return found[-1]
