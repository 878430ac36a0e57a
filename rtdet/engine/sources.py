"""Sources for predict and track: every picture of a ``source=``, each with a unique id.

    for f in iter_source("clips/"):           # images and videos of a folder, in name order
        f.img, f.uid, f.frame                  # BGR uint8 [h, w, 3], 'a/img.jpg', frame number or None

A source is a numpy image (HWC BGR), an image or video file, a folder (its images and videos, not its
sub-folders), a glob (``data/**/*.jpg``), a ``.txt`` file listing sources one per line, a webcam index
(``0``), an ``rtsp://`` / ``rtmp://`` / ``http(s)://`` stream or the URL of a video or image, or a list of
these. An existing file wins over a glob: ``photo[1].jpg`` is that file when it exists.

Ids. Every item gets an id that no other item of the source shares, and every output (annotated picture,
label file, COCO image id, MOT file) is keyed by it: a file's id is its path relative to the folder that
holds all the source's files (``a/img.jpg`` and ``b/img.jpg`` stay apart), a stream's id is made from its
URL (``rtsp_cam.local_554_live``, ``webcam0``), a numpy image's is ``image<k>.jpg``. Output stems drop the
file suffix unless two items would then clash (``x.jpg`` and ``x.png`` keep theirs).

Streams (webcams and URLs that are not images) are read by a background thread into a bounded buffer:
``stream_buffer=false`` keeps only the newest frame, so a detector slower than the camera skips frames (as
users expect of a live feed; frame numbers show the gaps); ``stream_buffer=true`` keeps every frame (the
reader waits when the buffer of ``STREAM_QUEUE`` frames is full). A failed read is retried once by
reconnecting; a second failure is a SourceError naming the stream.
"""

from __future__ import annotations

import contextlib
import glob
import os
import queue
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rtdet.engine.errors import SourceError
from rtdet.utils.logging import LOGGER

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "STREAM_SCHEMES", "Frame", "Item", "expand_source", "iter_source",
           "opencv_messages"]

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpeg", ".mpg", ".wmv", ".webm")
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://")
STREAM_QUEUE = 64  # frames held at most by stream_buffer=true: bounded, the reader waits when it is full
URL_IMAGE_MAX_BYTES = 64 << 20  # an image URL larger than this is refused (nothing is read without bound)
FPS_EVERY_S = 2.0  # how often a stream logs its frames per second


@dataclass(frozen=True)
class Item:
    """One entry of a source. ``kind``: array | image | video | url_image | stream; ``where``: the array,
    path, URL or webcam index; ``uid``: the unique id; ``stem``: the unique name its outputs take;
    ``coco_id``: the COCO image id of its predictions (a number for COCO-style numeric names, else the stem)."""

    kind: str
    where: object
    uid: str
    stem: str = ""
    coco_id: int | str = ""


@dataclass
class Frame:
    """One picture of a source: the BGR image and the item it came from (``frame`` set for videos and
    streams; ``video`` holds their fps and frame count, 0 when unknown)."""

    img: np.ndarray
    item: Item
    frame: int | None = None
    video: dict | None = None

    @property
    def path(self) -> str:
        return self.item.where if isinstance(self.item.where, str) else self.item.uid


# ---------------------------------------------------------------------------------- expansion
def _entries(source, depth: int = 0) -> Iterator[tuple[str, object]]:
    """(kind, thing) in source order: ('array', ndarray) | ('file', Path) | ('url', str) | ('webcam', int)."""
    if isinstance(source, np.ndarray):
        yield "array", source
        return
    if isinstance(source, list | tuple):
        for s in source:
            yield from _entries(s, depth)
        return
    if isinstance(source, bool) or not isinstance(source, str | Path | int):
        raise SourceError(f"source: expected a path, a glob, a URL, a webcam index, a numpy array (HWC BGR) or a "
                          f"list of them; got {type(source).__name__}")
    text = str(source).strip()
    path = Path(text).expanduser()
    if text.lower().startswith(STREAM_SCHEMES):
        yield "url", text
    elif path.is_dir():
        yield from _folder(path, text)
    elif path.is_file():  # before the glob test: an existing 'photo[1].jpg' is that file
        if path.suffix.lower() == ".txt":
            yield from _listed(path, depth)
        elif path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
            yield "file", path
        else:
            raise SourceError(f"source '{text}': unknown file type '{path.suffix}'; images: "
                              f"{' '.join(IMAGE_SUFFIXES)}, videos: {' '.join(VIDEO_SUFFIXES)}, or a .txt list")
    elif text.isdigit():
        yield "webcam", int(text)
    elif any(ch in text for ch in "*?["):
        files = sorted(p for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES +
                       VIDEO_SUFFIXES and Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"source '{text}': the pattern matches no image or video files")
        yield from (("file", Path(f)) for f in files)
    else:
        raise FileNotFoundError(f"source '{text}': no such file or folder (nor a URL {'/'.join(STREAM_SCHEMES)}, "
                                f"a glob or a webcam index)")


def _folder(path: Path, text: str) -> Iterator[tuple[str, Path]]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"source '{text}': the folder holds no images or videos "
                                f"({' '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}); for its sub-folders use a glob, "
                                f"e.g. '{text.rstrip('/')}/**/*.jpg'")
    yield from (("file", p) for p in files)


def _listed(path: Path, depth: int) -> Iterator[tuple[str, object]]:
    """The sources a .txt file lists, one per line (blank lines and '#' comments skipped); relative paths are
    relative to the list's folder. A list may not name another list (no loops)."""
    if depth > 0:
        raise SourceError(f"source '{path}': a source list may not name another list (.txt)")
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        raise SourceError(f"source '{path}': cannot read the list ({e.strerror or e})") from None
    n = 0
    for k, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = line if line.lower().startswith(STREAM_SCHEMES) or line.isdigit() or Path(line).is_absolute() \
            else str(path.parent / line)
        try:
            yield from _entries(entry, depth + 1)
        except (FileNotFoundError, SourceError) as e:
            raise SourceError(f"{path}:{k}: {e}") from None
        n += 1
    if n == 0:
        raise SourceError(f"source '{path}': the list names no source (one path, glob or URL per line)")


def expand_source(source) -> list[Item]:
    """Every item of a source, in order, with unique ids, output stems and COCO image ids."""
    entries = list(_entries(source))
    files = [Path(os.path.abspath(p)) for kind, p in entries if kind == "file"]
    root = os.path.commonpath([str(p.parent) for p in files]) if files else ""
    items, n_arrays = [], 0
    for kind, thing in entries:
        if kind == "array":
            items.append(Item("array", thing, f"image{n_arrays}.jpg"))
            n_arrays += 1
        elif kind == "webcam":
            items.append(Item("stream", thing, f"webcam{thing}"))
        elif kind == "url":
            image = Path(urllib.parse.urlsplit(str(thing)).path).suffix.lower() in IMAGE_SUFFIXES
            items.append(Item("url_image" if image else "stream", thing, _url_id(str(thing))))
        else:
            rel = Path(os.path.relpath(os.path.abspath(thing), root)).as_posix()
            video = Path(thing).suffix.lower() in VIDEO_SUFFIXES
            items.append(Item("video" if video else "image", str(thing), rel))
    return _name_outputs(items)


def _url_id(url: str) -> str:
    """'rtsp://user:pw@cam.local:554/live?x=1' -> 'rtsp_cam.local_554_live_x_1' (no credentials in file names)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    text = "_".join(s for s in (parts.scheme, host, str(parts.port or ""), parts.path, parts.query) if s)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")[:120] or "stream"


def _name_outputs(items: list[Item]) -> list[Item]:
    """Items with unique ids and stems: a repeated id gets '~2', '~3'; a stem drops the suffix unless that
    makes two stems equal. COCO ids are numbers when every stem is a distinct number (COCO's own names)."""
    seen: dict[str, int] = {}
    uids = []
    for it in items:
        seen[it.uid] = seen.get(it.uid, 0) + 1
        uids.append(it.uid if seen[it.uid] == 1 else f"{it.uid}~{seen[it.uid]}")
    short = [str(Path(u).with_suffix("")) if Path(u).suffix and it.kind != "stream" else u
             for u, it in zip(uids, items)]
    clash = {s for s in short if short.count(s) > 1}
    stems = [u if s in clash else s for u, s in zip(uids, short)]
    numeric = all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems)
    return [Item(it.kind, it.where, u, s, int(s) if numeric else s) for it, u, s in zip(items, uids, stems)]


# ---------------------------------------------------------------------------------- reading
def iter_source(source, stream_buffer: bool = False, timeout: float = 10.0) -> Iterator[Frame]:
    """Every picture of a source, item after item (see the module docstring)."""
    for item in expand_source(source):
        if item.kind == "array":
            yield Frame(_check_array(item), item)
        elif item.kind == "image":
            yield Frame(_read_image(item.where), item)
        elif item.kind == "url_image":
            yield Frame(_fetch_image(item.where, timeout), item)
        elif item.kind == "video":
            yield from _read_video(item)
        else:
            yield from read_stream(item, stream_buffer, timeout)


def _check_array(item: Item) -> np.ndarray:
    img = item.where
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise SourceError(f"source array {item.uid}: expected an HWC uint8 BGR image, got shape {img.shape} "
                          f"dtype {img.dtype}")
    return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR) if img.shape[2] == 4 else img


def _read_image(path: str) -> np.ndarray:
    """A BGR image; SourceError naming the file when it cannot be decoded."""
    with opencv_messages() as said:
        img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise SourceError(f"source '{path}': cannot be decoded as an image{_said(said)}; the file may be truncated "
                          f"or not an image")
    return img


def _fetch_image(url: str, timeout: float) -> np.ndarray:
    """The image at a URL (read with a timeout and a size limit), decoded; SourceError naming the URL."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (the user's own URL)
            data = r.read(URL_IMAGE_MAX_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise SourceError(f"source '{url}': cannot fetch the image ({reason}); check the address and the "
                          f"network") from None
    if len(data) > URL_IMAGE_MAX_BYTES:
        raise SourceError(f"source '{url}': larger than {URL_IMAGE_MAX_BYTES >> 20} MB, not read")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise SourceError(f"source '{url}': the {len(data)} bytes it sent are not an image")
    return img


def _read_video(item: Item) -> Iterator[Frame]:
    """Every frame of a video file; SourceError naming the file (and what OpenCV / FFmpeg said) when it cannot
    be opened or holds no frame. Stopping before the frame count its header promises is reported."""
    path = item.where
    with opencv_messages() as said:
        cap = cv2.VideoCapture(path)
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        what = "cannot open this video" if not cap.isOpened() else "cannot read a single frame of this video"
        raise SourceError(f"source '{path}': OpenCV {what}{_said(said)}; the file may be truncated, corrupt or in "
                          f"a format this OpenCV build does not decode")
    info = _video_info(cap)
    k = 0
    try:
        while ok:
            yield Frame(frame, item, k, info)
            k += 1
            ok, frame = cap.read()
    finally:
        cap.release()
    if 0 < k < info["frames"]:
        LOGGER.warning(f"source '{path}': read {k} of the {info['frames']} frames its header announces; the rest "
                       f"cannot be decoded (truncated file?)")


def _video_info(cap: cv2.VideoCapture) -> dict:
    fps = cap.get(cv2.CAP_PROP_FPS)
    return {"fps": fps if 0 < fps < 1000 else 25.0, "frames": max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)}


# ---------------------------------------------------------------------------------- streams
def _open_stream(where: int | str, timeout: float) -> cv2.VideoCapture | None:
    """An opened capture (webcam index or URL, with open / read timeouts), or None."""
    if isinstance(where, int):
        cap = cv2.VideoCapture(where)
    else:
        ms = int(timeout * 1000)
        cap = cv2.VideoCapture(where, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                       cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    if cap.isOpened():
        return cap
    cap.release()
    return None


class _StreamReader(threading.Thread):
    """Reads a stream into a bounded queue: the newest frame only (``keep_all`` False; older ones are
    dropped and counted) or up to STREAM_QUEUE frames (the reader waits). Ends with ``_END``, after an error
    is stored in ``error``. ``stop()`` ends it early (Ctrl-C, a consumer that stops)."""

    _END = object()

    def __init__(self, item: Item, cap: cv2.VideoCapture, keep_all: bool, timeout: float):
        super().__init__(daemon=True, name=f"rtdet-stream-{item.uid}")
        self.item, self.cap, self.keep_all, self.timeout = item, cap, keep_all, timeout
        self.info = _video_info(cap)
        self.frames: queue.Queue = queue.Queue(STREAM_QUEUE if keep_all else 1)
        self.error: str | None = None
        self.read = self.skipped = 0
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # e.g. cv2.error from a broken decoder: the consumer reports it, not the thread
            self.error = f"source '{self.item.where}': reading the stream failed after {self.read} frames ({e})"
        finally:
            self.cap.release()
            self._put(self._END, block=True)

    def _loop(self) -> None:
        reconnected = False
        while not self._halt.is_set():
            ok, frame = self.cap.read()
            if ok:
                self._put((self.read, frame), block=self.keep_all)
                self.read += 1
                continue
            if 0 < self.info["frames"] <= self.read:
                return  # a stream of known length (a video URL) that has ended
            if reconnected or not self._reconnect():
                self.error = (f"source '{self.item.where}': the stream stopped after {self.read} frames and "
                              f"{'did not come back after reconnecting once' if reconnected else 'reconnecting failed'}"
                              f"; check the camera / server and the network")
                return
            reconnected = True

    def _reconnect(self) -> bool:
        LOGGER.warning(f"source '{self.item.where}': lost the stream after {self.read} frames; reconnecting once")
        self.cap.release()
        cap = _open_stream(self.item.where, self.timeout)
        if cap is None:
            return False
        if self.info["frames"] > 0:  # a video URL: carry on where it broke, not from the start
            cap.set(cv2.CAP_PROP_POS_FRAMES, self.read)
        self.cap = cap
        return True

    def _put(self, x, block: bool) -> None:
        """Queue ``x``; without ``block``, replace the frame nobody took yet (counted as skipped)."""
        while not self._halt.is_set() or x is self._END:
            try:
                self.frames.put(x, block=block, timeout=0.1 if block else None)
                return
            except queue.Full:
                if not block:
                    with contextlib.suppress(queue.Empty):
                        self.frames.get_nowait()
                        self.skipped += 1
                elif x is self._END and self._halt.is_set():
                    return  # nobody will read it


def read_stream(item: Item, keep_all: bool, timeout: float) -> Iterator[Frame]:
    """The frames of a webcam or URL stream, until it ends, fails twice, or the consumer stops (Ctrl-C).
    Logs the frames per second the consumer keeps up with, and how many frames it skipped."""
    with opencv_messages() as said:
        cap = _open_stream(item.where, timeout)
    if cap is None:
        what = "webcam" if isinstance(item.where, int) else "stream"
        raise SourceError(f"source '{item.where}': cannot open this {what}{_said(said)}; check the address, that "
                          f"the camera / server is up and reachable, and the network (timeout {timeout:g} s)")
    reader = _StreamReader(item, cap, keep_all, timeout)
    reader.start()
    done, t_log = 0, time.perf_counter()
    t0 = t_log
    try:
        while True:
            x = reader.frames.get()
            if x is _StreamReader._END:
                break
            k, img = x
            yield Frame(img, item, k, reader.info)
            done += 1
            now = time.perf_counter()
            if now - t_log >= FPS_EVERY_S:
                LOGGER.info(f"stream {item.uid}: {done / (now - t0):.1f} frames/s, {reader.skipped} skipped")
                t_log = now
    finally:
        reader.stop()
        reader.join(timeout=max(timeout, 1.0) + 1.0)
    LOGGER.info(f"stream {item.uid}: {done} frames in {time.perf_counter() - t0:.1f} s, {reader.skipped} skipped "
                f"(stream_buffer={'true' if keep_all else 'false'})")
    if reader.error:
        raise SourceError(reader.error)


# ---------------------------------------------------------------------------------- OpenCV messages
@contextlib.contextmanager
def opencv_messages() -> Iterator[list[str]]:
    """What OpenCV and FFmpeg print on the process's stderr (C code, not Python warnings) while the block
    runs, as a list of lines filled in on exit; errors can then quote it instead of hiding it."""
    said: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreter): nothing to capture
        yield said
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            said += [line.strip() for line in tmp.read().decode(errors="replace").splitlines() if line.strip()]


def _said(lines: list[str]) -> str:
    """' (OpenCV: moov atom not found)' with the distinct messages, '' when it said nothing."""
    text = "; ".join(dict.fromkeys(re.sub(r"^\[[^]]*\]\s*", "", line) for line in lines))
    return f" (OpenCV: {text[:300]})" if text else ""
