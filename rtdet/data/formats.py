"""Dataset descriptions and label readers, with validation.

A dataset is a YAML file (``path``, ``train``, ``val``, optional ``test``, ``names``). Each split points at
one or more *sources*:

* a folder of images in YOLO layout: labels in the sibling ``labels/`` tree (``.../images/a/x.jpg`` ->
  ``.../labels/a/x.txt``), or a ``.txt`` beside the image;
* a ``.txt`` list of image paths (relative lines resolve against the list file's folder);
* a COCO instances ``.json`` (``annotations/instances_train.json``); its images are looked up in the
  folder given as ``{json: ..., images: ...}``, else ``<json folder>/../images/<split>``,
  ``<json folder>/../<split>`` (``<split>`` is the file stem without ``instances_``), ``../images``, ``..``.

Every label is validated while reading. A problem never raises: it becomes a :class:`Problem` (file, line,
what was wrong, what was done) and the image or row is skipped / repaired by the policy in docs/data.md.
The result of reading one source is a :class:`LabelSet` (columnar arrays, boxes normalised cx, cy, w, h).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rtdet.utils.yaml_file import read_yaml

__all__ = [
    "IMG_FORMATS",
    "read_image",
    "walk_images",
    "DataConfig",
    "DataConfigError",
    "LabelSet",
    "Problem",
    "Source",
    "load_data_config",
    "parse_yolo_label",
    "read_coco_source",
    "coco_ids",
    "read_yolo_source",
]

log = logging.getLogger("rtdet.data")
IMG_FORMATS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
MIN_IMAGE_SIDE = 10  # pixels; smaller files are almost always thumbnails or corrupt
OUTSIDE_TOL = 1e-4  # normalised; coordinates this close to [0, 1] are clipped silently (float round-off)
_EXIF_ORIENTATION = 0x0112


class DataConfigError(ValueError):
    """A dataset YAML (or COCO JSON) that cannot be used: names the file, the key and the path tried."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data, reported once. ``line`` is 1-based (or a COCO annotation id)."""

    kind: str
    file: str
    message: str
    action: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message} -> {self.action}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.file, "line": self.line, "message": self.message,
                "action": self.action}


# Problem kinds and the action each one triggers (docs/data.md lists the same table).
ACTIONS = {
    "image_missing": "image skipped",
    "image_unreadable": "image skipped",
    "image_too_small": "image skipped",
    "image_format": "image skipped",
    "image_duplicate": "duplicate entry skipped",
    "folder_repeat": "folder skipped (already read)",
    "image_truncated": "kept, decoded as far as the data goes",
    "label_unreadable": "image skipped",
    "row_fields": "row dropped",
    "row_value": "row dropped",
    "class_id": "row dropped",
    "box_size": "row dropped",
    "box_outside": "row dropped",
    "box_clipped": "box clipped to the image",
    "row_duplicate": "duplicate row dropped",
    "ann_image": "annotation dropped",
    "image_id_duplicate": "images sharing the id skipped, with their annotations",
    "ann_category": "annotation dropped",
    "ann_bbox": "annotation dropped",
}


@dataclass(frozen=True)
class Source:
    """One entry of a split: ``kind`` is ``dir`` | ``list`` | ``coco`` | ``image``."""

    kind: str
    path: Path
    images: Path | None = None  # COCO: folder the json's file_names are relative to


@dataclass
class DataConfig:
    """A parsed dataset YAML. ``splits`` maps train/val/test to resolved sources."""

    file: Path | None
    root: Path
    names: list[str]
    splits: dict[str, list[Source]]
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def nc(self) -> int:
        return len(self.names)


@dataclass
class LabelSet:
    """Validated labels of one source, stored column-wise (cheap to share with loader workers).

    Image ``i`` owns rows ``offsets[i]:offsets[i+1]`` of ``cls`` [N] int64 and ``boxes`` [N, 4] float32
    (normalised cx, cy, w, h in the displayed orientation). ``shapes`` [M, 2] are (h, w) as displayed.
    """

    im_files: list[str]
    label_files: list[str]
    shapes: np.ndarray
    offsets: np.ndarray
    cls: np.ndarray
    boxes: np.ndarray
    problems: list[Problem] = field(default_factory=list)
    facts: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.im_files)

    @classmethod
    def from_records(cls, records: list[tuple[str, str, tuple[int, int], np.ndarray, np.ndarray]],
                     problems: list[Problem], facts: Counter) -> LabelSet:
        counts = np.array([len(r[3]) for r in records], dtype=np.int64)
        offsets = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        cls_ = np.concatenate([r[3] for r in records]).astype(np.int64) if records else np.zeros(0, np.int64)
        boxes = (np.concatenate([r[4] for r in records]).astype(np.float32).reshape(-1, 4) if records
                 else np.zeros((0, 4), np.float32))
        shapes = np.array([r[2] for r in records], dtype=np.int64).reshape(-1, 2)
        return cls(im_files=[r[0] for r in records], label_files=[r[1] for r in records], shapes=shapes,
                   offsets=offsets, cls=cls_, boxes=boxes, problems=problems, facts=facts)

    @staticmethod
    def concat(sets: list[LabelSet]) -> LabelSet:
        if len(sets) == 1:
            return sets[0]
        offs, base = [np.zeros(1, np.int64)], 0
        for s in sets:
            offs.append(s.offsets[1:] + base)
            base += int(s.offsets[-1])
        facts: Counter = Counter()
        for s in sets:
            facts.update(s.facts)
        return LabelSet(
            im_files=[f for s in sets for f in s.im_files],
            label_files=[f for s in sets for f in s.label_files],
            shapes=np.concatenate([s.shapes for s in sets]).reshape(-1, 2),
            offsets=np.concatenate(offs),
            cls=np.concatenate([s.cls for s in sets]),
            boxes=np.concatenate([s.boxes for s in sets]).reshape(-1, 4),
            problems=[p for s in sets for p in s.problems],
            facts=facts,
        )

    def select(self, keep: list[int]) -> LabelSet:
        """The images ``keep`` (indices, in that order) with their labels; problems and facts are kept."""
        idx = np.asarray(keep, dtype=np.int64)
        counts = np.diff(self.offsets)[idx] if len(idx) else np.zeros(0, np.int64)
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]) if len(idx) else \
            np.zeros(0, np.int64)
        return LabelSet(im_files=[self.im_files[i] for i in idx], label_files=[self.label_files[i] for i in idx],
                        shapes=self.shapes[idx].reshape(-1, 2), offsets=offsets, cls=self.cls[rows],
                        boxes=self.boxes[rows].reshape(-1, 4), problems=self.problems, facts=self.facts)

    def labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.cls[a:b], self.boxes[a:b]


# --------------------------------------------------------------------------------------------- the YAML
def _resolve_yaml_path(data: str | Path) -> Path:
    p = Path(data).expanduser()
    if p.is_file():
        return p.resolve()
    builtin = Path(__file__).resolve().parents[1] / "cfg" / "datasets" / p.name
    if not p.is_absolute() and builtin.is_file():
        return builtin
    raise DataConfigError(
        f"dataset file '{data}' not found (tried {p.resolve()}). Give the path to a dataset YAML with keys "
        f"path, train, val, names (see docs/data.md)."
    )


def _split_entry(yaml_file: Path, root: Path, key: str, value: Any) -> list[Source]:
    entries = value if isinstance(value, list) else [value]
    sources = []
    for entry in entries:
        images = None
        if isinstance(entry, dict):  # COCO with an explicit images folder
            if "json" not in entry:
                raise DataConfigError(
                    f"{yaml_file}: key '{key}': a mapping entry must be {{json: <file>, images: <folder>}}, "
                    f"got keys {sorted(entry)}"
                )
            images = entry.get("images")
            entry = entry["json"]
        if not isinstance(entry, str) or not entry:
            raise DataConfigError(
                f"{yaml_file}: key '{key}' must be a path (folder, .txt list or COCO .json) or a list of them, "
                f"got {entry!r}"
            )
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else root / p
        if not p.exists():
            raise DataConfigError(
                f"{yaml_file}: key '{key}': '{entry}' does not exist (tried {p}, relative to path '{root}'). "
                f"Fix the path, or the 'path:' key it is relative to."
            )
        if p.is_dir():
            sources.append(Source("dir", p))
        elif p.suffix.lower() == ".txt":
            sources.append(Source("list", p))
        elif p.suffix.lower() == ".json":
            img_dir = None
            if images is not None:
                img_dir = Path(images).expanduser()
                img_dir = img_dir if img_dir.is_absolute() else root / img_dir
                if not img_dir.is_dir():
                    raise DataConfigError(
                        f"{yaml_file}: key '{key}.images': folder '{images}' does not exist (tried {img_dir})"
                    )
            sources.append(Source("coco", p, img_dir))
        elif p.suffix.lower() in IMG_FORMATS:
            sources.append(Source("image", p))
        else:
            raise DataConfigError(
                f"{yaml_file}: key '{key}': '{entry}' ({p}) is neither a folder, a .txt image list, a COCO "
                f".json nor an image"
            )
    return sources


def _parse_names(yaml_file: Path, raw: dict) -> list[str]:
    if "names" not in raw:
        raise DataConfigError(
            f"{yaml_file}: missing key 'names' (the class names, a list or a {{id: name}} mapping). "
            f"Add e.g. `names: [person, car]`."
        )
    names = raw["names"]
    if isinstance(names, dict):
        if not all(isinstance(k, int) for k in names):
            raise DataConfigError(f"{yaml_file}: key 'names': mapping keys must be integer class ids, "
                                  f"got {list(names)[:5]}")
        missing = sorted(set(range(len(names))) - set(names))
        if missing:
            raise DataConfigError(
                f"{yaml_file}: key 'names': class ids must be 0..{len(names) - 1} without gaps; "
                f"missing {missing[:10]}"
            )
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataConfigError(f"{yaml_file}: key 'names' must be a non-empty list or mapping, got {names!r}")
    names = [str(n) for n in names]
    if "nc" in raw and raw["nc"] != len(names):
        raise DataConfigError(f"{yaml_file}: 'nc: {raw['nc']}' disagrees with the {len(names)} names; "
                              f"remove 'nc' or fix it")
    return names


def load_data_config(data: str | Path | dict) -> DataConfig:
    """Read and check a dataset YAML (a path, a built-in name, or an already-loaded dict).

    ``path`` defaults to the YAML's folder; relative ``path`` resolves against the YAML's folder; split
    entries resolve against ``path``. ``train``, ``val`` and ``names`` are required.
    """
    if isinstance(data, dict):
        raw, yaml_file, base = dict(data), Path("<dict>"), Path.cwd()
    else:
        yaml_file = _resolve_yaml_path(data)
        raw = read_yaml(yaml_file, DataConfigError)
        base = yaml_file.parent
    if not isinstance(raw, dict):
        raise DataConfigError(f"{yaml_file}: expected a mapping with keys path, train, val, names; "
                              f"got {type(raw).__name__}")
    root = Path(str(raw.get("path") or ".")).expanduser()
    root = (root if root.is_absolute() else base / root).resolve()
    if not root.is_dir():
        raise DataConfigError(f"{yaml_file}: key 'path': folder '{raw.get('path')}' does not exist (tried {root})")
    names = _parse_names(yaml_file, raw)
    splits: dict[str, list[Source]] = {}
    for key in SPLITS:
        if raw.get(key) in (None, "", []):
            if key in ("train", "val"):
                raise DataConfigError(
                    f"{yaml_file}: missing key '{key}' (required: train, val, names). "
                    f"Add e.g. `{key}: images/{key}` (relative to path '{root}')."
                )
            continue
        splits[key] = _split_entry(yaml_file, root, key, raw[key])
    return DataConfig(file=None if isinstance(data, dict) else yaml_file, root=root, names=names,
                      splits=splits, raw=raw)


# ------------------------------------------------------------------------------------------ YOLO labels
def parse_yolo_label(text: str, nc: int, file: str) -> tuple[np.ndarray, np.ndarray, list[Problem], Counter]:
    """Parse one YOLO label file: rows ``class cx cy w h`` (normalised) or ``class x1 y1 x2 y2 ...``
    (a polygon, turned into its enclosing box). Returns cls [n], boxes [n, 4] cx cy w h, problems, facts."""
    problems: list[Problem] = []
    facts: Counter = Counter()
    cls_out: list[int] = []
    box_out: list[tuple[float, float, float, float]] = []
    seen: dict[tuple, int] = {}

    def bad(kind: str, line: int, msg: str) -> None:
        problems.append(Problem(kind, file, msg, ACTIONS[kind], line))

    for ln, row in enumerate(text.splitlines(), 1):
        fields = row.split()
        if not fields:
            continue
        n = len(fields)
        if n != 5 and not (n >= 7 and n % 2 == 1):
            bad("row_fields", ln, f"{n} fields in '{row.strip()[:60]}', expected 5: class cx cy w h")
            continue
        try:
            vals = [float(v) for v in fields]
        except ValueError:
            bad("row_value", ln, f"not a number in '{row.strip()[:60]}'")
            continue
        if not all(math.isfinite(v) for v in vals):
            bad("row_value", ln, f"nan/inf in '{row.strip()[:60]}'")
            continue
        c = vals[0]
        if c != int(c) or not 0 <= c < nc:
            bad("class_id", ln, f"class id {fields[0]} is not one of 0..{nc - 1} (the {nc} names)")
            continue
        if n == 5:
            cx, cy, w, h = vals[1:]
            if w <= 0 or h <= 0:
                bad("box_size", ln, f"box width/height {w:g}/{h:g} must be > 0")
                continue
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        else:
            facts["polygon_rows"] += 1
            xs, ys = vals[1::2], vals[2::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            if x2 <= x1 or y2 <= y1:
                bad("box_size", ln, "polygon has zero width or height")
                continue
        if min(x1, y1) < -OUTSIDE_TOL or max(x2, y2) > 1 + OUTSIDE_TOL:
            cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
            if cx2 <= cx1 or cy2 <= cy1:
                bad("box_outside", ln, f"box ({x1:.4g}, {y1:.4g}, {x2:.4g}, {y2:.4g}) lies outside the image")
                continue
            bad("box_clipped", ln, f"box ({x1:.4g}, {y1:.4g}, {x2:.4g}, {y2:.4g}) extends outside [0, 1]")
            x1, y1, x2, y2 = cx1, cy1, cx2, cy2
        else:
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
        key = (int(c), round(x1, 6), round(y1, 6), round(x2, 6), round(y2, 6))
        if key in seen:
            bad("row_duplicate", ln, f"same box and class as line {seen[key]}")
            continue
        seen[key] = ln
        cls_out.append(int(c))
        box_out.append(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))
    return (np.array(cls_out, np.int64), np.array(box_out, np.float32).reshape(-1, 4), problems, facts)


def _label_candidates(im_file: str) -> list[str]:
    stem = os.path.splitext(im_file)[0]
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    out = []
    if sa in im_file:
        out.append(sb.join(stem.rsplit(sa, 1)) + ".txt")
    out.append(stem + ".txt")
    return out


def find_label_file(im_file: str) -> str | None:
    """The YOLO label of an image: the ``labels/`` sibling tree first, else a .txt beside the image."""
    for cand in _label_candidates(im_file):
        if os.path.isfile(cand):
            return cand
    return None


def _is_truncated_jpeg(path: str) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-2, os.SEEK_END)
        return fh.read() != b"\xff\xd9"


def verify_image(path: str) -> tuple[tuple[int, int] | None, list[Problem], Counter]:
    """Check an image file without decoding it fully. Returns (h, w) as displayed (EXIF orientation
    applied) or None when the image must be skipped."""
    from PIL import Image  # Pillow is a matplotlib dependency; imported lazily, only for header reads

    facts: Counter = Counter()
    try:
        with Image.open(path) as im:
            w, h = im.size
            mode, fmt = im.mode, im.format
            im.verify()  # must come first: it checks the structure (PNG chunk CRCs, truncation)
        with Image.open(path) as im:
            try:
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # broken EXIF block: OpenCV ignores it too
                orientation = 1
    except FileNotFoundError:
        return None, [Problem("image_missing", path, "image file not found", ACTIONS["image_missing"])], facts
    except Exception as e:
        msg = f"cannot be read as an image ({type(e).__name__}: {str(e)[:100]})"
        return None, [Problem("image_unreadable", path, msg, ACTIONS["image_unreadable"])], facts
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if orientation not in (1, None):
        facts["exif_rotated"] += 1
    if mode not in ("RGB", "YCbCr"):
        facts[f"converted_{mode}"] += 1
    if min(h, w) < MIN_IMAGE_SIDE:
        msg = f"image is {w}x{h}, smaller than {MIN_IMAGE_SIDE} px"
        return None, [Problem("image_too_small", path, msg, ACTIONS["image_too_small"])], facts
    problems = []
    if fmt in ("JPEG", "MPO") and _is_truncated_jpeg(path):
        im = read_image(path)  # the decoder training and validation use: the same verdict everywhere
        if im is None:
            msg = "truncated JPEG that OpenCV cannot decode"
            return None, [Problem("image_unreadable", path, msg, ACTIONS["image_unreadable"])], facts
        problems.append(Problem("image_truncated", path, "JPEG end marker missing (truncated file?)",
                                ACTIONS["image_truncated"]))
    return (int(h), int(w)), problems, facts


def _verify_yolo(im_file: str, nc: int):
    shape, problems, facts = verify_image(im_file)
    if shape is None:
        return None, problems, facts
    label_file = find_label_file(im_file)
    if label_file is None:
        facts["background"] += 1
        facts["no_label_file"] += 1
        return (im_file, "", shape, np.zeros(0, np.int64), np.zeros((0, 4), np.float32)), problems, facts
    try:
        text = Path(label_file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        msg = f"label file cannot be read as text ({type(e).__name__})"
        return None, problems + [Problem("label_unreadable", label_file, msg, ACTIONS["label_unreadable"])], facts
    cls_, boxes, lp, lf = parse_yolo_label(text, nc, label_file)
    facts.update(lf)
    if len(cls_) == 0:
        facts["background"] += 1
    return (im_file, label_file, shape, cls_, boxes), problems + lp, facts


def _threads() -> int:
    return max(1, min(8, (os.cpu_count() or 1) * 2))


def _verify_all(items, fn) -> tuple[list, list[Problem], Counter]:
    records, problems, facts = [], [], Counter()
    with ThreadPoolExecutor(_threads()) as pool:  # header reads are I/O bound
        for rec, probs, fx in pool.map(fn, items):
            problems.extend(probs)
            facts.update(fx)
            if rec is not None:
                records.append(rec)
    return records, problems, facts


def list_source_images(source: Source) -> tuple[list[str], list[Problem]]:
    """Image files of a YOLO source (folder, list file or single image), in a stable order."""
    problems: list[Problem] = []
    if source.kind == "image":
        return [str(source.path)], problems
    if source.kind == "dir":
        files, problems = walk_images(source.path)
        return sorted(files), problems
    # a .txt list of images
    base = source.path.parent
    files, seen = [], {}
    try:
        lines = source.path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataConfigError(f"{source.path}: image list cannot be read ({type(e).__name__})") from None
    for ln, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        p = os.path.abspath(p if p.is_absolute() else base / p)
        if os.path.splitext(p)[1].lower() not in IMG_FORMATS:
            problems.append(Problem("image_format", str(source.path),
                                    f"'{entry}' has no image extension ({', '.join(IMG_FORMATS)})",
                                    ACTIONS["image_format"], ln))
            continue
        real = os.path.realpath(p)  # the same file under two spellings or through a symlink is one image
        if real in seen:
            problems.append(Problem("image_duplicate", str(source.path), f"'{entry}' is the same file as line "
                                    f"{seen[real]}", ACTIONS["image_duplicate"], ln))
            continue
        seen[real] = ln
        files.append(p)
    return files, problems


def walk_images(root: str | Path) -> tuple[list[str], list[Problem]]:
    """Image files under ``root`` (symlinks followed), each real file once: a folder is read once by its real
    path, so a link pointing back up (``images/selfdir -> .``) cannot loop, and a file reached under several
    names is kept under the one that is no symlink (whose label file is the real one), the others reported
    as duplicates. The walk is sorted, so the result never depends on the file system's order."""
    problems: list[Problem] = []
    seen_dirs: dict[str, str] = {}
    names_of: dict[str, list[str]] = {}  # real file -> the paths it was reached by, in walk order
    for dirpath, dirnames, names in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []  # and nothing below it
            problems.append(Problem("folder_repeat", dirpath, f"is the folder {seen_dirs[real]} again (a symlink)",
                                    ACTIONS["folder_repeat"]))
            continue
        seen_dirs[real] = dirpath
        dirnames.sort()
        for name in sorted(names):
            if os.path.splitext(name)[1].lower() in IMG_FORMATS:
                path = os.path.join(dirpath, name)
                names_of.setdefault(os.path.realpath(path), []).append(path)
    files = []
    for paths in names_of.values():
        keep = min(paths, key=lambda p: (os.path.islink(p), len(p), p))
        files.append(keep)
        problems += [Problem("image_duplicate", p, f"is the same file as {keep}", ACTIONS["image_duplicate"])
                     for p in paths if p != keep]
    return files, problems


def read_image(path: str, reduce: int = 1) -> np.ndarray | None:
    """The one image decoder (label check, training, validation): BGR uint8 HWC with EXIF orientation
    applied, or None when OpenCV cannot decode the file. A truncated JPEG decodes as far as its data goes
    (the rest grey), the same wherever it is read. ``reduce`` (2, 4, 8) decodes a JPEG at 1/reduce of its
    size (libjpeg DCT scaling); a file that decodes only in full is decoded in full."""
    flags = _REDUCED.get(reduce, cv2.IMREAD_COLOR)
    img = cv2.imread(path, flags)
    if img is None and reduce != 1:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:  # a path OpenCV's file API cannot open (non-ASCII names on some platforms)
        try:
            buf = np.fromfile(path, dtype=np.uint8)
        except OSError:
            return None
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    return img


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def read_yolo_source(source: Source, nc: int, files: list[str] | None = None) -> LabelSet:
    """Validate every image and label of a YOLO source."""
    list_problems: list[Problem] = []
    if files is None:
        files, list_problems = list_source_images(source)
    records, problems, facts = _verify_all(files, lambda f: _verify_yolo(f, nc))
    return LabelSet.from_records(records, list_problems + problems, facts)


# ------------------------------------------------------------------------------------------ COCO JSON
def coco_image_dir(source: Source) -> list[Path]:
    """Folders a COCO json's ``file_name`` entries may be relative to, most specific first."""
    if source.images is not None:
        return [source.images]
    split = source.path.stem.removeprefix("instances_")
    parent = source.path.parent.parent
    return [parent / "images" / split, parent / split, parent / "images", parent]


def load_coco_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataConfigError(f"{path}: not a readable COCO JSON file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DataConfigError(f"{path}: expected a JSON object with keys images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(d.get(key), list):
            raise DataConfigError(f"{path}: missing key '{key}' (a list); this is not a COCO instances file")
    return d


def coco_image_files(source: Source, d: dict) -> list[str]:
    """Resolved image paths of a COCO json, in the json's order (missing files are resolved to the
    first candidate folder and reported later)."""
    dirs = coco_image_dir(source)
    out = []
    for im in d["images"]:
        name = str(im.get("file_name", ""))
        cands = [d_ / name for d_ in dirs]
        out.append(str(next((c for c in cands if c.is_file()), cands[0])))
    return out


def coco_ids(sources: list[Source]) -> tuple[dict[str, Any], list[Any] | None]:
    """The ids a split's own COCO JSON files use, for results scored against those files:
    ({image path as the dataset lists it: image id}, [category id of class k]). The category ids are
    None unless every source is a COCO JSON and all share one category list (classes are the categories
    sorted by id, as :func:`read_coco_source` maps them)."""
    image_ids: dict[str, Any] = {}
    category_ids: list[Any] | None = None
    every_coco = bool(sources)
    for source in sources:
        if source.kind != "coco":
            every_coco = False
            continue
        d = load_coco_json(source.path)
        image_ids.update(zip(coco_image_files(source, d), (im.get("id") for im in d["images"])))
        ids = [c.get("id") for c in sorted(d["categories"], key=lambda c: c.get("id", 0))]
        every_coco = every_coco and category_ids in (None, ids)
        category_ids = ids
    return image_ids, category_ids if every_coco else None


def read_coco_source(source: Source, names: list[str], d: dict | None = None) -> LabelSet:
    """Validate a COCO instances JSON: categories sorted by id map to class 0..nc-1; crowd boxes are
    ignored; boxes [x, y, w, h] in pixels become normalised cx, cy, w, h."""
    d = load_coco_json(source.path) if d is None else d
    jf = str(source.path)
    cats = sorted(d["categories"], key=lambda c: c.get("id", 0))
    if len(cats) != len(names):
        raise DataConfigError(
            f"{jf}: {len(cats)} categories but the dataset YAML names {len(names)} classes; 'names' must list "
            f"the categories in id order: {[c.get('name') for c in cats][:10]}..."
        )
    differ = [(c.get("name"), n) for c, n in zip(cats, names) if c.get("name") != n]
    if differ:
        log.warning("%s: category names differ from the YAML names (mapped by sorted category id): %s",
                    jf, ", ".join(f"{a!r}->{b!r}" for a, b in differ[:5]))
    cat_index = {c.get("id"): i for i, c in enumerate(cats)}
    files = coco_image_files(source, d)
    problems, shared = _duplicate_image_ids(d["images"], jf)
    images = {im.get("id"): (k, im) for k, im in enumerate(d["images"]) if im.get("id") not in shared}
    per_image: dict[int, list] = {}
    facts: Counter = Counter()
    for ann in d["annotations"]:
        aid = ann.get("id")
        entry = images.get(ann.get("image_id"))
        if entry is None and ann.get("image_id") in shared:
            facts["ann_shared_image_id"] += 1  # its image is ambiguous: dropped with it (reported once per id)
            continue
        if entry is None:
            problems.append(Problem("ann_image", jf, f"image_id {ann.get('image_id')} not in 'images'",
                                    ACTIONS["ann_image"], aid))
            continue
        if ann.get("iscrowd", 0):
            facts["crowd"] += 1
            continue
        if ann.get("category_id") not in cat_index:
            problems.append(Problem("ann_category", jf, f"category_id {ann.get('category_id')} not in "
                                    f"'categories'", ACTIONS["ann_category"], aid))
            continue
        per_image.setdefault(entry[0], []).append(ann)

    def verify(k: int):
        im_meta = d["images"][k]
        shape, probs, fx = verify_image(files[k])
        if shape is None:
            return None, probs, fx
        h, w = shape
        jw, jh = im_meta.get("width"), im_meta.get("height")
        if (jw, jh) != (w, h) and jw is not None:
            fx["json_size_mismatch"] += 1
        rows, row_ids = [], []
        for ann in per_image.get(k, []):
            b = ann.get("bbox")
            ok = isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
            if not ok or not all(math.isfinite(v) for v in b):
                probs.append(Problem("ann_bbox", jf, f"bbox {b!r} is not 4 finite numbers", ACTIONS["ann_bbox"],
                                     ann.get("id")))
                continue
            x, y, bw, bh = b
            if bw <= 0 or bh <= 0:
                probs.append(Problem("box_size", jf, f"bbox {b} has width/height <= 0", ACTIONS["box_size"],
                                     ann.get("id")))
                continue
            rows.append(f"{cat_index[ann['category_id']]} {(x + bw / 2) / w} {(y + bh / 2) / h} {bw / w} {bh / h}")
            row_ids.append(ann.get("id"))
        cls_, boxes, lp, lf = parse_yolo_label("\n".join(rows), len(names), jf)
        # parse_yolo_label numbers rows by position; report them by annotation id instead
        probs += [Problem(p.kind, p.file, f"annotation id {row_ids[p.line - 1]}: {p.message}", p.action,
                          row_ids[p.line - 1]) for p in lp]
        fx.update(lf)
        if len(cls_) == 0:
            fx["background"] += 1
        return (files[k], jf, shape, cls_, boxes), probs, fx

    keep = [k for k, im in enumerate(d["images"]) if im.get("id") not in shared]
    records, probs, fx = _verify_all(keep, verify)
    facts.update(fx)
    return LabelSet.from_records(records, problems + probs, facts)


def _duplicate_image_ids(images: list[dict], jf: str) -> tuple[list[Problem], set]:
    """([one problem per image id that several 'images' entries share], those ids). Annotations name their
    image by id only, so which of them a box belongs to cannot be known: all of them are skipped."""
    by_id: dict[Any, list[str]] = {}
    for im in images:
        by_id.setdefault(im.get("id"), []).append(str(im.get("file_name", "?")))
    shared = {i for i, files in by_id.items() if len(files) > 1}
    problems = [Problem("image_id_duplicate", jf, f"image id {i} is shared by {len(by_id[i])} images "
                        f"({', '.join(by_id[i][:3])}); their annotations cannot be told apart. Give every image "
                        f"its own id", ACTIONS["image_id_duplicate"], i) for i in sorted(shared, key=str)]
    return problems, shared
