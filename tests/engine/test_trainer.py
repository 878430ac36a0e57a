"""Trainer: learning on a fixed batch, run folders, exact resume, Ctrl-C, NaN detection, bad checkpoints."""

import csv
import os
import signal

import pytest
import torch
import yaml

from rtdet.engine.errors import NonFiniteLossError
from rtdet.engine.settings import criterion_hyperparameters, resolve_settings
from rtdet.engine.trainer import Trainer
from rtdet.utils.checkpoint import CheckpointError, load_checkpoint
from tests.engine.run_helpers import train_until_ctrl_c


def _loss_before_after(trainer: Trainer, steps: int) -> tuple[float, float]:
    """Loss of one batch before and after ``steps`` optimizer steps on it. Both measurements use the same
    random denoising queries (same seed), so only the weights differ."""
    batch = next(iter(trainer.train_loader))

    def measure() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            return float(trainer.criterion(trainer.model(batch["img"], batch), batch)[0])

    before = measure()
    for _ in range(steps):
        trainer.train_step(batch)
    return before, measure()


def test_training_steps_lower_the_loss_on_synthetic(tiny_settings):
    trainer = Trainer({**tiny_settings, "warmup_iters": 0, "clip_grad": 0})
    trainer.setup()
    before, after = _loss_before_after(trainer, steps=6)
    assert after < 0.8 * before, (before, after)


def test_training_steps_lower_the_loss_on_coco128(coco128, tiny_yaml, tmp_path):
    trainer = Trainer({"model": str(tiny_yaml), "data": str(coco128 / "data.yaml"), "imgsz": 96, "batch": 2,
                       "workers": 0, "device": "cpu", "project": str(tmp_path), "val": False, "verbose": False,
                       "train_pipeline": "plain", "lr0": 5e-3, "warmup_iters": 0, "clip_grad": 0, "fraction": 0.05})
    trainer.setup()
    assert trainer.model.nc == 80  # the head follows the dataset's names
    before, after = _loss_before_after(trainer, steps=10)
    assert after < 0.9 * before, (before, after)


def test_run_folder_contents(tiny_settings):
    trainer = Trainer({**tiny_settings, "epochs": 1, "val": True, "plots": True})
    metrics = trainer.train()
    d = trainer.save_dir
    assert d.parent.name == "train" and d.name == "train"
    for f in ("weights/last.pt", "weights/best.pt", "results.csv", "results.png", "args.yaml"):
        assert (d / f).is_file(), f
    assert {"mAP50-95", "mAP50", "mAP75"} <= set(metrics)
    rows = list(csv.DictReader((d / "results.csv").open()))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert {"train/vfl", "metrics/mAP50", "lr/head"} <= set(rows[0])
    args = yaml.safe_load((d / "args.yaml").read_text())
    assert args["epochs"] == 1 and args["lr0"] == 1e-3 and args["loss_giou"] == 2.0  # user + recipe
    ckpt = torch.load(d / "weights" / "last.pt", weights_only=True)  # plain types and tensors only
    assert ckpt["epoch"] == 0 and ckpt["args"]["imgsz"] == 64
    assert set(ckpt) >= {"model", "ema", "optimizer", "scheduler", "epoch", "best_fitness", "rng", "args"}
    # a second run never overwrites the first
    again = Trainer({**tiny_settings, "epochs": 1})
    again.train()
    assert again.save_dir.name == "train2"


def _final_state(path):
    ckpt = load_checkpoint(path)
    return ckpt["model"]["state_dict"], ckpt["ema"]["state_dict"], ckpt["optimizer"]["state"], ckpt


def _assert_same(a_path, b_path):
    ma, ea, oa, ca = _final_state(a_path)
    mb, eb, ob, cb = _final_state(b_path)
    assert ca["epoch"] == cb["epoch"] and ca["step_in_epoch"] == cb["step_in_epoch"] == 0
    for k in ma:
        assert torch.equal(ma[k], mb[k]), f"model {k} differs"
        assert torch.equal(ea[k], eb[k]), f"EMA {k} differs"
    for i in oa:
        for k in oa[i]:
            assert torch.equal(torch.as_tensor(oa[i][k]), torch.as_tensor(ob[i][k])), f"optimizer state {i}.{k}"
    assert ca["scheduler"] == cb["scheduler"] and ca["ema_state"] == cb["ema_state"]


@pytest.mark.parametrize("stop_at", [(1, 0), (0, 1)], ids=["mid-epoch", "end-of-epoch"])
def test_ctrl_c_then_resume_reproduces_the_uninterrupted_run(tiny_settings, tmp_path, stop_at):
    settings = {**tiny_settings, "epochs": 3}
    reference = Trainer({**settings, "name": "reference"})
    reference.train()

    interrupted = Trainer({**settings, "name": "interrupted"})
    before = signal.getsignal(signal.SIGINT)  # not necessarily Python's default: nohup, `&` and CI ignore SIGINT
    last = train_until_ctrl_c(interrupted, stop_at)
    ckpt = load_checkpoint(last)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (stop_at[0], stop_at[1] + 1)
    assert signal.getsignal(signal.SIGINT) is before  # the handler that was there before is restored

    resumed = Trainer({"resume": str(last)})
    resumed.train()
    assert resumed.save_dir == interrupted.save_dir
    _assert_same(reference.save_dir / "weights" / "last.pt", last)
    rows = list(csv.DictReader((resumed.save_dir / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]


def test_resume_of_a_finished_run_says_how_to_train_longer(tiny_settings):
    t = Trainer({**tiny_settings, "epochs": 1})
    t.train()
    with pytest.raises(Exception, match="already finished"):
        Trainer({"resume": str(t.save_dir / "weights" / "last.pt")}).train()


def test_corrupted_checkpoint_gives_a_clear_error(tiny_settings, tmp_path):
    t = Trainer({**tiny_settings, "epochs": 1})
    t.train()
    last = t.save_dir / "weights" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated, as after a full disk
    with pytest.raises(CheckpointError, match=r"last\.pt.*(truncated|cannot be read)"):
        Trainer({"resume": str(last)}).train()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        Trainer({"resume": str(junk)}).train()
    from rtdet.api import Detector

    with pytest.raises(CheckpointError, match="junk.pt"):
        Detector(str(junk))


def test_nan_loss_stops_training_with_epoch_step_and_terms(tiny_settings):
    trainer = Trainer({**tiny_settings, "epochs": 2})

    def poison(t):
        criterion = t.criterion
        calls = {"n": 0}

        def nan_on_third_call(outputs, batch):
            calls["n"] += 1
            total, terms = criterion(outputs, batch)
            if calls["n"] == 3:  # epoch 2, batch 1 (2 batches per epoch)
                return total * float("nan"), {**terms, "vfl": torch.tensor(float("nan"))}
            return total, terms

        t.criterion = nan_on_third_call

    trainer.add_callback("on_train_start", poison)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    msg = str(err.value)
    assert "epoch 2/2" in msg and "batch 1/2" in msg and "vfl=nan" in msg and "giou=" in msg
    last = load_checkpoint(trainer.save_dir / "weights" / "last.pt")
    assert last["epoch"] == 0  # the last good epoch is kept, nothing trained through the NaN
    for v in last["model"]["state_dict"].values():
        assert torch.isfinite(v.float()).all()


def test_criterion_gets_only_the_family_keys():
    from rtdet.losses.rtdetr import RTDETRCriterion

    args = resolve_settings({"lr0": 1.0, "loss_giou": 3.0, "vfl_alpha": 0.5}, family="rtdetr")
    hyp = criterion_hyperparameters(args, "rtdetr")
    assert "lr0" not in hyp and "epochs" not in hyp
    assert hyp["loss_giou"] == 3.0 and hyp["vfl_alpha"] == 0.5 and hyp["aux_loss"] is True
    assert set(hyp) == {st.name for st in RTDETRCriterion.SETTINGS}


@pytest.mark.slow
def test_ddp_under_torchrun_on_cpu(tiny_settings, tmp_path):
    """Two processes (Gloo on CPU) run the same trainer code: each reads half of every batch, rank 0 validates
    and writes. Launched four times in a row: teardown used to hang in about one run of four (a rank blocked
    in process-group / DDP destruction after the other had exited), which a single run cannot catch.
    patience=1 makes the early-stopping decision matter: rank 0 decides it and broadcasts it, since only
    rank 0 validates and ranks that decided alone would stop at different epochs and deadlock."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rtdet", "train"]
    for attempt in range(4):
        project = tmp_path / f"ddp{attempt}"
        args = {**tiny_settings, "epochs": 3, "patience": 1, "val": True, "project": str(project)}
        out = subprocess.run([*cmd, *(f"{k}={v}" for k, v in args.items())], capture_output=True, text=True,
                             env=env, timeout=180)
        assert out.returncode == 0, f"run {attempt + 1}: {out.stderr[-3000:]}"
        run = project / "train" / "train"
        assert (run / "weights" / "last.pt").is_file() and (run / "results.csv").is_file()
        assert not (project / "train" / "train2").exists()  # only rank 0 made a run folder
        ckpt = load_checkpoint(run / "weights" / "last.pt")
        assert not any(k.startswith("module.") for k in ckpt["model"]["state_dict"])  # unwrapped from DDP
        rows = list(csv.DictReader((run / "results.csv").open()))
        assert len(rows) == ckpt["epoch"] + 1  # every completed epoch, early stop or not


# ------------------------------------------------------------------ the same trainer with a YOLOv9 (PGI) head
def test_yolo_training_steps_lower_the_loss_on_synthetic(tiny_settings, tiny_yolo_yaml):
    trainer = Trainer({**tiny_settings, "model": str(tiny_yolo_yaml), "optimizer": "SGD", "lr0": 0.02,
                       "warmup_iters": 0, "nbs": 0, "clip_grad": 0})
    trainer.setup()
    assert trainer.family == "yolov9" and trainer.criterion.reduction == "sum" and trainer.loss_scale == 1.0
    before, after = _loss_before_after(trainer, steps=8)
    assert after < 0.8 * before, (before, after)


def test_dual_branch_training_steps_lower_the_loss_on_coco128(coco128, tiny_yolo_yaml, tmp_path):
    trainer = Trainer({"model": str(tiny_yolo_yaml), "data": str(coco128 / "data.yaml"), "imgsz": 96, "batch": 2,
                       "workers": 0, "device": "cpu", "project": str(tmp_path), "val": False, "verbose": False,
                       "train_pipeline": "plain", "optimizer": "SGD", "lr0": 0.01, "warmup_iters": 0, "nbs": 0,
                       "fraction": 0.05})
    trainer.setup()
    assert trainer.model.nc == 80
    batch = next(iter(trainer.train_loader))
    out = trainer.model(batch["img"], batch)
    assert out.aux is not None  # both branches are trained
    before, after = _loss_before_after(trainer, steps=10)
    assert after < 0.9 * before, (before, after)


def test_nominal_batch_accumulates_sum_losses_and_scales_weight_decay(tiny_settings, tiny_yolo_yaml):
    from rtdet.engine.trainer import nominal_batch

    assert nominal_batch(16, 1, 64, 5e-4) == (4, 5e-4)  # the official batch 16: four batches per step
    assert nominal_batch(128, 1, 64, 5e-4) == (1, 1e-3)  # 8 GPUs x 16: one step per batch, twice the decay
    assert nominal_batch(16, 3, 0, 5e-4) == (3, 5e-4)  # off: `accumulate` as set
    trainer = Trainer({**tiny_settings, "model": str(tiny_yolo_yaml), "nbs": 8, "weight_decay": 1e-3})
    trainer.setup()
    assert trainer.accumulate == 2 and trainer.steps_per_epoch == 1
    assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {0.0, 1e-3}
    b1, b2 = list(trainer.train_loader)[:2]
    trainer.train_step(b1, step=False)
    trainer.train_step(b2, step=False)
    accumulated = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    trainer.optimizer.zero_grad()
    total = sum(trainer.criterion(trainer.model(b["img"], b), b)[0] for b in (b1, b2))  # sums, not averages
    total.backward()
    summed = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    for a, s in zip(accumulated, summed, strict=True):
        torch.testing.assert_close(a, s, rtol=1e-4, atol=1e-6)


def test_yolo_run_folder_and_validation(tiny_settings, tiny_yolo_yaml):
    trainer = Trainer({**tiny_settings, "model": str(tiny_yolo_yaml), "epochs": 1, "val": True, "nbs": 0})
    metrics = trainer.train()
    assert {"mAP50-95", "mAP50"} <= set(metrics)
    rows = list(csv.DictReader((trainer.save_dir / "results.csv").open()))
    assert {"train/box", "train/cls", "train/dfl"} <= set(rows[0])
    ckpt = load_checkpoint(trainer.save_dir / "weights" / "last.pt")
    assert ckpt["args"]["optimizer"] == "SGD" and ckpt["args"]["box"] == 7.5  # the recipe and the loss defaults


def test_yolo_ctrl_c_then_resume_reproduces_the_uninterrupted_run(tiny_settings, tiny_yolo_yaml):
    """The same exact-resume guarantee for a YOLOv9 run with a nominal batch (two batches per optimizer step)."""
    settings = {**tiny_settings, "model": str(tiny_yolo_yaml), "epochs": 3, "nbs": 4, "batch": 2}
    reference = Trainer({**settings, "name": "reference"})
    reference.train()
    assert reference.accumulate == 2 and reference.steps_per_epoch == 2

    interrupted = Trainer({**settings, "name": "interrupted"})
    before = signal.getsignal(signal.SIGINT)  # not necessarily Python's default: nohup, `&` and CI ignore SIGINT

    def ctrl_c(t):
        if (t.epoch, t.batch_index) == (1, 0):  # mid-window: the stop waits for the step that ends it
            os.kill(os.getpid(), signal.SIGINT)

    interrupted.add_callback("on_train_batch_end", ctrl_c)
    with pytest.raises(KeyboardInterrupt, match="saved"):
        interrupted.train()
    last = interrupted.save_dir / "weights" / "last.pt"
    assert (load_checkpoint(last)["epoch"], load_checkpoint(last)["step_in_epoch"]) == (1, 2)
    assert signal.getsignal(signal.SIGINT) is before
    Trainer({"resume": str(last)}).train()
    _assert_same(reference.save_dir / "weights" / "last.pt", last)


@pytest.mark.slow
def test_yolo_ddp_under_torchrun_on_cpu(tiny_settings, tiny_yolo_yaml, tmp_path):
    """DDP with a sum-reduced (YOLOv9) loss: both processes step together, rank 0 writes one run."""
    import subprocess
    import sys

    args = {**tiny_settings, "model": str(tiny_yolo_yaml), "epochs": 1, "val": True, "nbs": 0,
            "project": str(tmp_path / "ddp")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rtdet", "train"]
    out = subprocess.run([*cmd, *(f"{k}={v}" for k, v in args.items())], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "train" / "train" / "weights" / "last.pt")
    assert ckpt["args"]["box"] == 7.5 and not any(k.startswith("module.") for k in ckpt["model"]["state_dict"])


# ----------------------------------------------------------------------------------------------- RTMDet
def _rtmdet_loss_falls(trainer: Trainer, warmup: int = 15, steps: int = 25) -> tuple[float, float]:
    """RTMDet's loss starts near zero (its targets are IoUs, and the first boxes are points: IoU ~ 0), rises
    while the boxes grow into their objects, then falls: measure it from after ``warmup`` steps."""
    batch = next(iter(trainer.train_loader))
    for _ in range(warmup):
        trainer.train_step(batch)
    return _loss_before_after(trainer, steps)


def test_rtmdet_training_steps_lower_the_loss_on_synthetic(rtmdet_settings):
    trainer = Trainer({**rtmdet_settings, "model": "rtmdet-tiny.yaml", "train_pipeline": "plain", "lr0": 1e-3,
                       "epochs": 300, "warmup_iters": 6, "scheduler": "constant"})
    trainer.setup()
    assert trainer.family == "rtmdet" and trainer.ema.schedule == "exp-momentum"  # the recipe's EMA
    before, after = _rtmdet_loss_falls(trainer)
    assert after < 0.7 * before, (before, after)


@pytest.mark.slow
def test_rtmdet_training_steps_lower_the_loss_on_coco128(coco128, tmp_path):
    """The built-in rtmdet-tiny, 80 classes, a few real images."""
    trainer = Trainer({"model": "rtmdet-tiny.yaml", "data": str(coco128 / "data.yaml"), "imgsz": 96, "batch": 2,
                       "workers": 0, "device": "cpu", "project": str(tmp_path), "val": False, "verbose": False,
                       "train_pipeline": "plain", "lr0": 1e-3, "lr_batch": 0, "warmup_iters": 6, "fraction": 0.05,
                       "scheduler": "constant"})
    trainer.setup()
    assert trainer.model.nc == 80
    before, after = _rtmdet_loss_falls(trainer)
    assert after < 0.7 * before, (before, after)


def test_rtmdet_recipe_scales_the_lr_with_the_batch_and_names_the_models_pipeline(rtmdet_settings):
    trainer = Trainer({**rtmdet_settings, "lr0": 0.004, "lr_batch": 256})
    trainer.setup()
    assert trainer.lr0 == pytest.approx(0.004 * 4 / 256)  # linear scaling: 4 images per step of 256
    assert trainer.schedule.lr0 == trainer.lr0
    assert trainer.args["train_pipeline"] == "rtmdet-tiny"  # the model YAML's choice beats the recipe's
    assert trainer.train_loader.dataset.spec.name == "rtmdet-tiny"
    assert trainer.args["iou"] == 0.65 and trainer.args["weight_decay"] == 0.05 and trainer.args["clip_grad"] == 0
    mine = Trainer({**rtmdet_settings, "train_pipeline": "plain"})
    mine.setup()
    assert mine.args["train_pipeline"] == "plain"  # ... and the user's beats both


def test_sync_bn_is_ignored_outside_multi_gpu_ddp(rtmdet_settings, caplog):
    trainer = Trainer({**rtmdet_settings, "sync_bn": True})
    with caplog.at_level("WARNING"):
        trainer.setup()
    assert "sync_bn=true ignored" in caplog.text
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in trainer.model.modules())


def test_rtmdet_stage_two_starts_at_its_epoch_and_survives_resume(rtmdet_settings):
    """10 epochs: stage 2 (no mosaic / mixup) is the last epoch, 10 * 280/300 -> epoch 9, also when the run
    is interrupted at the end of epoch 5 (index 4) and resumed."""
    def record(into):
        def on_batch(t):
            into.setdefault(t.epoch, set()).add(tuple(t.train_loader.dataset.pipeline().names))
        return on_batch

    settings = {**rtmdet_settings, "epochs": 10, "lr0": 1e-3}
    stage1 = ("CachedMosaic", "RandomResize", "RandomCrop", "YOLOXHSVRandomAug", "RandomFlip", "Pad", "CachedMixUp")
    stage2 = ("RandomResize", "RandomCrop", "YOLOXHSVRandomAug", "RandomFlip", "Pad")

    seen: dict = {}
    first = Trainer({**settings, "name": "first"})
    first.add_callback("on_train_batch_end", record(seen))
    first.add_callback("on_fit_epoch_end", lambda t: t.request_stop() if t.epoch == 4 else None)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert sorted(seen) == [0, 1, 2, 3, 4]  # a stop asked at the end of an epoch saves there
    resumed = Trainer({"resume": str(first.save_dir / "weights" / "last.pt")})
    resumed.add_callback("on_train_batch_end", record(seen))
    resumed.train()
    assert {e: s for e, s in seen.items()} == {**{e: {stage1} for e in range(9)}, 9: {stage2}}


def test_rtmdet_run_validates_and_records_its_loss_terms(rtmdet_settings):
    trainer = Trainer({**rtmdet_settings, "epochs": 1, "val": True})
    metrics = trainer.train()
    assert {"mAP50-95", "mAP50"} <= set(metrics)
    rows = list(csv.DictReader((trainer.save_dir / "results.csv").open()))
    assert {"train/qfl", "train/giou", "metrics/mAP50"} <= set(rows[0])
    args = yaml.safe_load((trainer.save_dir / "args.yaml").read_text())
    assert args["qfl_weight"] == 1.0 and args["dsl_topk"] == 13 and "loss_vfl" not in args
    ckpt = load_checkpoint(trainer.save_dir / "weights" / "last.pt")
    assert ckpt["ema_state"]["schedule"] == "exp-momentum"


@pytest.mark.slow
def test_rtmdet_tiny_learns_the_synthetic_set(tmp_path):
    """rtmdet-tiny from scratch on synthetic shapes (4 classes, 160 images at 160 px), 10 epochs: val mAP50
    far above chance (random boxes score ~0). Minutes on 2 CPU cores; 0.7 or more in our runs."""
    from rtdet.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=160, n_val=40, imgsz=160, seed=0, n_classes=4,
                                  min_objects=1, max_objects=4, size_range=(0.15, 0.45))
    trainer = Trainer({"model": "rtmdet-tiny.yaml", "data": str(data), "imgsz": 160, "batch": 8, "epochs": 10,
                       "workers": 0, "device": "cpu", "project": str(tmp_path / "runs"), "verbose": False,
                       "plots": False, "train_pipeline": "plain", "lr0": 2e-3, "lr_batch": 0, "scheduler": "cosine",
                       "lrf": 0.05, "warmup_iters": 30, "ema_tau": 100, "ema_decay": 0.999, "ema_schedule": "ramp"})
    metrics = trainer.train()
    assert metrics["mAP50"] >= 0.5, metrics


@pytest.mark.parametrize("family_yaml", ["tiny_yaml", "tiny_yolo_yaml", "rtmdet_yaml"])
def test_pretrained_transplants_by_structure_and_reports_in_the_run_folder(family_yaml, tiny_settings, tmp_path,
                                                                           request, capsys):
    import json

    from rtdet.nn.model import DetectionModel

    path = request.getfixturevalue(family_yaml)
    text = path.read_text()
    source = DetectionModel(str(path), nc=2)
    ckpt = source.save(tmp_path / "source.pt")
    # the variant has an extra stride-1 Conv after row 0 (the image stem): every later row index moves
    rows = text.splitlines()
    first = next(k for k, line in enumerate(rows) if line.strip().startswith("- [-1"))
    rows.insert(first + 1, "  - [-1, 1, Conv, [8, 3, 1]]")
    variant = tmp_path / "variant.yaml"
    variant.write_text("\n".join(_shift_absolute(line) for line in rows) + "\n")
    trainer = Trainer({**tiny_settings, "model": str(variant), "pretrained": str(ckpt), "verbose": True})
    trainer.setup()
    report = json.loads((trainer.save_dir / "transplant.json").read_text())
    assert (trainer.save_dir / "transplant.md").read_text().startswith("# Transplant: source.pt")
    assert report["rows"][1]["source"] is None and report["new_rows"][0] == 1 and report["share"] > 0.9
    assert trainer.transplanted_rows == report["transplanted_rows"]
    assert trainer.transplanted_rows[-1] == trainer.model.head_index  # the head lands, past the moved rows
    start = trainer.model.state_dict()
    for r in report["rows"]:
        for key in r["copied"]:
            assert torch.equal(start[f"model.{r['target']}.{key}"], source.state_dict()[f"model.{r['source']}.{key}"])
    assert f"pretrained: {report['summary']}" in capsys.readouterr().out


def _shift_absolute(line: str) -> str:
    """A YAML row line with every absolute 'from' index >= 1 moved up by one (a row was inserted at 1)."""
    import re

    head, sep, rest = line.partition("[")
    if not sep or not head.strip().startswith("-"):
        return line
    match = re.match(r"(\[[^\]]*\]|-?\d+)(.*)", rest, re.S)
    if match is None:
        return line
    f, tail = match.groups()
    fixed = re.sub(r"(?<![-\d])(\d+)", lambda m: str(int(m.group(1)) + 1) if int(m.group(1)) >= 1 else m.group(1), f)
    return f"{head}[{fixed}{tail}"


def test_resumed_epoch_means_count_the_batches_before_the_interruption(tiny_settings):
    """results.csv's losses of an epoch interrupted inside are the whole epoch's (the mid-epoch last.pt carries the
    sums so far), so a best epoch chosen by training loss is the same as in the uninterrupted run."""
    settings = {**tiny_settings, "epochs": 2}
    reference = Trainer({**settings, "name": "reference"})
    reference.train()
    interrupted = Trainer({**settings, "name": "interrupted"})
    interrupted.add_callback("on_train_batch_end", lambda t: (t.epoch, t.batch_index) == (0, 0) and os.kill(
        os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    last = interrupted.save_dir / "weights" / "last.pt"
    Trainer({"resume": str(last)}).train()
    rows = [load_checkpoint(p)["results"] for p in (reference.last, last)]
    assert [{k: v for k, v in r.items() if k != "time"} for r in rows[0]] == \
        [{k: v for k, v in r.items() if k != "time"} for r in rows[1]]
