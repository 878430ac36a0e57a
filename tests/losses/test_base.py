"""The Criterion base every family loss derives from (rtdet/losses/base.py)."""

import pytest
import torch

from rtdet.losses.base import Criterion
from rtdet.utils.schema import Setting


class ToyCriterion(Criterion):
    SETTINGS = (Setting("gain", 2.0, float, "a loss gain", low=0.0), Setting("topk", 3, int, "candidates", low=1))


def test_settings_give_defaults_checked_values_and_a_repr():
    assert ToyCriterion.DEFAULTS == {"gain": 2.0, "topk": 3} and Criterion.DEFAULTS == {}
    crit = ToyCriterion(4, topk=5)
    assert crit.hyp == {"gain": 2.0, "topk": 5} and crit.nc == 4
    assert crit.extra_repr() == "nc=4, gain=2.0, topk=5"
    assert crit.reduction == "mean"


def test_a_bad_setting_names_the_criterion_and_the_accepted_keys():
    with pytest.raises(ValueError, match=r"ToyCriterion: unknown hyper-parameter\(s\) \['gian'\]; .*gain=2.0"):
        ToyCriterion(4, gian=1.0)
    with pytest.raises(ValueError, match="gain"):
        ToyCriterion(4, gain=-1.0)


def test_input_size_prefers_the_batch_image_and_normaliser_is_at_least_one():
    assert Criterion.input_size({"img": torch.zeros(2, 3, 64, 96)}, lambda: (0, 0)) == (64, 96)
    assert Criterion.input_size({}, lambda: (32, 48)) == (32, 48)
    assert Criterion.normaliser(torch.tensor(0.25)) == 1.0 and Criterion.normaliser(torch.tensor(7.5)) == 7.5
