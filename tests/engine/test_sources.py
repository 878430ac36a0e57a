"""Sources: unique ids for every item, globs vs existing files, .txt lists, HTTP streams, reconnects."""

import functools
import http.server
import json
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from rtdet.engine import sources
from rtdet.engine.errors import SourceError
from rtdet.engine.predictor import Predictor
from rtdet.engine.sources import expand_source, iter_source


def _img(path, value=100, shape=(24, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*shape, 3), value, np.uint8))
    return path


@pytest.fixture
def clashing(tmp_path):
    """Files whose names clash under a naive 'stem' rule: a/img.jpg b/img.jpg, x.jpg x.png, 007.jpg 7.jpg."""
    root = tmp_path / "clashing"
    for k, rel in enumerate(["a/img.jpg", "b/img.jpg", "x.jpg", "x.png", "007.jpg", "7.jpg"]):
        _img(root / rel, 20 * k)
    return root


def test_every_item_has_a_unique_id_and_output_stem(clashing):
    items = expand_source(str(clashing / "**" / "*"))
    by_uid = {it.uid: it for it in items}
    assert sorted(by_uid) == ["007.jpg", "7.jpg", "a/img.jpg", "b/img.jpg", "x.jpg", "x.png"]
    assert {u: it.stem for u, it in by_uid.items()} == {"007.jpg": "007", "7.jpg": "7", "a/img.jpg": "a/img",
                                                         "b/img.jpg": "b/img", "x.jpg": "x.jpg", "x.png": "x.png"}
    assert len({it.coco_id for it in items}) == 6  # 007 and 7 would both be image 7: the ids stay names
    # a list of two files in different folders: ids relative to the folder that holds both
    pair = expand_source([str(clashing / "a" / "img.jpg"), str(clashing / "b" / "img.jpg")])
    assert [it.uid for it in pair] == ["a/img.jpg", "b/img.jpg"]
    # COCO's own numeric names keep numeric image ids
    numeric = expand_source([str(_img(clashing.parent / "coco" / f"{k:012d}.jpg")) for k in (1, 42)])
    assert [it.coco_id for it in numeric] == [1, 42]


def test_predict_writes_one_output_per_item(tiny_yaml, clashing, tmp_path):
    predictor = Predictor({"imgsz": 64, "conf": 0.0, "max_det": 2, "save": True, "save_txt": True, "save_json": True,
                           "project": str(tmp_path / "runs"), "verbose": False}, model=str(tiny_yaml))
    results = predictor(str(clashing / "**" / "*"))
    out = predictor.save_dir
    assert len(results) == 6 and len({r.uid for r in results}) == 6
    labels = sorted(p.relative_to(out / "labels").as_posix() for p in (out / "labels").rglob("*.txt"))
    assert labels == ["007.txt", "7.txt", "a/img.txt", "b/img.txt", "x.jpg.txt", "x.png.txt"]
    pictures = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.suffix in (".jpg", ".png"))
    assert pictures == ["007.jpg", "7.jpg", "a/img.jpg", "b/img.jpg", "x.jpg", "x.png"]
    image_ids = {p["image_id"] for p in json.loads((out / "predictions.json").read_text())}
    assert image_ids == {"007", "7", "a/img", "b/img", "x.jpg", "x.png"}


def test_an_existing_file_wins_over_the_glob_reading_of_its_name(tmp_path):
    photo = _img(tmp_path / "photo[1].jpg")
    _img(tmp_path / "photo1.jpg", 200)  # what the pattern photo[1].jpg would match
    frames = list(iter_source(str(photo)))
    assert [f.path for f in frames] == [str(photo)] and frames[0].item.uid == "photo[1].jpg"
    assert [f.item.uid for f in iter_source(str(tmp_path / "photo[0-9].jpg"))] == ["photo1.jpg"]  # a real glob


def test_a_txt_file_lists_sources(tmp_path):
    _img(tmp_path / "imgs" / "a.jpg")
    _img(tmp_path / "imgs" / "b.png")
    _img(tmp_path / "other" / "a.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text("# my sources\nimgs/*.jpg\n\nimgs/b.png\n" + f"{tmp_path / 'other' / 'a.jpg'}\n")
    assert [f.item.uid for f in iter_source(str(listing))] == ["imgs/a.jpg", "imgs/b.png", "other/a.jpg"]
    listing.write_text("imgs/a.jpg\nimgs/missing.jpg\n")
    with pytest.raises(SourceError, match=r"list.txt:2: source '.*missing.jpg': no such file"):
        list(iter_source(str(listing)))


def test_a_folder_mixes_images_and_videos(tmp_path):
    _img(tmp_path / "m" / "a.jpg")
    writer = cv2.VideoWriter(str(tmp_path / "m" / "b.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (32, 24))
    for k in range(3):
        writer.write(np.full((24, 32, 3), 60 * k, np.uint8))
    writer.release()
    assert [(f.item.uid, f.frame) for f in iter_source(str(tmp_path / "m"))] == [
        ("a.jpg", None), ("b.avi", 0), ("b.avi", 1), ("b.avi", 2)]


# ---------------------------------------------------------------------------------- streams
@pytest.fixture
def http_video(tmp_path):
    """A 20-frame MJPG .avi served over HTTP on 127.0.0.1 (OpenCV's FFmpeg reads it as a network stream)."""
    folder = tmp_path / "served"
    folder.mkdir()
    writer = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (48, 32))
    for k in range(20):
        frame = np.zeros((32, 48, 3), np.uint8)
        frame[:, 2 * k:2 * k + 4] = 255
        writer.write(frame)
    writer.release()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/clip.avi"
    server.shutdown()
    server.server_close()


def _stream_threads():
    return [t for t in threading.enumerate() if t.name.startswith("rtdet-stream")]


def test_an_http_video_is_read_as_a_stream(http_video):
    frames = list(iter_source(http_video, stream_buffer=True))  # every frame kept
    assert [f.frame for f in frames] == list(range(20))
    assert frames[0].item.kind == "stream" and frames[0].item.uid.startswith("http_127.0.0.1_")
    assert frames[5].img.shape == (32, 48, 3) and frames[5].video["fps"] == pytest.approx(10.0)


def test_an_image_url_is_fetched_and_decoded(http_video, tmp_path):
    _img(tmp_path / "served" / "bus.jpg", 90, (20, 30))
    url = http_video.replace("clip.avi", "bus.jpg")
    [frame] = list(iter_source(url))
    assert frame.item.kind == "url_image" and frame.img.shape == (20, 30, 3) and frame.frame is None
    assert frame.item.uid.endswith("_bus.jpg") and frame.path == url
    with pytest.raises(SourceError, match=r"missing.png': cannot fetch the image \(HTTP 404 "):
        list(iter_source(http_video.replace("clip.avi", "missing.png")))


def test_a_slow_consumer_skips_frames_of_a_live_stream(http_video):
    seen = []
    for f in iter_source(http_video, stream_buffer=False):
        seen.append(f.frame)
        if len(seen) == 1:  # hold on until the reader has read the whole clip: only the newest frame is kept
            deadline = time.monotonic() + 60  # no timing assumption: wait for the reader, however loaded the CPU
            while any(t.read < 20 for t in _stream_threads()) and time.monotonic() < deadline:
                time.sleep(0.05)
    # The first frame the consumer gets is the newest one read by then (0, or later on a loaded machine: the
    # reader may have read the whole local clip first); after the hold only the newest, 19, is left.
    assert seen[-1] == 19 and len(seen) <= 2 and seen == sorted(set(seen))


def test_stopping_early_stops_the_reader_thread(http_video):
    frames = iter_source(http_video, stream_buffer=True)
    next(frames)
    frames.close()  # what Ctrl-C or a caller that breaks out of its loop does
    assert not _stream_threads()


def _bar_position(img) -> int:
    """The frame number the http_video fixture drew: a white bar at columns 2k..2k+3."""
    return int(round((img.mean(axis=(0, 2)) > 128).nonzero()[0].mean() - 1.5)) // 2


@pytest.fixture
def flaky_server(tmp_path):
    """Serves a 60-frame video (noisy, so that FFmpeg's opening probe is a small part of it) over HTTP,
    cutting the connection half-way through the first ``drops`` responses (a dropped network link); frame k
    has a white bar at columns 2k..2k+3. Yields (url, state)."""
    writer = cv2.VideoWriter(str(tmp_path / "noisy.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    g = np.random.default_rng(0)
    for k in range(60):
        frame = g.integers(0, 100, (120, 160, 3), dtype=np.uint8)
        frame[:, 2 * k:2 * k + 4] = 255
        writer.write(frame)
    writer.release()
    data = (tmp_path / "noisy.avi").read_bytes()
    state = {"drops": 1, "hits": 0}

    class Flaky(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            state["hits"] += 1
            rng = self.headers.get("Range")
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            body = data[start:]
            self.send_response(206 if rng else 200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if state["hits"] <= state["drops"]:
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/clip.avi", state
    server.shutdown()
    server.server_close()


def test_a_real_dropped_connection_reconnects_and_carries_on(flaky_server):
    url, state = flaky_server
    frames = list(iter_source(url, stream_buffer=True, timeout=3))
    assert state["hits"] >= 2  # the cut response, then the reconnection (FFmpeg's seeks add range requests)
    assert [f.frame for f in frames] == list(range(60))
    assert [_bar_position(f.img) for f in frames] == list(range(60))  # each frame once, at its place


def test_a_connection_that_drops_again_is_one_clear_error(flaky_server):
    url, state = flaky_server
    state["drops"] = 100
    with pytest.raises(SourceError, match="the stream stopped after .* frames and did not come back"):
        list(iter_source(url, stream_buffer=True, timeout=3))
    assert not _stream_threads()


class _FakeCapture:
    """A capture that gives ``n`` frames, then fails (a dropped connection)."""

    def __init__(self, n):
        self.n, self.k = n, 0

    def read(self):
        self.k += 1
        return (True, np.full((8, 8, 3), self.k, np.uint8)) if self.k <= self.n else (False, None)

    def get(self, prop):
        return 0.0

    def set(self, prop, value):
        return True

    def release(self):
        pass


@pytest.mark.parametrize("comes_back", [True, False])
def test_a_dropped_stream_reconnects_once_then_fails_clearly(monkeypatch, comes_back):
    opened = [_FakeCapture(3), _FakeCapture(2) if comes_back else None]
    monkeypatch.setattr(sources, "_open_stream", lambda where, timeout: opened.pop(0))
    item = sources.Item("stream", "rtsp://cam.local/live", "rtsp_cam.local_live")
    got = []
    with pytest.raises(SourceError, match="rtsp://cam.local/live': the stream stopped after") as e:
        for f in sources.read_stream(item, keep_all=True, timeout=1.0):
            got.append(f.frame)
    assert got == ([0, 1, 2, 3, 4] if comes_back else [0, 1, 2])
    assert ("did not come back" if comes_back else "reconnecting failed") in str(e.value)
    assert not _stream_threads()


def test_an_unreachable_url_is_one_clear_line_and_exit_1(tiny_yaml, tmp_path, capfd):
    """The command line's own entry point; capfd also catches what FFmpeg would print on file descriptor 2."""
    from rtdet.cli import main

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    code = main(["predict", f"model={tiny_yaml}", f"source=http://127.0.0.1:{port}/live.mp4", "stream_timeout=3",
                 f"project={tmp_path}/runs"])
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("rtdet predict: error: source 'http://127.0.0.1:"), lines
    assert "cannot open this stream" in lines[0] and "Traceback" not in lines[0]
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "runs").exists()
