"""Run folders: claimed atomically (two runs with one name get two folders), names are one path component,
and a failed run leaves no empty folder behind."""

import multiprocessing as mp
import threading

import pytest

from rtdet.engine.rundir import RunFolder, check_run_name, claim_run_dir, run_dir
from rtdet.utils.schema import SettingError


def test_taken_names_are_incremented_and_exist_ok_reuses(tmp_path):
    a, b, c = (run_dir(tmp_path, "train", "exp") for _ in range(3))
    assert [a.name, b.name, c.name] == ["exp", "exp2", "exp3"] and all(p.is_dir() for p in (a, b, c))
    assert run_dir(tmp_path, "train", "exp", exist_ok=True) == a
    assert run_dir(tmp_path, "val").name == "val"


def test_threads_racing_for_one_name_each_get_their_own_folder(tmp_path):
    start, got = threading.Barrier(8), []

    def claim():
        start.wait()
        got.append(claim_run_dir(tmp_path, "train", "same")[0])

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8 and {p.name for p in got} == {"same", *(f"same{n}" for n in range(2, 9))}


def _claim_in_process(project, start, queue):
    start.wait()
    queue.put(str(claim_run_dir(project, "train", "same")[0]))


def test_processes_racing_for_one_name_each_get_their_own_folder(tmp_path):
    """What two `rtdet train ... name=same` started together do: two folders, never one shared."""
    ctx = mp.get_context("fork")
    start, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(str(tmp_path), start, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert len(set(got)) == 4


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "/abs", "a\\b", " x"])
def test_a_run_name_is_one_folder_name(name, tmp_path):
    with pytest.raises(ValueError, match="one folder name"):
        check_run_name(name)
    with pytest.raises(SettingError, match="name="):
        RunFolder(tmp_path, "train", name)
    assert check_run_name("exp-1.b") == "exp-1.b" and not any(tmp_path.iterdir())


def test_a_failed_run_leaves_no_folder_and_no_parents_it_made(tmp_path):
    project = tmp_path / "runs"
    with pytest.raises(RuntimeError), RunFolder(project, "export", "x") as folder:
        (folder.path / "sub").mkdir()
        (folder.path / ".model.onnx.ab12cd34.rtdet-tmp").write_bytes(b"half")  # rtdet's own temporary
        raise RuntimeError("interrupted")
    assert not project.exists()


def test_a_failed_run_keeps_what_it_wrote_and_what_existed(tmp_path):
    with pytest.raises(KeyboardInterrupt), RunFolder(tmp_path, "train", "x") as folder:
        (folder.path / "last.pt").write_bytes(b"saved")
        raise KeyboardInterrupt
    assert (tmp_path / "train" / "x" / "last.pt").is_file()
    (tmp_path / "val" / "mine").mkdir(parents=True)
    with pytest.raises(RuntimeError), RunFolder(tmp_path, "val", "mine", exist_ok=True) as folder:
        assert folder.path == tmp_path / "val" / "mine"
        raise RuntimeError
    assert (tmp_path / "val" / "mine").is_dir()  # existed before: never removed


def test_a_run_that_never_needs_its_folder_makes_none(tmp_path):
    with RunFolder(tmp_path, "predict") as folder:
        pass
    assert not folder.claimed and not any(tmp_path.iterdir())


def test_disposable_records_alone_do_not_keep_a_failed_run(tmp_path):
    with pytest.raises(RuntimeError), RunFolder(tmp_path, "train", disposable=("args.yaml",)) as folder:
        (folder.path / "weights").mkdir()
        (folder.path / "args.yaml").write_text("epochs: 3\n")
        raise RuntimeError("NaN loss in the first step")
    assert not any(tmp_path.iterdir())
    with pytest.raises(RuntimeError), RunFolder(tmp_path, "train", disposable=("args.yaml",)) as folder:
        (folder.path / "weights").mkdir()
        (folder.path / "weights" / "args.yaml").write_text("a file of the same name deeper down is kept")
        raise RuntimeError
    assert (tmp_path / "train" / "train" / "weights" / "args.yaml").is_file()
