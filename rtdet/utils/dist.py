"""Helpers for one run over several processes or nodes (torchrun; NCCL on CUDA, Gloo on the CPU)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["broadcast_buffers", "reduce_mean"]


def broadcast_buffers(*modules: nn.Module | None, src: int = 0) -> None:
    """Rank ``src``'s buffers (BatchNorm running statistics) on every rank.

    DDP keeps parameters equal on every rank, but each rank's forward updates its own running statistics
    from its own shard of the batch; DDP copies rank 0's at the start of the next forward, so after the last
    step they still differ. Rank 0 writes the checkpoints: with this, every rank ends with the weights that
    were saved. A no-op outside a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for module in modules:
        if module is not None:
            for buf in module.buffers():
                dist.broadcast(buf.data, src=src)


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the processes of the group (mmdetection's ``reduce_mean``), as a detached
    float32 tensor of shape [1]: every rank gets the same number, so every rank normalises its loss alike.

    ``value`` must sit on the group's device (CUDA under NCCL). Outside a multi-process group the result
    is ``value`` itself. The sum is divided in float32 on the tensor, as the references do (official
    RT-DETR ``num_boxes / world_size``, mmdetection ``tensor.div_``)."""
    total = value.detach().float().reshape(1).clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
        total /= dist.get_world_size()
    return total
