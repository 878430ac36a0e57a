"""Atomic checkpoint writes and clear errors for unreadable checkpoints."""

import pytest
import torch

from rtdet.utils.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint


def test_save_and_load_round_trip(tmp_path):
    path = save_checkpoint({"w": torch.arange(3), "epoch": 2}, tmp_path / "sub" / "c.pt")
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["w"], torch.arange(3)) and ckpt["epoch"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = save_checkpoint({"epoch": 1}, tmp_path / "c.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"epoch": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_corrupted_or_truncated_checkpoint_gives_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is None:  # a real checkpoint cut in half
        save_checkpoint({"w": torch.randn(1000)}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad.pt: cannot be read as a checkpoint .*truncated"):
        load_checkpoint(path)


def test_objects_are_refused_by_weights_only(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"x": object()}, path)
    with pytest.raises(CheckpointError, match="obj.pt"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_atomic_write_text(tmp_path):
    path = atomic_write_text(tmp_path / "r.csv", "a,b\n1,2\n")
    assert path.read_text() == "a,b\n1,2\n"


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "r.csv", "x\n")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_unreadable_checkpoints_never_repeat_torchs_weights_only_advice(tmp_path):
    """torch's message advises loading with weights_only=False, which would run the file's code: never."""
    obj = tmp_path / "obj.pt"
    torch.save({"model": object()}, obj)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    for path, expected in ((obj, "holds Python objects"), (junk, "cannot be read as a checkpoint")):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        msg = str(err.value)
        assert expected in msg and "weights_only" not in msg and "\n" not in msg


def test_stale_temporaries_are_recognised_by_their_name(tmp_path):
    from rtdet.utils.checkpoint import remove_stale_temporaries

    (tmp_path / ".last.pt.x1y2z3ab.rtdet-tmp").write_bytes(b"\0" * 10)
    mine = ["keep.tmp", ".notes.txt.x1y2z3ab.tmp", ".hidden", "a.rtdet-tmp"]  # a user's files, not ours
    for name in mine:
        (tmp_path / name).write_text("a user's file")
    removed = remove_stale_temporaries(tmp_path)
    assert [(p.name, size) for p, size in removed] == [(".last.pt.x1y2z3ab.rtdet-tmp", 10)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mine)


def test_atomic_writes_use_the_recognisable_temporary_name(tmp_path, monkeypatch):
    """The temporary of a write in progress is one is_temporary() recognises (what clean-ups delete)."""
    import os

    from rtdet.utils.checkpoint import atomic_write_text, is_temporary

    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(src), real_replace(src, dst)))
    atomic_write_text(tmp_path / "results.csv", "a\n")
    assert len(seen) == 1 and is_temporary(seen[0]) and (tmp_path / "results.csv").read_text() == "a\n"


def _full_disk_torch_save(obj, fh):
    """torch.save on a full disk: part of the file written, then its zip writer's RuntimeError."""
    fh.write(b"PK\x03\x04partial")
    raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                       "PytorchStreamWriter failed writing file data/0: file write failed")


def test_a_full_disk_says_no_space_left_on_the_folder_and_keeps_the_last_good_file(tmp_path, monkeypatch):
    import errno
    import os
    from collections import namedtuple

    from rtdet.utils import checkpoint

    path = save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    monkeypatch.setattr(checkpoint.torch, "save", _full_disk_torch_save)
    vfs = namedtuple("vfs", "f_bavail f_frsize")
    monkeypatch.setattr(checkpoint.os, "statvfs", lambda p: vfs(3, 4096))  # 12 KB left
    with pytest.raises(OSError, match=f"no space left on {tmp_path} while writing last.pt") as err:
        save_checkpoint({"epoch": 2}, path)
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]

    def no_space(fh):  # Python's own write error names no file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    from rtdet.utils.checkpoint import atomic_write_bytes

    with pytest.raises(OSError, match=f"no space left on {tmp_path} while writing results.csv"):
        atomic_write_bytes(tmp_path / "results.csv", no_space)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_real_full_disk(tmp_path):
    """The same on a 1 MB tmpfs, where root may mount one (skipped elsewhere)."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        save_checkpoint({"w": torch.zeros(10)}, mnt / "last.pt")
        with pytest.raises(OSError, match=f"no space left on {mnt} while writing last.pt"):
            save_checkpoint({"w": torch.zeros(1 << 20)}, mnt / "last.pt")
        assert load_checkpoint(mnt / "last.pt")["w"].shape == (10,)
        assert [p.name for p in mnt.iterdir()] == ["last.pt"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
