"""Atomic, safe checkpoint files: written to a temporary name and renamed into place, read back with
``torch.load(weights_only=True)`` (tensors and plain Python types only)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = ["CheckpointError", "atomic_write_bytes", "atomic_write_text", "is_temporary", "load_checkpoint",
           "remove_stale_temporaries", "save_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, or not an rtdet checkpoint."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# A write in progress is the hidden file .<name>.<random>.rtdet-tmp beside its target. The suffix is rtdet's
# own, so that clean-ups (stale temporaries, a failed run's folder) recognise exactly these files and never
# a user's own *.tmp.
TMP_SUFFIX = ".rtdet-tmp"
_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+" + re.escape(TMP_SUFFIX) + "$")


def is_temporary(name: str | Path) -> bool:
    """True for the name of a temporary file rtdet's atomic writes create (``.<name>.<random>.rtdet-tmp``)."""
    return bool(_TMP_NAME.match(Path(name).name))


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    return _atomic(Path(path), lambda fh: torch.save(obj, fh))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file (results, predictions) atomically."""
    return _atomic(Path(path), lambda fh: fh.write(text.encode()))


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | Callable[[BinaryIO], Any]) -> Path:
    """Write bytes, or whatever ``data(fh)`` writes to the open file (np.savez, PIL), atomically."""
    return _atomic(Path(path), (lambda fh: fh.write(data)) if isinstance(data, bytes | bytearray) else data)


def remove_stale_temporaries(folder: str | Path) -> list[tuple[Path, int]]:
    """Delete the temporaries that writes killed before their rename (``kill -9``, power loss) left in
    ``folder`` (not its subfolders); returns [(path, bytes)]. Only for a folder no other process is writing
    to at the same time (a run folder, at the start or resume of its run)."""
    removed = []
    for p in Path(folder).glob(f".*{TMP_SUFFIX}") if Path(folder).is_dir() else []:
        if p.is_file() and is_temporary(p):
            size = p.stat().st_size
            p.unlink(missing_ok=True)
            removed.append((p, size))
    return removed


def _unreadable_reason(e: Exception, path: Path) -> str:
    """Why torch.load refused a file, in our words. torch's own message for a weights_only refusal advises
    loading with weights_only=False, which would run code from the file: rtdet never does, and never
    repeats that advice."""
    text = str(e).strip()
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"it holds Python objects, not only tensors and plain values (it references the Python object "
                f"'{found.group(1)}'); rtdet reads checkpoints without running code from them")
    detail = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in detail.splitlines()
             if line.strip() and "weights_only" not in line and "torch.load" not in line]
    first = lines[0][:200] if lines else ("empty file" if path.stat().st_size == 0 else "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; a clear CheckpointError when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle with objects, random bytes ...
        reason = _unreadable_reason(e, path)
        if reason.startswith("it holds Python objects"):
            raise CheckpointError(f"{path}: cannot be read as a checkpoint: {reason}.") from None
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint ({reason}). "
            f"The file may be truncated or not a torch checkpoint; use another copy (e.g. last.pt) or re-save it."
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt
