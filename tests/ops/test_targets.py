"""The targets every family's loss reads, built and checked once per step."""

import pytest
import torch

from rtdet.ops.targets import PaddedTargets, batch_targets, pad_targets


def batch():
    return {"batch_idx": torch.tensor([1, 0, 1, 1]), "cls": torch.tensor([2, 0, 1, 2]),
            "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1],
                                    [0.9, 0.9, 0.2, 0.2]])}


def test_pad_targets_groups_boxes_per_image_in_batch_order():
    t = pad_targets(torch.tensor([1, 0, 1, 1]), torch.tensor([5, 6, 7, 8]), torch.arange(16.0).view(4, 4), 3)
    assert t.counts.tolist() == [1, 3, 0]
    assert t.rows.tolist() == [[1, -1, -1], [0, 2, 3], [-1, -1, -1]]
    assert t.cls.tolist() == [[6, 0, 0], [5, 7, 8], [0, 0, 0]]
    assert t.mask.tolist() == [[True, False, False], [True, True, True], [False, False, False]]


def test_xyxy_gives_pixel_corners():
    t = batch_targets(batch(), 2, 3)
    xyxy = t.xyxy((100, 200))  # h 100, w 200
    assert xyxy[0, 0].tolist() == pytest.approx([0.0, 0.0, 100.0, 50.0])
    assert xyxy[1, 0].tolist() == pytest.approx([80.0, 30.0, 120.0, 70.0])


def test_the_trainers_targets_are_reused():
    b = batch()
    b["targets"] = batch_targets(b, 2, 3)
    assert batch_targets(b, 2, 3) is b["targets"]
    assert isinstance(b["targets"], PaddedTargets)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("cls", torch.tensor([2, 0, 3, 2]), r"class id 3 in batch\['cls'\] is outside \[0, 2\] \(nc=3\)"),
    ("cls", torch.tensor([2, 0, -1, 2]), r"class id -1 in batch\['cls'\]"),
    ("batch_idx", torch.tensor([1, 0, 2, 1]), r"batch_idx'\] must lie in \[0, 1\] for the 2 images"),
    ("bboxes", torch.zeros(4, 5), r"bboxes \(4, 5\); expected \[N\], \[N\], \[N, 4\]"),
])
def test_bad_targets_are_named(key, value, message):
    b = batch()
    b[key] = value
    with pytest.raises(ValueError, match=message):
        batch_targets(b, 2, 3)


def test_the_losses_still_export_the_targets_the_trainer_imports():
    """rtdet/engine/trainer.py imports batch_targets from rtdet.losses.common: the same function."""
    from rtdet.losses import common

    assert common.batch_targets is batch_targets and common.PaddedTargets is PaddedTargets
