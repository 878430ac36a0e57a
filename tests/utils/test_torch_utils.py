"""rtdet.utils.torch_utils (used by the engine): EMA, RNG state capture, device parsing."""

import io
import math
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from rtdet.utils.torch_utils import ModelEMA, get_rng_state, parse_devices, select_device, set_rng_state


def test_ema_ramps_its_decay_and_averages_weights_and_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9, tau=10)
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(2.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 10))
    assert ema.decay() == pytest.approx(d)
    w = ema.model.state_dict()
    assert torch.allclose(w["0.weight"], d * start["0.weight"] + (1 - d) * model[0].weight)
    assert torch.allclose(w["1.running_mean"], d * start["1.running_mean"] + (1 - d) * model[1].running_mean)
    assert w["1.num_batches_tracked"] == model[1].num_batches_tracked  # integers are copied
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training
    other = ModelEMA(model)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and other.decay_max == 0.9 and other.tau == 10


def test_ema_exp_momentum_schedule_copies_first_then_follows_mmdetection():
    """mmdetection ExpMomentumEMA(momentum m, gamma g): step 0 copies, step k>0 keeps
    (1 - m) * (1 - exp(-(1 + k) / g)) of the average."""
    model = nn.Linear(2, 2)
    ema = ModelEMA(model, decay=1 - 0.0002, tau=2000, schedule="exp-momentum")
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.equal(ema.model.weight, model.weight)  # the first update is a copy
    previous = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    momentum = (1 - 0.0002) * math.exp(-(1 + 1) / 2000) + 0.0002  # mmdetection's formula at steps = 1
    assert torch.allclose(ema.model.weight, (1 - momentum) * previous + momentum * model.weight)
    assert ModelEMA(model, schedule="exp-momentum").state_dict()["schedule"] == "exp-momentum"
    with pytest.raises(ValueError, match="ema_schedule"):
        ModelEMA(model, schedule="swa")


def test_ema_averages_a_shared_tensor_once_per_update():
    """A weight owned by several modules (RTMDet's head convs) appears once per owner in a state dict."""
    shared = nn.Linear(2, 2)
    model = nn.ModuleList([nn.Sequential(shared), nn.Sequential(shared), nn.Sequential(shared)])
    ema = ModelEMA(model, decay=0.5, tau=0)
    start = ema.model[0][0].weight.clone()
    with torch.no_grad():
        shared.weight.add_(1.0)
    ema.update(model)
    assert ema.model[0][0].weight is ema.model[2][0].weight  # still shared in the copy
    assert torch.allclose(ema.model[0][0].weight, 0.5 * start + 0.5 * shared.weight)  # not 0.5 ** 3


def test_rng_state_round_trips_through_a_weights_only_checkpoint():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # a cached gaussian in numpy's state
    state = get_rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(restored)
    again = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and expected[3] == again[3]


def test_devices():
    assert parse_devices("") == [] and parse_devices(None) == []
    assert parse_devices("cpu") == ["cpu"] and parse_devices(0) == ["0"]
    assert parse_devices("0,1") == ["0", "1"] and parse_devices("cuda:1") == ["1"]
    with pytest.raises(ValueError, match="device='gpu'"):
        parse_devices("gpu")
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert select_device("").type == "cpu"
        with pytest.raises(ValueError, match="use device=cpu"):
            select_device("0")
