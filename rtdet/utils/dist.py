"""Helpers for one run over several processes or nodes (torchrun; NCCL on CUDA, Gloo on the CPU)."""

from __future__ import annotations

import torch.distributed as dist
import torch.nn as nn

__all__ = ["broadcast_buffers"]


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
