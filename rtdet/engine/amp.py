"""Mixed precision and memory layout for training: what ``amp=`` and ``channels_last=`` mean on a device.

    dtype = amp_dtype(args["amp"], device)            # None (fp32), torch.float16 or torch.bfloat16
    with network_autocast(device, dtype):
        outputs = model(img, batch)                    # the network in reduced precision
    loss, terms = criterion(float32_outputs(outputs), batch)   # loss, costs and assignment in fp32

Autocast covers the network only. The head's training outputs leave it as float32 once, and the
criterion (matching costs, assigners, losses) runs outside autocast on them: an fp16 loss overflows or
underflows (NaN losses under AMP are what users of the peers' trainers report), and a Hungarian or
task-aligned assignment on fp16 costs can differ from the fp32 one on ties. fp16 needs a GradScaler
(gradients of small losses underflow in fp16); bf16 has fp32's exponent range and needs none.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from rtdet.engine.settings import SettingsError, check_precision

__all__ = ["AMP_CHOICES", "amp_dtype", "check_precision", "float32_outputs", "network_autocast", "to_channels_last",
           "training_precision"]

AMP_CHOICES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def amp_dtype(setting: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the network for ``amp=setting`` on ``device``: None means fp32.

    Mixed precision is a CUDA feature here (``amp=true`` is fp16, the default of the references); on the
    CPU or MPS training stays fp32 whatever the setting. ``bf16`` on a GPU without bfloat16 support is a
    ValueError naming the GPU and the fix (``amp=fp16``), raised before any run folder exists."""
    setting = check_precision(setting)
    if setting is False or torch.device(device).type != "cuda":
        return None
    if setting == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp=bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                         f"use amp=fp16 (or amp=false)")
    return torch.float16 if setting is True else AMP_CHOICES[setting]


def training_precision(args: dict, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, NHWC layout) of a training run: ``amp=`` through :func:`amp_dtype` (a GPU
    without bf16 is a SettingsError) and ``channels_last=``, which applies to training on CUDA and on the CPU.

    On CUDA NHWC gives cuDNN's fastest convolutions under AMP (tensor cores). On the CPU oneDNN's NHWC
    kernels are faster too, above all the depthwise convolutions' backward (3-7x on HGNetv2's shapes): one
    training step of every family took 5-19% less time (``benchmarks/train_step.py --layouts``,
    docs/benchmarks.md). Other devices (MPS) keep NCHW."""
    try:
        dtype = amp_dtype(args["amp"], device)
    except ValueError as e:
        raise SettingsError(str(e)) from None
    return dtype, bool(args["channels_last"]) and torch.device(device).type in ("cuda", "cpu")


def network_autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast for the network's forward pass (a no-op context when ``dtype`` is None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def float32_outputs(outputs: Any) -> Any:
    """``outputs`` with every floating tensor as float32, in the same structure (NamedTuples, tuples,
    lists, dicts); other values (ints, None, integer tensors) unchanged. One cast, done once a step, so
    that the criterion never sees a half-precision tensor."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, tuple) and hasattr(outputs, "_fields"):  # a NamedTuple: rebuild by field
        return type(outputs)(*(float32_outputs(v) for v in outputs))
    if isinstance(outputs, list | tuple):
        return type(outputs)(float32_outputs(v) for v in outputs)
    if isinstance(outputs, dict):
        return {k: float32_outputs(v) for k, v in outputs.items()}
    return outputs


def to_channels_last(img: torch.Tensor) -> torch.Tensor:
    """A 4-d image batch [B, 3, H, W] in NHWC memory layout (same shape and values; the strides change)."""
    return img.contiguous(memory_format=torch.channels_last) if img.dim() == 4 else img
