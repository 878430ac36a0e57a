"""Signals and run state (issue 8, section 4): SIGINT to the whole process group and SIGTERM each save a
loadable last.pt from which resume completes; a kill between the writes of last.pt and best.pt leaves a pair
that resume recognises and completes; results.csv never lists an epoch whose weights were not saved; stale
temporaries of killed writes are removed."""

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rtdet.engine.signals import StopSignals
from rtdet.engine.trainer import Trainer
from rtdet.utils.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]

# The command line, with every optimizer step slowed to 0.3 s and a marker file touched once the second
# epoch runs, so that a test can send its signal while training is surely under way.
DRIVER = textwrap.dedent("""
    import pathlib, sys, time
    from rtdet import cli
    from rtdet.engine.trainer import Trainer

    marker = pathlib.Path(sys.argv[1])
    setup = Trainer.setup

    def slow_setup(self):
        setup(self)

        def slow(t):
            time.sleep(0.3)
            if t.epoch >= 1:
                marker.touch()

        self.add_callback("on_train_batch_end", slow)

    Trainer.setup = slow_setup
    sys.exit(cli.main(sys.argv[2:]))
""")


def _settings_tokens(settings: dict) -> list[str]:
    return [f"{k}={'' if v is None else v}" for k, v in settings.items()]


def _train_and_signal(tiny_settings, tmp_path, send) -> tuple[subprocess.CompletedProcess, Path]:
    """Run ``rtdet train`` (2 loader workers) in its own process group, call ``send(pgid)`` once its second
    epoch runs, and return (the finished process, last.pt)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    marker = tmp_path / "second-epoch"
    settings = {**tiny_settings, "epochs": 4, "workers": 2, "batch": 2, "name": "sig"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(driver), str(marker), "train", *_settings_tokens(settings)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own process group, as a shell job
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate(timeout=60)
    send(proc.pid)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), \
        Path(settings["project"]) / "train" / "sig" / "weights" / "last.pt"


def _resume_completes(last: Path, epochs: int = 4) -> None:
    resumed = Trainer({"resume": str(last)})
    resumed.train()
    assert load_checkpoint(last)["epoch"] == epochs - 1
    rows = list(csv.DictReader((last.parent.parent / "results.csv").open()))
    assert [r["epoch"] for r in rows] == [str(e + 1) for e in range(epochs)]


@pytest.mark.slow
def test_sigint_to_the_process_group_saves_once_and_resume_completes(tiny_settings, tmp_path):
    """SIGINT sent to the whole group (the trainer and its DataLoader workers), twice within a second as a
    terminal or `timeout` may: the workers ignore it, the trainer reports it once, saves and exits 130."""

    def ctrl_c(pgid):
        os.killpg(pgid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(pgid, signal.SIGINT)  # the same request delivered again: not an abort

    done, last = _train_and_signal(tiny_settings, tmp_path, ctrl_c)
    log = done.stdout + done.stderr
    assert done.returncode == 130, log
    assert log.count("SIGINT: stopping after this step") == 1, log
    assert "Traceback" not in log and "saved" in log
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] >= 1
    _resume_completes(last)


@pytest.mark.slow
def test_sigterm_saves_and_exits_like_ctrl_c(tiny_settings, tmp_path):
    done, last = _train_and_signal(tiny_settings, tmp_path, lambda pgid: os.killpg(pgid, signal.SIGTERM))
    log = done.stdout + done.stderr
    assert done.returncode == 128 + signal.SIGTERM, log
    assert "SIGTERM: stopping after this step" in log and "Traceback" not in log
    assert load_checkpoint(last)["epoch"] >= 1
    _resume_completes(last)


def test_a_repeated_signal_within_a_second_is_the_same_request_a_later_one_aborts():
    class Stub:
        last = Path("last.pt")
        stop = None

        def request_stop(self, signum):
            self.stop = signum

    stub = Stub()
    handler = StopSignals(stub)
    handler.handle(signal.SIGTERM, None)
    assert stub.stop == signal.SIGTERM
    handler.handle(signal.SIGINT, None)  # within REPEAT_WINDOW: ignored
    handler.first -= StopSignals.REPEAT_WINDOW + 0.1
    with pytest.raises(KeyboardInterrupt, match="aborted by a second SIGINT"):
        handler.handle(signal.SIGINT, None)


def test_sigterm_in_process_saves_mid_epoch_and_restores_the_handlers(tiny_settings):
    before = signal.getsignal(signal.SIGTERM)
    trainer = Trainer({**tiny_settings, "epochs": 2, "name": "term"})
    trainer.add_callback("on_train_batch_end",
                         lambda t: os.kill(os.getpid(), signal.SIGTERM) if (t.epoch, t.batch_index) == (1, 0) else None)
    with pytest.raises(KeyboardInterrupt, match="saved") as err:
        trainer.train()
    assert err.value.signum == signal.SIGTERM
    ckpt = load_checkpoint(trainer.last)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 1)
    assert signal.getsignal(signal.SIGTERM) is before
    _resume_completes(trainer.last, epochs=2)


# --------------------------------------------------------------------------------------- ordering of writes
class _Killed(BaseException):
    """What a kill -9 at this point would do: nothing after it runs (not even `except Exception`)."""


def _kill_at(monkeypatch, predicate):
    """Make trainer.save_checkpoint / atomic_write_text raise _Killed when ``predicate(path, obj)`` holds."""
    import rtdet.engine.trainer as trainer_module

    save, write = trainer_module.save_checkpoint, trainer_module.atomic_write_text

    def save_or_die(obj, path):
        if predicate(Path(path), obj):
            raise _Killed(str(path))
        return save(obj, path)

    def write_or_die(path, text):
        if predicate(Path(path), text):
            raise _Killed(str(path))
        return write(path, text)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_or_die)
    monkeypatch.setattr(trainer_module, "atomic_write_text", write_or_die)


def test_a_kill_between_last_and_best_leaves_a_pair_that_resume_completes(tiny_settings, monkeypatch):
    settings = {**tiny_settings, "epochs": 3, "name": "pair"}
    reference = Trainer({**settings, "name": "reference"})
    reference.train()

    # Killed right after last.pt of epoch 2 was renamed into place, before best.pt's write (epoch 2 improved:
    # with val=false, fitness is the falling training loss).
    _kill_at(monkeypatch, lambda path, obj: path.name == "best.pt" and isinstance(obj, dict) and obj["epoch"] == 1)
    trainer = Trainer(settings)
    with pytest.raises(_Killed):
        trainer.train()
    monkeypatch.undo()
    last, best = load_checkpoint(trainer.last), load_checkpoint(trainer.best)
    assert (last["epoch"], last["best_epoch"], best["epoch"]) == (1, 1, 0)  # last.pt is the best epoch
    rows = list(csv.DictReader(trainer.csv_path.open()))
    assert [r["epoch"] for r in rows] == ["1"]  # the row of epoch 2 comes after its checkpoints

    resumed = Trainer({"resume": str(trainer.last)})
    assert [r["epoch"] for r in csv.DictReader(trainer.csv_path.open())] == ["1"]
    resumed.train()
    final_last, final_best = load_checkpoint(trainer.last), load_checkpoint(trainer.best)
    assert final_best["epoch"] == final_last["best_epoch"]
    assert [r["epoch"] for r in csv.DictReader(trainer.csv_path.open())] == ["1", "2", "3"]
    for k, v in load_checkpoint(reference.last)["model"]["state_dict"].items():  # nothing was lost
        assert torch.equal(v, final_last["model"]["state_dict"][k]), k


def test_resume_refuses_a_best_pt_from_another_run(tiny_settings):
    a = Trainer({**tiny_settings, "epochs": 3, "name": "a"})
    a.train()
    ckpt = load_checkpoint(a.last)
    ckpt["epoch"], ckpt["best_epoch"] = 1, 0  # resumable after epoch 2, best epoch 1 ...
    torch.save(ckpt, a.last)
    other = load_checkpoint(a.best)
    other["epoch"] = 2  # ... but best.pt claims epoch 3
    torch.save(other, a.best)
    with pytest.raises(CheckpointError, match=r"best.pt holds epoch 3 but .*last.pt records epoch 1 as the best"):
        Trainer({"resume": str(a.last)}).train()


def test_results_csv_never_lists_an_epoch_whose_checkpoint_was_not_written(tiny_settings, monkeypatch):
    _kill_at(monkeypatch, lambda path, obj: path.name == "last.pt" and obj["epoch"] == 1)
    trainer = Trainer({**tiny_settings, "epochs": 3, "name": "csv"})
    with pytest.raises(_Killed):
        trainer.train()
    rows = list(csv.DictReader(trainer.csv_path.open()))
    assert [r["epoch"] for r in rows] == ["1"] and load_checkpoint(trainer.last)["epoch"] == 0


def test_stale_temporaries_are_removed_at_resume(tiny_settings):
    trainer = Trainer({**tiny_settings, "epochs": 2, "name": "tmp"})
    trainer.train()
    ckpt = load_checkpoint(trainer.last)
    ckpt["epoch"] = 0
    torch.save(ckpt, trainer.last)
    stale = [trainer.wdir / ".last.pt.k3j2h1yz.rtdet-tmp", trainer.save_dir / ".results.csv.a1b2c3d4.rtdet-tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)  # what a kill inside torch.save leaves
    keep = [trainer.wdir / "notes.tmp", trainer.save_dir / ".draft.k3j2h1yz.tmp"]  # not ours: a user's own
    for p in keep:
        p.write_text("mine")
    Trainer({"resume": str(trainer.last)}).train()
    assert not any(p.exists() for p in stale) and all(p.read_text() == "mine" for p in keep)


def test_failed_set_up_leaves_no_run_folder(tiny_settings, tmp_path):
    bad_data = tmp_path / "empty"
    (bad_data / "images").mkdir(parents=True)
    (bad_data / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [a]\n")
    with pytest.raises(Exception, match="no usable images"):
        Trainer({**tiny_settings, "data": str(bad_data / "data.yaml")}).train()
    assert not (Path(tiny_settings["project"]) / "train").exists()


def _handlers_in_a_loader_worker(queue) -> None:
    from rtdet.data.loader import _worker_init

    _worker_init(0)
    queue.put((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))


def test_loader_workers_ignore_sigint_and_sigterm():
    """A signal sent to the process group is the trainer's to handle; a worker that died of it (or ran the
    trainer's handler and printed its line once more) would lose the run."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_handlers_in_a_loader_worker, args=(queue,))
    p.start()
    got = queue.get(timeout=60)
    p.join(timeout=60)
    assert got == (signal.SIG_IGN, signal.SIG_IGN)


def test_sigint_delivered_twice_at_once_still_saves(tiny_settings):
    """Two SIGINTs within a second (a process-group delivery, a terminal's double send) are one request:
    the step finishes and last.pt is saved; nothing aborts."""
    trainer = Trainer({**tiny_settings, "epochs": 2, "name": "twice"})

    def ctrl_c_twice(t):
        if (t.epoch, t.batch_index) == (0, 0):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    trainer.add_callback("on_train_batch_end", ctrl_c_twice)
    with pytest.raises(KeyboardInterrupt, match="saved") as err:
        trainer.train()
    assert err.value.signum == signal.SIGINT
    assert load_checkpoint(trainer.last)["step_in_epoch"] == 1


def test_a_signal_during_validation_or_saving_stops_after_that_epoch(tiny_settings):
    trainer = Trainer({**tiny_settings, "epochs": 3, "name": "late"})
    trainer.add_callback("on_fit_epoch_end",
                         lambda t: os.kill(os.getpid(), signal.SIGTERM) if t.epoch == 0 else None)
    with pytest.raises(KeyboardInterrupt, match="at the end of epoch 1; saved"):
        trainer.train()
    ckpt = load_checkpoint(trainer.last)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 0)  # a complete epoch: resume starts the next one
    _resume_completes(trainer.last, epochs=3)
