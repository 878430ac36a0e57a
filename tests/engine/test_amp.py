"""Mixed precision and memory layout in training: autocast covers the network only, the criterion gets
float32 outputs outside autocast; amp= / channels_last= settings are checked."""

import math
from typing import NamedTuple

import pytest
import torch

from rtdet.engine.amp import amp_dtype, float32_outputs, network_autocast
from rtdet.engine.settings import SettingsError, resolve_settings
from rtdet.engine.trainer import Trainer


class _Out(NamedTuple):
    boxes: torch.Tensor
    meta: dict | None


def test_float32_outputs_casts_every_floating_tensor_once_and_keeps_the_structure():
    out = _Out(torch.ones(2, 3, dtype=torch.bfloat16),
               {"idx": torch.arange(3), "w": [torch.zeros(1, dtype=torch.float16)], "n": 4})
    cast = float32_outputs(out)
    assert isinstance(cast, _Out)
    assert cast.boxes.dtype == torch.float32 and cast.meta["w"][0].dtype == torch.float32
    assert cast.meta["idx"].dtype == torch.int64 and cast.meta["n"] == 4
    assert float32_outputs(_Out(torch.ones(1), None)).meta is None


@pytest.mark.parametrize(("setting", "expected"), [(True, torch.float16), ("fp16", torch.float16),
                                                   ("bf16", torch.bfloat16), (False, None)])
def test_amp_dtype_on_cuda(monkeypatch, setting, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype(setting, torch.device("cuda")) is expected


def test_amp_is_fp32_on_the_cpu_and_bf16_needs_a_gpu_that_has_it(monkeypatch):
    for setting in (True, "fp16", "bf16"):
        assert amp_dtype(setting, torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(ValueError, match="Tesla T4 does not support bfloat16; use amp=fp16"):
        amp_dtype("bf16", torch.device("cuda"))


def test_amp_and_channels_last_settings_are_checked():
    assert resolve_settings({"amp": "BF16"})["amp"] == "bf16"
    assert resolve_settings({"amp": "half"})["amp"] == "fp16"
    assert resolve_settings({"amp": False})["amp"] is False
    assert resolve_settings({"channels_last": False})["channels_last"] is False
    for bad in ({"amp": "fp8"}, {"amp": 1}, {"channels_last": "yes"}):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            resolve_settings(bad)


def test_training_precision_turns_a_missing_bf16_into_a_settings_error(monkeypatch):
    from rtdet.engine.amp import training_precision

    assert training_precision({"amp": "bf16", "channels_last": True}, torch.device("cpu")) == (None, True)
    assert training_precision({"amp": "bf16", "channels_last": True}, torch.device("mps")) == (None, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(SettingsError, match="amp=bf16: Tesla T4"):
        training_precision({"amp": "bf16", "channels_last": True}, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert training_precision({"amp": "bf16", "channels_last": True}, torch.device("cuda")) == (torch.bfloat16, True)


def test_network_autocast_is_a_no_op_without_a_dtype():
    with network_autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")
    with network_autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def _floats(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _floats(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _floats(v)]
    return []


@pytest.fixture(params=["rtdetr", "yolov9", "rtmdet"])
def family_settings(request, tiny_settings, tiny_yolo_yaml, rtmdet_settings):
    return {"rtdetr": tiny_settings, "yolov9": {**tiny_settings, "model": str(tiny_yolo_yaml)},
            "rtmdet": rtmdet_settings}[request.param]


def test_criterion_runs_outside_autocast_on_float32_outputs(family_settings):
    """CPU autocast in bfloat16 stands in for CUDA's: the network computes in bf16, the criterion sees
    only float32 tensors with autocast off, and the loss is finite."""
    trainer = Trainer(family_settings)
    trainer.setup()
    trainer.amp_dtype = torch.bfloat16  # what amp=bf16 gives on a GPU
    seen = {}

    def network_dtypes(module, args, out):  # a forward hook must return None (a value replaces the output)
        seen["network"] = {t.dtype for t in _floats(out)}

    trainer.model.register_forward_hook(network_dtypes)
    criterion = trainer.criterion

    def recording(outputs, batch):
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["criterion"] = {t.dtype for t in _floats(outputs)}
        return criterion(outputs, batch)

    trainer.criterion = recording
    loss, terms = trainer.train_step(next(iter(trainer.train_loader)))
    assert torch.bfloat16 in seen["network"]  # autocast did cover the network
    assert seen["criterion"] == {torch.float32} and seen["autocast"] is False
    assert math.isfinite(loss) and all(math.isfinite(v) for v in terms.values())


def test_channels_last_training_feeds_nhwc_batches_and_keeps_the_loss(tiny_settings):
    nchw = Trainer({**tiny_settings, "channels_last": False})
    nchw.setup()
    assert nchw.channels_last is False
    trainer = Trainer({**tiny_settings, "channels_last": True})
    trainer.setup()
    assert trainer.channels_last is True  # on the CPU too: oneDNN's NHWC convolutions are faster
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in trainer.model.parameters() if p.dim() == 4)
    batch = next(iter(trainer.train_loader))
    layouts = []
    trainer.model.register_forward_pre_hook(
        lambda m, a: layouts.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    torch.manual_seed(0)  # the same denoising queries in both passes
    trainer.model.train()
    with torch.no_grad():
        reference = trainer.criterion(trainer.model(batch["img"], batch), batch)[0]  # same weights, NCHW batch
    torch.manual_seed(0)
    loss, _ = trainer.train_step(dict(batch), step=False)
    assert layouts == [False, True]
    assert loss == pytest.approx(float(reference), rel=1e-4)
