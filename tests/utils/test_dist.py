"""DDP helpers (rtdet/utils/dist.py), without a process group and with a two-process Gloo group."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rtdet.utils.dist import reduce_mean


def test_reduce_mean_outside_a_group_is_the_value_as_float32():
    value = torch.tensor(2.5, dtype=torch.float16, requires_grad=True)
    out = reduce_mean(value * 1)
    assert out.dtype == torch.float32 and out.shape == (1,) and not out.requires_grad and float(out) == 2.5


def _mean_in_rank(rank: int, world: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        value = torch.tensor([1.0, 4.0][rank])
        out[rank] = (float(reduce_mean(value)), float(value))  # the input is left as it was
    finally:
        dist.destroy_process_group()


def test_reduce_mean_is_the_same_mean_on_every_rank():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_mean_in_rank, args=(2, port, out), nprocs=2, join=True)
    assert dict(out) == {0: (2.5, 1.0), 1: (2.5, 4.0)}
