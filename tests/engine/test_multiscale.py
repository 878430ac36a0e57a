"""Multi-scale training: the sizes a run sees, the same on every DDP rank, and exact resume with it on."""

import os
import random

import numpy as np
import pytest
import torch

from rtdet.engine.multiscale import MultiScale, candidate_sizes, parse_multi_scale
from rtdet.engine.settings import SettingsError, check_settings, resolve_settings
from rtdet.engine.trainer import Trainer
from rtdet.utils.checkpoint import load_checkpoint
from tests.engine.run_helpers import train_until_ctrl_c
from tests.engine.test_trainer import _assert_same


def _scales(**settings) -> MultiScale:
    args = {"multi_scale": [0.5, 1.5], "imgsz": 640, "seed": 0, "epochs": 10, **settings}
    return MultiScale.from_settings(args, stride=32)


def test_setting_spellings_and_bad_values():
    assert parse_multi_scale("0.5-1.5") == parse_multi_scale([0.5, 1.5]) == parse_multi_scale(True) == [0.5, 1.5]
    assert parse_multi_scale(False) is None and parse_multi_scale(None) is None
    assert check_settings({"multi_scale": "0.75-1.25"})["multi_scale"] == [0.75, 1.25]
    with pytest.raises(SettingsError, match=r"multi_scale=\[1.5, 0.5\]: expected 0 < low <= high"):
        check_settings({"multi_scale": [1.5, 0.5]})
    with pytest.raises(SettingsError, match="multi_scale='large'"):
        check_settings({"multi_scale": "large"})


def test_sizes_are_stride_multiples_within_the_range_and_vary():
    scales = _scales()
    assert scales.sizes == list(range(320, 961, 32))
    drawn = [scales.size(e, i) for e in range(3) for i in range(50)]
    assert set(drawn) <= set(scales.sizes) and len(set(drawn)) >= 15
    assert candidate_sizes(640, 0.75, 1.25, 32) == list(range(480, 801, 32))  # RT-DETR's 480..800
    assert candidate_sizes(64, 0.9, 1.1, 32) == [64]  # no multiple in range: the one nearest imgsz


def test_sizes_depend_on_seed_epoch_and_step_only():
    """What makes DDP ranks agree and resume exact: set_seed(seed + rank) and any use of the global random
    state between draws change nothing; another seed gives other sizes."""
    first = [_scales().size(e, i) for e in range(2) for i in range(20)]
    torch.manual_seed(1)  # rank 1's global state, and some of it used
    np.random.seed(1)
    random.seed(1)
    torch.rand(10), np.random.rand(10), random.random()
    assert [_scales().size(e, i) for e in range(2) for i in range(20)] == first
    assert [_scales(seed=1).size(e, i) for e in range(2) for i in range(20)] != first


def test_multi_scale_stops_at_its_fraction_of_the_run():
    scales = _scales(epochs=72, multi_scale_stop=71 / 72)
    assert {scales.size(70, i) for i in range(30)} != {640}
    assert {scales.size(71, i) for i in range(30)} == {640}


def test_resize_keeps_boxes_and_rounds_each_side_to_the_stride():
    scales = _scales()
    batch = {"img": torch.rand(2, 3, 640, 640), "bboxes": torch.rand(3, 4)}
    step = next((e, i) for e in range(5) for i in range(50) if scales.size(e, i) != 640)
    out = scales(batch, *step)
    size = scales.size(*step)
    assert out["img"].shape == (2, 3, size, size) and out["bboxes"] is batch["bboxes"]
    assert scales.resize(torch.rand(1, 3, 480, 640), 800).shape[-2:] == (608, 800)  # 480 * 1.25 = 600 -> 608


def _record_input_sizes(trainer: Trainer, seen: list):
    """Record the side of every training batch the model sees (a forward pre-hook, added once set up)."""
    def hook(module, inputs):
        if module.training:
            seen.append(inputs[0].shape[-1])

    trainer.add_callback("on_train_start", lambda t: t.model.register_forward_pre_hook(hook))


def test_a_run_trains_on_the_drawn_sizes(tiny_settings):
    trainer = Trainer({**tiny_settings, "epochs": 2, "batch": 2, "multi_scale": "0.5-1.5"})
    seen: list = []
    _record_input_sizes(trainer, seen)
    trainer.train()
    scales = trainer.multi_scale
    assert scales.sizes == [32, 48, 64, 80, 96]  # the tiny RT-DETR's largest stride is 16
    expected = [scales.size(e, i) for e in range(2) for i in range(4)]  # 2 epochs of 4 batches
    assert seen == expected and len(set(expected)) > 1


def test_family_recipes_say_whether_multi_scale_is_on():
    assert resolve_settings({}, "rtdetr")["multi_scale"] == [0.75, 1.25]  # the official 480-800 at 640
    assert resolve_settings({}, "rtdetr")["multi_scale_stop"] == pytest.approx(71 / 72)
    assert resolve_settings({}, "yolov9")["multi_scale"] is None
    assert resolve_settings({}, "rtmdet")["multi_scale"] is None


def test_ctrl_c_then_resume_is_bit_identical_with_multi_scale(tiny_settings):
    settings = {**tiny_settings, "epochs": 2, "batch": 2, "multi_scale": [0.5, 1.5]}
    reference = Trainer({**settings, "name": "reference"})
    reference.train()
    interrupted = Trainer({**settings, "name": "interrupted"})
    last = train_until_ctrl_c(interrupted, (0, 2))
    assert (load_checkpoint(last)["epoch"], load_checkpoint(last)["step_in_epoch"]) == (0, 3)
    resumed = Trainer({"resume": str(last)})
    seen: list = []
    _record_input_sizes(resumed, seen)
    resumed.train()
    remaining = [(0, 3)] + [(1, i) for i in range(4)]  # the rest of epoch 1, then epoch 2
    assert seen == [reference.multi_scale.size(e, i) for e, i in remaining]
    _assert_same(reference.save_dir / "weights" / "last.pt", last)


DDP_SCRIPT = """
import json, os, sys
from rtdet.engine.trainer import Trainer

settings, out = json.loads(sys.argv[1]), sys.argv[2]
trainer, seen = Trainer(settings), []
trainer.add_callback("on_train_start", lambda t: t.model.register_forward_pre_hook(
    lambda m, inputs: seen.append(inputs[0].shape[-1]) if m.training else None))
trainer.train()
with open(f"{out}.{os.environ['RANK']}", "w") as fh:
    json.dump(seen, fh)
"""


@pytest.mark.slow
def test_ddp_ranks_train_each_step_at_the_same_size(tiny_settings, tmp_path):
    """Two processes under torchrun (Gloo on CPU), each with its own global seed (seed + rank): every step
    is trained at the same size on both, the size the seed gives."""
    import json
    import subprocess
    import sys

    script = tmp_path / "ddp_sizes.py"
    script.write_text(DDP_SCRIPT)
    settings = {**tiny_settings, "epochs": 2, "batch": 4, "multi_scale": [0.5, 1.5], "loggers": "csv"}
    out = tmp_path / "sizes"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           json.dumps(settings), str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"sizes.{r}").read_text()) for r in (0, 1))
    scales = MultiScale.from_settings(resolve_settings(settings, "rtdetr"), stride=16)
    # 8 images over 2 ranks, 2 per rank and step: 2 steps per epoch
    assert rank0 == rank1 == [scales.size(e, i) for e in range(2) for i in range(2)]
    assert len(set(rank0)) > 1


def _dfine_scales(base_size: int, repeat: int) -> list[int]:
    """D-FINE's generate_scales (src/data/dataloader.py, as research section 8 states it): the stride-32 sides
    from 0.75 x base up to base, base listed ``repeat`` times, and down from 1.25 x base."""
    n = (base_size - int(base_size * 0.75 / 32) * 32) // 32
    low = [int(base_size * 0.75 / 32) * 32 + k * 32 for k in range(n)]
    high = [int(base_size * 1.25 / 32) * 32 - k * 32 for k in range(n)]
    return low + [base_size] * repeat + high


def test_repeat_zero_is_the_uniform_draw_of_before():
    before, now = _scales(), _scales(multi_scale_repeat=0)
    assert now.sizes == before.sizes == candidate_sizes(640, 0.5, 1.5, 32)
    steps = [(e, i) for e in range(3) for i in range(40)]
    assert [now.size(*step) for step in steps] == [before.size(*step) for step in steps]


@pytest.mark.parametrize("repeat", [20, 6, 4, 3])
def test_repeat_draws_imgsz_with_dfines_weight(repeat):
    """The sizes are D-FINE's list for base_size_repeat R (640 is R of 10 + R entries), and over many seeds,
    epochs and steps each entry is drawn with probability 1 / (10 + R)."""
    scales = [_scales(multi_scale=[0.75, 1.25], multi_scale_repeat=repeat, seed=seed) for seed in range(3)]
    assert sorted(scales[0].sizes) == sorted(_dfine_scales(640, repeat))
    drawn = [s.size(e, i) for s in scales for e in range(10) for i in range(1000)]
    n = len(drawn)
    assert drawn.count(640) / n == pytest.approx(repeat / (10 + repeat), abs=0.012)
    for side in range(480, 801, 32):
        if side != 640:
            assert drawn.count(side) / n == pytest.approx(1 / (10 + repeat), abs=0.006), side


def test_nearest_interpolation_is_dfines_and_bilinear_stays_the_default():
    img = torch.rand(2, 3, 64, 64)
    near = _scales(multi_scale_interpolation="nearest").resize(img, 96)
    assert torch.equal(near, torch.nn.functional.interpolate(img, size=[96, 96]))  # F.interpolate's default mode
    bilinear = _scales().resize(img, 96)
    assert torch.equal(bilinear, torch.nn.functional.interpolate(img, size=[96, 96], mode="bilinear",
                                                                 align_corners=False))
    with pytest.raises(SettingsError, match="multi_scale_interpolation='bicubic'"):
        check_settings({"multi_scale_interpolation": "bicubic"})
