"""Atomic, safe checkpoint files: written to a temporary name and renamed into place, read back with
``torch.load(weights_only=True)`` (tensors and plain Python types only)."""

from __future__ import annotations

import errno
import os
import pickletools
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = ["CheckpointError", "atomic_write_bytes", "atomic_write_text", "is_rtdet_checkpoint", "is_temporary",
           "load_checkpoint", "remove_stale_temporaries", "save_checkpoint", "read_limit", "check_archive",
           "refuse_allocating_calls"]


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


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:  # no inode left
        raise (_write_failure(path, e) if e.errno in _NO_SPACE else e) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as e:  # Python's own "[Errno 28] No space left on device" names no file: name it
        Path(tmp).unlink(missing_ok=True)
        if e.errno in _NO_SPACE:
            raise _write_failure(path, e) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves half a file, and a
    full disk leaves the previous file in place and raises ``OSError(ENOSPC, "no space left on <path>")``."""
    return _atomic(Path(path), lambda fh: _torch_save(obj, fh, Path(path)))


def _torch_save(obj: Any, fh: BinaryIO, path: Path) -> None:
    """torch.save, whose zip writer reports a failed write (a full disk, a quota) as a RuntimeError
    ``[enforce fail at inline_container.cc ...]``: said here as the OSError it is."""
    try:
        torch.save(obj, fh)
    except RuntimeError as e:
        text = str(e)
        if "inline_container" not in text and "write" not in text.lower():
            raise
        raise _write_failure(path, e) from None


_NEARLY_FULL = 256 << 20  # free bytes under which a write that failed for no stated reason is taken as ENOSPC


def _write_failure(path: Path, cause: BaseException) -> OSError:
    """The OSError for a write that failed: ENOSPC (``no space left on <path>``) unless the cause says otherwise."""
    code = getattr(cause, "errno", None)
    if code is None:  # torch's zip writer keeps no errno: a failed write with little space left is a full disk
        try:
            vfs = os.statvfs(path.parent)
            code = errno.ENOSPC if vfs.f_bavail * vfs.f_frsize < _NEARLY_FULL else errno.EIO
        except OSError:
            code = errno.EIO
    if code in _NO_SPACE:
        return OSError(code, f"no space left on {path.parent} while writing {path.name}; the previous "
                             f"{path.name} (if any) is kept. Free some space and run again")
    return OSError(code, f"writing {path} failed ({os.strerror(code)}: {str(cause).splitlines()[0][:120]}); the "
                         f"previous {path.name} (if any) is kept")


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


# ------------------------------------------------------------------------------------------ reading, bounded
READ_FLOOR = 256 << 20  # bytes any file may expand to in memory (small files with small tensors)
READ_FACTOR = 16  # ... and per byte of the file: real checkpoints store tensors uncompressed (1:1)


def read_limit(file_bytes: int) -> int:
    """The bytes reading a file of ``file_bytes`` may take in memory: a budget proportional to the file."""
    return max(READ_FLOOR, READ_FACTOR * int(file_bytes))


def check_archive(zf: zipfile.ZipFile, where: str, file_bytes: int) -> None:
    """Refuse a zip whose records inflate beyond what its size allows, before any record is read (a 1 MB
    deflated record can claim gigabytes)."""
    limit, total = read_limit(file_bytes), 0
    for info in zf.infolist():
        total += info.file_size
        if info.file_size > limit or total > limit:
            raise CheckpointError(
                f"{where}: the record {info.filename} inflates to {info.file_size} bytes (all records so far: "
                f"{total}), more than a {file_bytes}-byte file may expand to ({limit} bytes); refusing to read it "
                f"(a damaged or hostile file)")


# Pickle opcodes that push a name: what a later REDUCE may call. ``bytearray(n)`` is the one constructor
# torch.load(weights_only=True) allows that allocates a size given in the file (n = 10**10: 10 GB).
_ALLOCATING = {"bytearray"}


def refuse_allocating_calls(data: bytes, where: str) -> None:
    """Refuse a pickle that names a constructor which allocates a size written in the file, before
    torch.load runs it (``bytearray(10**10)`` from a few bytes)."""
    try:
        for op, arg, _ in pickletools.genops(data):
            name = arg.split()[-1] if op.name == "GLOBAL" and isinstance(arg, str) and arg.split() else arg
            if op.name in ("GLOBAL", "SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and name in _ALLOCATING:
                raise CheckpointError(f"{where}: its pickle builds a {name}, which would allocate a size written "
                                      f"in the file; rtdet does not read it (a damaged or hostile file)")
    except (ValueError, EOFError):
        return  # damaged opcodes: torch.load says what is wrong


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


def _check_before_loading(path: Path) -> None:
    """What torch.load would not bound: inflated records and allocating constructors (see above)."""
    if not zipfile.is_zipfile(path):
        return  # torch.load names what is wrong with it
    with zipfile.ZipFile(path) as zf:
        check_archive(zf, str(path), path.stat().st_size)
        for name in zf.namelist():
            if name.count("/") == 1 and name.endswith("/data.pkl"):
                refuse_allocating_calls(zf.read(name), str(path))


def is_rtdet_checkpoint(obj: Any) -> bool:
    """A dict written by rtdet: a 'model' (or 'ema') entry holding 'yaml' and 'state_dict'.

    Here, below every reader of checkpoints, so the model loader (rtdet.io.load) and the backbone-row loader
    it calls (rtdet.io.backbones) ask the same question without importing each other."""
    if not isinstance(obj, dict):
        return False
    return any(isinstance(obj.get(k), dict) and "yaml" in obj[k] and "state_dict" in obj[k] for k in ("model", "ema"))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; a clear CheckpointError when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        _check_before_loading(path)
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
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
