"""Label cache: the validated :class:`LabelSet` of one source, saved so that the next open of a large
dataset reads one file instead of every label.

The cache lives in a cache folder (``$RTDET_CACHE_DIR``, default ``~/.cache/rtdet/labels``), never in the
dataset, which may be read-only or shared. Its file name comes from the source path and the number of
classes; inside, a key hashes the path, size and modification time of every file the labels were read
from (images, label files, candidate label paths that did not exist, the list / JSON file), so adding,
removing or editing any of them invalidates it. It is an ``.npz`` read with ``allow_pickle=False`` and
written to a temporary name, then renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from rtdet.data.formats import LabelSet, Problem
from rtdet.utils.checkpoint import atomic_write_bytes

__all__ = ["CACHE_VERSION", "cache_path", "default_cache_dir", "fingerprint", "load_cache", "save_cache"]

CACHE_VERSION = 1
log = logging.getLogger("rtdet.data")


def default_cache_dir() -> Path:
    env = os.environ.get("RTDET_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rtdet" / "labels"


def cache_path(cache_dir: str | Path, source_path: Path, nc: int) -> Path:
    tag = hashlib.sha1(f"{Path(source_path).resolve()}|{nc}".encode()).hexdigest()[:16]
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(source_path).name)
    return Path(cache_dir) / f"{name}-{tag}.labels.npz"


def fingerprint(paths: list[str], extra: str = "") -> str:
    """sha256 over (path, size, mtime) of each file; a missing file hashes as missing."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{extra}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|-\n".encode())
    return h.hexdigest()


def _pack(strings: list[str]) -> np.ndarray:
    return np.frombuffer("\n".join(strings).encode("utf-8"), dtype=np.uint8)


def _unpack(arr: np.ndarray, n: int) -> list[str]:
    if n == 0:
        return []
    return arr.tobytes().decode("utf-8").split("\n")


def save_cache(path: Path, labels: LabelSet, key: str, all_files: list[str]) -> bool:
    """Write the cache atomically; returns False (and logs why) when the folder is not writable."""
    path = Path(path)
    payload = {
        "version": np.array(CACHE_VERSION),
        "key": _pack([key]),
        "n_images": np.array(len(labels.im_files)),
        "n_all": np.array(len(all_files)),
        "im_files": _pack(labels.im_files),
        "label_files": _pack(labels.label_files),
        "all_files": _pack(all_files),
        "shapes": labels.shapes.astype(np.int64),
        "offsets": labels.offsets.astype(np.int64),
        "cls": labels.cls.astype(np.int64),
        "boxes": labels.boxes.astype(np.float32),
        "problems": _pack([json.dumps([p.to_dict() for p in labels.problems])]),
        "facts": _pack([json.dumps(dict(labels.facts))]),
    }
    try:
        atomic_write_bytes(path, lambda fh: np.savez(fh, **payload))
        return True
    except OSError as e:
        log.info("label cache not written to %s (%s); labels will be re-read next time", path, e)
        return False


def read_cache(path: Path) -> tuple[str, list[str], LabelSet] | None:
    """(key, all_files, labels) from a cache file, or None when absent, unreadable or another version."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION:
                return None
            n, n_all = int(z["n_images"]), int(z["n_all"])
            problems = [Problem(**p) for p in json.loads(z["problems"].tobytes().decode("utf-8"))]
            labels = LabelSet(
                im_files=_unpack(z["im_files"], n), label_files=_unpack(z["label_files"], n),
                shapes=z["shapes"].reshape(-1, 2), offsets=z["offsets"], cls=z["cls"],
                boxes=z["boxes"].reshape(-1, 4), problems=problems,
                facts=Counter(json.loads(z["facts"].tobytes().decode("utf-8"))),
            )
            return z["key"].tobytes().decode("utf-8"), _unpack(z["all_files"], n_all), labels
    except Exception as e:  # truncated or foreign file: rebuild it
        log.info("label cache %s unreadable (%s: %s); rebuilding it", path, type(e).__name__, e)
        return None


def load_cache(path: Path, key: str) -> LabelSet | None:
    """The cached labels when the cache exists and its key equals ``key``."""
    got = read_cache(path)
    if got is None or got[0] != key:
        return None
    return got[2]
