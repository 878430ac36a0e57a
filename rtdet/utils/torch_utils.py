"""Torch helpers for the engine: device selection, seeding and RNG state capture, distributed set-up, and
the exponential moving average of model weights (ModelEMA)."""

from __future__ import annotations

import copy
import math
import os
import random
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from rtdet.utils.logging import LOGGER

__all__ = [
    "ModelEMA",
    "cap_threads",
    "de_parallel",
    "distributed_info",
    "get_rng_state",
    "init_distributed",
    "machine_cpus",
    "parse_devices",
    "select_device",
    "set_rng_state",
    "set_seed",
    "torch_distributed_zero_first",
]


# ----------------------------------------------------------------------------- devices
def machine_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_threads(value: int) -> int:
    """A thread count bounded by the machine, as workers are: more threads than CPUs only contend
    (threads=4096 started thousands of threads and never answered)."""
    cpus = machine_cpus()
    if value > cpus:
        LOGGER.info(f"threads={value}: this machine has {cpus} CPUs; using threads={cpus}")
        return cpus
    return value


def parse_devices(device: str | int | None) -> list[str]:
    """'' / None -> [] (auto), 'cpu' -> ['cpu'], 0 -> ['0'], '0,1' -> ['0', '1'], 'cuda:1' -> ['1']."""
    if device is None:
        return []
    text = str(device).strip().lower().replace("cuda:", "").replace(" ", "")
    if text in ("", "auto"):
        return []
    if text in ("cpu", "mps"):
        return [text]
    parts = [p for p in text.split(",") if p]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"device={device!r}: expected '', 'cpu', a GPU index such as '0', or a list such as '0,1'")
    return parts


def select_device(device: str | int | None = "", local_rank: int = -1) -> torch.device:
    """The torch.device for this process; under DDP each rank takes the GPU of its LOCAL_RANK."""
    parts = parse_devices(device)
    if parts == ["cpu"]:
        return torch.device("cpu")
    if parts == ["mps"]:
        return torch.device("mps")
    if not torch.cuda.is_available():
        if parts:
            raise ValueError(
                f"device={device!r} asks for CUDA, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}); use device=cpu"
            )
        return torch.device("cpu")
    n = torch.cuda.device_count()
    for p in parts:
        if int(p) >= n:
            raise ValueError(f"device={device!r}: GPU {p} does not exist ({n} visible)")
    if local_rank >= 0:
        return torch.device("cuda", int(parts[local_rank]) if len(parts) > local_rank else local_rank)
    return torch.device("cuda", int(parts[0]) if parts else 0)


def distributed_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment; (0, -1, 1) for a single process."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return 0, -1, 1
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), world


def init_distributed(device: torch.device) -> None:
    """Join the process group started by torchrun (NCCL on CUDA, Gloo on CPU)."""
    if dist.is_available() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


@contextmanager
def torch_distributed_zero_first(local_rank: int):
    """Rank 0 goes first (e.g. to build a dataset cache), the others wait for it."""
    initialized = dist.is_available() and dist.is_initialized()
    if initialized and local_rank not in (-1, 0):
        dist.barrier()
    yield
    if initialized and local_rank == 0:
        dist.barrier()


def de_parallel(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel) else model


# ----------------------------------------------------------------------------- seeding and RNG state
def set_seed(seed: int = 0, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with ``deterministic`` ask torch for deterministic kernels (warn-only,
    since some, e.g. grid_sample's CUDA backward, have none)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def get_rng_state() -> dict:
    """Every RNG state as tensors and plain types (loadable with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what get_rng_state captured."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in state["cuda"]])


# ----------------------------------------------------------------------------- EMA
class ModelEMA:
    """Exponential moving average of a model's floating-point state (weights and BN statistics).

    ``decay_t = decay * (1 - exp(-updates / tau))`` ramps the decay from 0 so the average follows the
    model early in training (the RT-DETR / YOLO convention). ``schedule="exp-momentum"`` is mmdetection's
    ExpMomentumEMA (momentum = 1 - decay, gamma = tau): the same ramp, except that the first update copies
    the weights. Buffers are averaged too (mmdetection's ``update_buffers=True``); a tensor shared by
    several modules (RTMDet's head convolutions) is averaged once per update. ``ema.model`` is a frozen
    copy in eval mode.
    """

    SCHEDULES = ("ramp", "exp-momentum")

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0,
                 schedule: str = "ramp"):
        if schedule not in self.SCHEDULES:
            raise ValueError(f"ema_schedule={schedule!r} is not supported; choose one of {', '.join(self.SCHEDULES)}")
        self.model = copy.deepcopy(de_parallel(model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay_max, self.tau, self.updates, self.schedule = float(decay), float(tau), int(updates), schedule

    def decay(self) -> float:
        if self.schedule == "exp-momentum" and self.updates <= 1:
            return 0.0  # the first update copies the model
        return self.decay_max * (1.0 - math.exp(-self.updates / self.tau)) if self.tau > 0 else self.decay_max

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay()
        current = de_parallel(model).state_dict()
        # named_parameters / named_buffers list a shared tensor once (a state dict repeats it per owner);
        # buffers outside the state dict (non-persistent constants) are not averaged
        tensors = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        for k, v in tensors.items():
            if k not in current:
                continue
            if v.dtype.is_floating_point:
                v.mul_(d).add_(current[k].detach().to(v.dtype), alpha=1.0 - d)
            else:
                v.copy_(current[k])

    def state_dict(self) -> dict:
        return {"updates": self.updates, "decay": self.decay_max, "tau": self.tau, "schedule": self.schedule}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.decay_max = float(state.get("decay", self.decay_max))
        self.tau = float(state.get("tau", self.tau))
        self.schedule = str(state.get("schedule", self.schedule))
