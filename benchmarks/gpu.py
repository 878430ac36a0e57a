"""The GPU path, measured: one script for a CUDA machine.

    python benchmarks/gpu.py                                     # rtdetr-l, yolov9-c, rtmdet-s at 640
    python benchmarks/gpu.py --models rtmdet-s.yaml --imgsz 640 --steps 200 --out gpu.md

Sections (each a markdown table, printed and written to ``--out``):

1. **Training step**: time per optimizer step and images/s of the real ``Trainer.train_step`` (data on the
   GPU, synthetic images from rtdet.data.synthetic) for fp32, AMP fp16, AMP bf16 (where the GPU supports
   it) and both AMP modes with ``channels_last``; peak memory (``torch.cuda.max_memory_allocated``).
2. **AMP run**: ``--steps`` steps of AMP fp16 training per model; every loss must be finite.
3. **DDP over NCCL**: one spawned process, ``init_process_group("nccl")`` with world size 1, the Trainer
   under DDP for a few steps (what torchrun starts per GPU).
4. **GPU vs CPU validation**: a tiny model briefly trained on the GPU, validated on the GPU and on the
   CPU: the same mAP within ``--map-tol``.
5. **Inference latency**: the fused model in fp32 and fp16 on the GPU, and its ONNX export in ONNX
   Runtime (CUDA provider where installed, else the CPU provider, and the table says which).
6. **Ultralytics side by side**, where ``ultralytics`` is importable: the same YAMLs' fused forward
   latency in its implementation.

On a machine without CUDA it exits with status 2 and one line saying so.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = ["rtdetr-l.yaml", "yolov9-c.yaml", "rtmdet-s.yaml"]
MODES = [("fp32", False, False), ("AMP fp16", "fp16", False), ("AMP bf16", "bf16", False),
         ("AMP fp16, channels_last", "fp16", True), ("AMP bf16, channels_last", "bf16", True)]
TINY_MODEL = "yolov9-demo.yaml"  # a few GPU seconds to a mAP worth comparing
# Where it runs. Only --cpu-smoke changes them: every section's code then runs on the CPU with gloo, so
# that the script is tested on a machine without a GPU (tests/benchmarks); its figures mean nothing there.
DEVICE, TRAIN_DEVICE, BACKEND = "cuda:0", "0", "nccl"


class UsageError(ValueError):
    """A bad argument or a machine the script cannot run on (exit 2, one line)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="rtdet's GPU path measured: training precision modes, AMP stability, "
                                            "DDP/NCCL, GPU vs CPU validation, inference latency")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model YAMLs")
    p.add_argument("--imgsz", type=int, default=640, help="training and inference size (multiple of 32)")
    p.add_argument("--steps", type=int, default=200, help="steps of the AMP stability run")
    p.add_argument("--batch", type=int, default=8, help="training batch per step")
    p.add_argument("--timed-steps", type=int, default=20, help="timed training steps per mode (after 5 warm-up)")
    p.add_argument("--map-tol", type=float, default=0.01, help="largest GPU vs CPU mAP50-95 difference")
    p.add_argument("--tiny-model", default=TINY_MODEL, help="the model of the DDP and GPU-vs-CPU sections")
    p.add_argument("--tiny-steps", type=int, default=150, help="training steps before the GPU vs CPU mAP")
    p.add_argument("--tiny-imgsz", type=int, default=256, help="image size of the DDP and GPU-vs-CPU sections")
    p.add_argument("--cpu-smoke", action="store_true", help="run every section on the CPU (gloo) to test this "
                   "script without a GPU; the figures are meaningless")
    p.add_argument("--out", type=Path, help="also write the report to this markdown file")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """UsageError naming the argument, the value and what is expected."""
    if not args.models:
        raise UsageError("--models is empty: give model YAMLs, e.g. --models rtdetr-l.yaml,yolov9-c.yaml")
    for name in ("imgsz", "tiny_imgsz"):
        size = getattr(args, name)
        if size < 32 or size % 32:
            raise UsageError(f"--{name.replace('_', '-')} {size}: expected a multiple of 32 (the largest stride), "
                             f"e.g. 640")
    for name, low in (("steps", 1), ("batch", 1), ("timed_steps", 1), ("tiny_steps", 1)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected an integer >= {low}")
    if not 0 < args.map_tol < 1:
        raise UsageError(f"--map-tol {args.map_tol}: expected a number in (0, 1), e.g. 0.01")
    if args.out is not None and not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: the folder {args.out.parent} does not exist")
    from rtdet.nn.builder import resolve_model_path

    for m in [*args.models, args.tiny_model]:
        try:
            resolve_model_path(m)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--models {m}: {e}") from None


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"benchmarks/gpu.py needs a CUDA GPU, and torch {torch.__version__} sees none here "
                         f"(torch.cuda.is_available() is False); run it on a CUDA machine")


# ---------------------------------------------------------------------------------- helpers
def synthetic_data(root: Path, imgsz: int, n_train: int = 64, n_val: int = 32) -> Path:
    from rtdet.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(root, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=0, n_classes=4)


def make_trainer(model: str, data: Path, args, project: Path, **settings):
    from rtdet.engine.trainer import Trainer

    base = {"model": model, "data": str(data), "imgsz": args.imgsz, "batch": args.batch, "epochs": 1,
            "workers": 0, "device": TRAIN_DEVICE, "project": str(project), "val": False, "plots": False,
            "verbose": False, "exist_ok": True, "train_pipeline": "plain"}
    trainer = Trainer({**base, **settings})
    trainer.setup()
    return trainer


def batches(trainer):
    """The trainer's loader, cycled forever."""
    while True:
        yield from trainer.train_loader


def _sync() -> None:
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _sync_ms(t0: float) -> float:
    _sync()
    return 1000 * (time.perf_counter() - t0)


def _peak_memory(reset: bool = False) -> float:
    """GiB of tensors allocated at the peak since the last reset (torch.cuda.max_memory_allocated)."""
    import torch

    if not DEVICE.startswith("cuda"):
        return float("nan")
    if reset:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated() / 2**30


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_bf16_supported() if DEVICE.startswith("cuda") else True


# ---------------------------------------------------------------------------------- 1. training modes
def training_modes(model: str, data: Path, args, project: Path) -> list[str]:

    rows = []
    for label, amp, cl in MODES:
        if amp == "bf16" and not _bf16_supported():
            rows.append(f"| {model} | {label} | - | - | - | not supported by this GPU |")
            continue
        _peak_memory(reset=True)
        trainer = make_trainer(model, data, args, project, amp=amp, channels_last=cl, name=f"modes-{label}")
        it, times = batches(trainer), []
        for k in range(5 + args.timed_steps):
            batch = next(it)
            _sync()
            t0 = time.perf_counter()
            trainer.train_step(batch)
            if k >= 5:
                times.append(_sync_ms(t0))
        ms = statistics.median(times)
        peak = _peak_memory()
        rows.append(f"| {model} | {label} | {ms:.1f} | {args.batch * 1000 / ms:.1f} | {peak:.2f} | |")
        del trainer, it
    return rows


# ---------------------------------------------------------------------------------- 2. AMP stability
def amp_run(model: str, data: Path, args, project: Path) -> str:
    from rtdet.engine.errors import NonFiniteLossError

    trainer = make_trainer(model, data, args, project, amp="fp16", name="amp-run", warmup_iters=20)
    it, losses = batches(trainer), []
    try:
        for _ in range(args.steps):
            losses.append(trainer.train_step(next(it))[0])
    except NonFiniteLossError as e:
        return f"| {model} | {len(losses) + 1} | - | - | **non-finite loss**: {str(e)[:120]} |"
    ok = all(math.isfinite(v) for v in losses)
    return f"| {model} | {len(losses)} | {losses[0]:.3f} | {losses[-1]:.3f} | {'all finite' if ok else 'NOT finite'} |"


# ---------------------------------------------------------------------------------- 3. DDP over NCCL
def _ddp_worker(rank: int, model: str, data: str, imgsz: int, project: str, result: str, where: tuple) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": os.environ.get("MASTER_PORT", "29533")})
    from rtdet.engine.trainer import Trainer

    backend, train_device = where  # spawned processes do not see the parent's module globals changed
    dist.init_process_group(backend, rank=0, world_size=1)
    trainer = Trainer({"model": model, "data": data, "imgsz": imgsz, "batch": 4, "epochs": 1, "workers": 0,
                       "device": train_device, "project": project, "val": False, "plots": False, "verbose": False})
    trainer.rank, trainer.local_rank, trainer.world = 0, 0, 1
    trainer.setup()
    ids = [int(train_device)] if train_device != "cpu" else None
    trainer.model = torch.nn.parallel.DistributedDataParallel(trainer.model, device_ids=ids)
    t0, losses = time.perf_counter(), []
    for batch, _ in zip(batches(trainer), range(10)):
        losses.append(trainer.train_step(batch)[0])
    backend = dist.get_backend()
    dist.destroy_process_group()
    Path(result).write_text(f"{backend} {time.perf_counter() - t0:.2f} {' '.join(f'{v:.4f}' for v in losses)}")


def ddp_nccl(data: Path, args, project: Path) -> str:
    import torch.multiprocessing as mp

    result = project / "ddp.txt"
    where = (BACKEND, TRAIN_DEVICE)
    mp.spawn(_ddp_worker, nprocs=1,
             args=(args.tiny_model, str(data), args.tiny_imgsz, str(project), str(result), where))
    backend, seconds, *losses = result.read_text().split()
    finite = all(math.isfinite(float(v)) for v in losses)
    return (f"DDP over {backend}, world size 1 (one spawned process): {len(losses)} steps of {args.tiny_model} in "
            f"{float(seconds):.1f} s, losses {'all finite' if finite else 'NOT finite'} "
            f"({losses[0]} -> {losses[-1]})")


# ---------------------------------------------------------------------------------- 4. GPU vs CPU mAP
def gpu_vs_cpu_validation(data: Path, args, project: Path) -> str:
    import copy

    from rtdet.engine import loaders
    from rtdet.engine.validator import Validator

    trainer = make_trainer(args.tiny_model, data, args, project, name="tiny", amp="fp16", lr0=0.01, nbs=0,
                           warmup_iters=20, imgsz=args.tiny_imgsz)
    for batch, _ in zip(batches(trainer), range(args.tiny_steps)):
        trainer.train_step(batch)
    model = (trainer.ema.model if trainer.ema is not None else trainer.model).eval()
    val_args = {**trainer.args, "imgsz": args.tiny_imgsz, "half": False}
    maps = {}
    for device in (DEVICE, "cpu"):
        m = copy.deepcopy(model).to(device)
        loader = loaders.val_loader(trainer.data, val_args, 8)
        maps[device] = float(Validator(args=val_args).run(m, loader)["mAP50-95"])  # on the model's device
    diff = abs(maps[DEVICE] - maps["cpu"])
    verdict = "same within tolerance" if diff <= args.map_tol else "**DIFFERENT**"
    return (f"{args.tiny_model} after {args.tiny_steps} AMP steps on the GPU: mAP50-95 {maps[DEVICE]:.4f} (GPU) vs "
            f"{maps['cpu']:.4f} (CPU), difference {diff:.4f} (tolerance {args.map_tol}): {verdict}")


# ---------------------------------------------------------------------------------- 5-6. latency
def _time(fn, x, runs: int = 50) -> float:
    import torch

    with torch.inference_mode():
        for _ in range(10):
            fn(x)
        times = []
        for _ in range(runs):
            _sync()
            t0 = time.perf_counter()
            fn(x)
            times.append(_sync_ms(t0))
    return statistics.median(times)


def inference_latency(model_name: str, args, project: Path) -> list[str]:
    import copy

    import onnxruntime as ort
    import torch

    from rtdet import build_model
    from rtdet.deploy.graph import export_onnx
    from rtdet.deploy.runtime import load_onnx_model

    model = build_model(model_name).eval()
    x = torch.rand(1, 3, args.imgsz, args.imgsz, device=DEVICE)
    fused = copy.deepcopy(model).fuse().to(DEVICE)
    rows = [f"| {model_name} | rtdet fused, fp32 | {_time(fused, x):.2f} |"]
    if DEVICE.startswith("cuda"):
        rows.append(f"| {model_name} | rtdet fused, fp16 | {_time(copy.deepcopy(fused).half(), x.half()):.2f} |")
    path = export_onnx(model, project / f"{Path(model_name).stem}.onnx", imgsz=args.imgsz, batch=1)
    cuda_ep = DEVICE.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
    provider = "CUDA provider" if cuda_ep else "CPU provider (no CUDA provider here)"
    runtime = load_onnx_model(path, device=DEVICE if cuda_ep else "cpu")
    xin = x if cuda_ep else x.cpu()
    rows.append(f"| {model_name} | ONNX Runtime, {provider} | {_time(runtime, xin, 20):.2f} |")
    rows += ultralytics_latency(model_name, x)
    return rows


def ultralytics_latency(model_name: str, x) -> list[str]:
    """The Ultralytics implementation of the same YAML, fused, fp32 and fp16 (where it is installed)."""
    try:
        from ultralytics.nn.tasks import DetectionModel, RTDETRDetectionModel
    except ImportError:
        return []
    name = {"rtdetr-l.yaml": "rtdetr-l.yaml", "yolov9-c.yaml": "yolov9c.yaml"}.get(model_name)
    if name is None:
        return [f"| {model_name} | Ultralytics | not in Ultralytics |"]
    cls = RTDETRDetectionModel if name.startswith("rtdetr") else DetectionModel
    ref = cls(name, verbose=False).eval().fuse(verbose=False).to(x.device)
    return [f"| {model_name} | Ultralytics fused, fp32 | {_time(ref, x):.2f} |",
            f"| {model_name} | Ultralytics fused, fp16 | {_time(ref.half(), x.half()):.2f} |"]


# ---------------------------------------------------------------------------------- the report
def report(args) -> str:
    import torch

    card = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else "no GPU (CPU smoke run)"
    out = [f"## GPU path: {card}, torch {torch.__version__}, CUDA {torch.version.cuda}",
           "", f"imgsz {args.imgsz}, batch {args.batch}; medians of {args.timed_steps} steps after 5 warm-up", "",
           "| model | mode | ms / step | images/s | peak memory (GiB) | note |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="rtdet-gpu-") as tmp:
        tmp = Path(tmp)
        data = synthetic_data(tmp / "data", args.imgsz)
        for m in args.models:
            out += training_modes(m, data, args, tmp / "runs")
        out += ["", f"AMP fp16 stability, {args.steps} steps:", "", "| model | steps | first loss | last loss | "
                "verdict |", "|---|---|---|---|---|"]
        out += [amp_run(m, data, args, tmp / "runs") for m in args.models]
        small = synthetic_data(tmp / "small", args.tiny_imgsz, n_train=128, n_val=32)
        out += ["", ddp_nccl(small, args, tmp / "ddp"), "", gpu_vs_cpu_validation(small, args, tmp / "runs"), ""]
        out += ["| model | runtime | latency ms (batch 1, median) |", "|---|---|---|"]
        for m in args.models:
            out += inference_latency(m, args, tmp)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    global DEVICE, TRAIN_DEVICE, BACKEND
    try:
        args = parse_args(argv)
        if args.cpu_smoke:
            DEVICE, TRAIN_DEVICE, BACKEND = "cpu", "cpu", "gloo"
        else:
            require_cuda()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = report(args)
    print(text)
    if args.out:
        from rtdet.utils.checkpoint import atomic_write_bytes

        atomic_write_bytes(args.out, (text + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
