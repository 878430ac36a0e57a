"""``device=0,1`` outside torchrun: the training command is run again under torchrun, one process per GPU.

    relaunch_under_torchrun({"model": "rtdetr-l.yaml", "device": "0,1", ...}, "train", 2)
    # -> python -m torch.distributed.run --standalone --nproc_per_node=2 -m rtdet train model=rtdetr-l.yaml ...

Inside torchrun (``RANK`` / ``WORLD_SIZE`` set) the trainer joins the process group itself; multi-node runs
start torchrun directly (docs/engine.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from rtdet.engine.rundir import run_dir
from rtdet.utils.logging import LOGGER

__all__ = ["cli_value", "relaunch_under_torchrun"]


def cli_value(v: Any) -> str:
    """A setting's value as the command line writes it (``key=<this>``)."""
    if v is None:
        return ""
    if isinstance(v, str | Path):
        return str(v)
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def relaunch_under_torchrun(overrides: dict, task: str, n_devices: int) -> dict:
    """Run ``rtdet <task>`` with ``overrides`` under torchrun, one process per device; returns {} (the
    processes write the run). An in-memory model travels as a checkpoint in the project folder."""
    args = dict(overrides)
    model = args.get("model")
    if isinstance(model, nn.Module):
        path = run_dir(args.get("project") or "runs", task, "ddp-init", exist_ok=True) / "init.pt"
        model.save(path)
        args["model"] = str(path)
    tokens = [f"{k}={cli_value(v)}" for k, v in args.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_devices}",
           "-m", "rtdet", task, *tokens]
    LOGGER.info(f"DDP: {' '.join(cmd)}")
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return {}
