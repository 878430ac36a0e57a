"""Benchmark: parameters, GFLOPs, latency, images/s, peak memory and mAP of several models side by side.

    rows = Benchmark({"model": "rtdetr-l.yaml,rtdetr-l-dysample.yaml", "formats": "pytorch,onnx"})()
    # rtdet benchmark model=a.yaml,b.yaml formats=pytorch,onnx imgsz=640 batch=1 threads=2 data=coco128.yaml

Per model and format (``pytorch``: the fused model, NHWC on the CPU, as ``predict`` runs it; ``onnx``: its
export in ONNX Runtime, or a given ``.onnx``):

* parameters (as built, the count papers quote) and GFLOPs = 2 x multiply-accumulates of one forward pass
  at ``imgsz`` (``torch.utils.flop_counter``; an ONNX file reports the count recorded at export);
* latency of model + post-processing for one batch: median and 90th percentile over ``runs`` timed runs
  after ``warmup`` untimed ones. The runs are **interleaved**: round r times every (model, format) once,
  in an order rotated by r, so a noisy neighbour or a clock change hits every row alike;
* images/s = batch / median latency;
* peak memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during the row's warm-up; on the
  CPU the growth of the resident set of a fresh process that loads only that model and runs it (the
  memory the model and its inference need, allocator included);
* with ``data=``: mAP50-95 / mAP50 on its val split through the validator (same letterbox, same metrics
  for both backends).

The table is printed and written as ``benchmark.csv`` and ``benchmark.md`` to ``runs/benchmark/<name>``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rtdet.data import load_data_config
from rtdet.deploy.graph import export_onnx
from rtdet.deploy.parity import check_image
from rtdet.deploy.runtime import is_onnx, load_onnx_model
from rtdet.engine import loaders
from rtdet.engine.exporter import check_source
from rtdet.engine.onnx_checks import check_export_settings
from rtdet.engine.predictor import prepare_for_inference
from rtdet.engine.report import markdown_table, write_csv
from rtdet.engine.rundir import RunFolder
from rtdet.engine.settings import SettingsError, check_imgsz, resolve_settings
from rtdet.engine.setup import device_for
from rtdet.engine.validator import Validator
from rtdet.io.load import load_model
from rtdet.nn.model import count_parameters
from rtdet.utils.checkpoint import atomic_write_text
from rtdet.utils.logging import LOGGER, set_verbosity

__all__ = ["FORMATS", "Benchmark", "BenchmarkRow", "percentile", "split_models", "unique_labels"]

FORMATS = ("pytorch", "onnx")
COLUMNS = ("model", "format", "params", "gflops", "latency_ms", "p90_ms", "images_per_s", "peak_mem_mb",
           "mAP50-95", "mAP50")


@dataclass
class BenchmarkRow:
    model: str
    format: str
    params: int
    gflops: float | None
    latency_ms: float = float("nan")  # median over the timed runs, one batch
    p90_ms: float = float("nan")
    images_per_s: float = float("nan")
    peak_mem_mb: float | None = None
    mAP50_95: float | str | None = None  # "n/a": data= has no labelled boxes
    mAP50: float | str | None = None
    times_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("times_ms")
        d["mAP50-95"] = d.pop("mAP50_95")
        return d


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def split_models(value) -> list[str]:
    """``a.yaml,b.yaml`` or ``[a.yaml, b.yaml]`` -> ["a.yaml", "b.yaml"]."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def unique_labels(specs: list[str]) -> list[str]:
    """A row name per model: its file name, or as many trailing path parts as tell it apart from the others
    (``a/best.pt``, ``b/best.pt``); the same path given twice is numbered (``best.pt #2``)."""
    parts = [Path(s).parts or (str(s),) for s in specs]
    labels: list[str] = []
    for i, p in enumerate(parts):
        k = 1
        while k < len(p) and any(q[-k:] == p[-k:] for j, q in enumerate(parts) if j != i and q != p):
            k += 1
        label = "/".join(p[-k:])
        n = sum(1 for other in labels if other == label or other.startswith(f"{label} #"))
        labels.append(f"{label} #{n + 1}" if n else label)
    return labels


def _file_name(label: str, taken: set[str]) -> str:
    """A file name for a row's export, from its label (``a/best.pt`` -> ``a-best``), never one taken."""
    path = Path(label.split(" #")[0])
    stem = "-".join((*path.parent.parts, path.stem)).strip("-./") or "model"
    name, n = stem, 2
    while name in taken:
        name, n = f"{stem}-{n}", n + 1
    taken.add(name)
    return name


# ---------------------------------------------------------------------------------- one row's runner
@dataclass
class _Entry:
    label: str
    fmt: str
    model: object
    run: Callable[[], None]
    row: BenchmarkRow
    spec: dict  # how a fresh process rebuilds it (peak memory)


def _runner(model, x: torch.Tensor, conf: float, iou: float, max_det: int) -> Callable[[], None]:
    """One timed unit: forward + post-processing of the batch ``x`` (synchronised on CUDA)."""
    img_shape = tuple(x.shape[2:])
    cuda = x.device.type == "cuda"

    def run() -> None:
        with torch.inference_mode():
            out = model(x)
            model.head.postprocess(out, img_shape, conf=conf, iou=iou, max_det=max_det)
        if cuda:
            torch.cuda.synchronize(x.device)

    return run


def _nms_settings(args: dict) -> tuple[float, float, int]:
    """(conf, iou, max_det) of resolved settings: what every timed post-processing keeps."""
    return float(args["conf"]), float(args["iou"]), int(args["max_det"])


def _pytorch_for_inference(model, device: torch.device, half: bool):

    model = prepare_for_inference(model.to(device).eval(), True, device.type == "cpu")
    return model.half() if half and device.type == "cuda" else model


# ---------------------------------------------------------------------------------- the benchmark
class Benchmark:
    """``rtdet benchmark`` (see the module docstring); ``Benchmark(overrides)()`` returns the rows."""

    task = "benchmark"

    def __init__(self, overrides: dict | None = None, memory: bool = True, labels: list[str] | None = None):
        self.overrides = dict(overrides or {})
        self.memory = memory
        self.labels = labels  # row names per model (default: the file name)
        self.rows: list[BenchmarkRow] = []
        self.save_dir: Path | None = None
        self.header: dict = {}

    def __call__(self) -> list[BenchmarkRow]:

        user = dict(self.overrides)
        specs = split_models(user.pop("models", None)) or split_models(user.pop("model", None))
        user.pop("model", None)
        if not specs:
            raise SettingsError("benchmark needs model=a.yaml[,b.yaml,...] (YAMLs, checkpoints or .onnx files)")
        args = resolve_settings(user, verb=self.task)
        set_verbosity(bool(args["verbose"]))
        formats = split_models(args.get("formats") or "pytorch")
        bad = [f for f in formats if f not in FORMATS]
        if bad:
            raise SettingsError(f"formats={','.join(formats)}: unknown format {bad[0]!r}; "
                                f"choose from {', '.join(FORMATS)}")
        runs, warmup = int(args["runs"]), int(args["warmup"])
        if runs < 1 or warmup < 0:
            raise SettingsError(f"runs={runs}, warmup={warmup}: need runs >= 1 and warmup >= 0")
        self.args = args
        self.device = device_for(args)
        self.batch = int(user.get("batch") or 1)  # the training default (16) is not a latency default
        self.imgsz = int(args["imgsz"])
        threads = args.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        # Settings are checked; the folder is claimed now and removed again if anything below fails.
        with RunFolder(args["project"], self.task, args.get("name"), bool(args["exist_ok"])) as folder:
            self.save_dir = folder.path
            entries = self._entries(specs, formats)
            self._time(entries, runs, warmup)
            if self.memory:
                self._peak_memory(entries, warmup)
            if args.get("data"):
                self._map(entries, args["data"])
            self.rows = [e.row for e in entries]
            self.header = self._header(runs, warmup)
            self._write()
        return self.rows

    # ------------------------------------------------------------------ building the rows
    def _entries(self, specs: list[str], formats: list[str]) -> list[_Entry]:

        args = self.args
        names = None
        if args.get("data"):

            names = list(load_data_config(args["data"]).names)
        conf, iou, max_det = _nms_settings(args)
        image = check_source(args.get("source"), args.get("data"))
        x = check_image(image, (self.imgsz, self.imgsz), self.batch)
        threads = int(args["threads"]) if args.get("threads") else None
        entries, labels, files = [], self.labels or unique_labels(specs), set()
        for i, spec in enumerate(specs):
            label = labels[i]
            if is_onnx(spec):
                model = load_onnx_model(spec, self.device, threads, args["ort_opt_level"])
                check_export_settings(model.meta, spec)
                row = BenchmarkRow(label, "onnx", int(model.meta.get("params") or 0), model.meta.get("gflops"))
                entries.append(_Entry(label, "onnx", model, _runner(model, x.to(self.device), conf, iou, max_det), row,
                                      {"onnx": str(spec)}))
                continue
            from_yaml = not str(spec).lower().endswith((".pt", ".pth"))
            model = load_model(spec, nc=len(names) if names and from_yaml else None,
                               names=names if from_yaml else None, scale=args.get("scale")).model
            if check_imgsz(args, model) != self.imgsz:  # rounded up to this model's stride, as every verb does
                self.imgsz = int(args["imgsz"])
                x = check_image(image, (self.imgsz, self.imgsz), self.batch)
            params, gflops = count_parameters(model), float(model.flops(self.imgsz))
            for fmt in formats:
                if fmt == "pytorch":
                    net = _pytorch_for_inference(model, self.device, bool(args["half"]))
                    xin = x.to(self.device, torch.float16 if args["half"] and self.device.type == "cuda" else None)
                    entries.append(_Entry(label, fmt, net, _runner(net, xin, conf, iou, max_det),
                                          BenchmarkRow(label, fmt, params, gflops), {"model": spec, "nc": model.nc}))
                else:
                    file = self.save_dir / "onnx" / f"{_file_name(label, files)}.onnx"  # one file per row
                    half = bool(args["half"]) and self.device.type == "cuda"
                    export_onnx(model, file, imgsz=self.imgsz, batch=self.batch, half=half, opset=int(args["opset"]),
                                device=self.device, count_flops=False)
                    runtime = load_onnx_model(file, self.device, threads, args["ort_opt_level"])
                    entries.append(_Entry(label, fmt, runtime, _runner(runtime, x.to(self.device), conf, iou, max_det),
                                          BenchmarkRow(label, fmt, params, gflops), {"onnx": str(file)}))
        return entries

    # ------------------------------------------------------------------ timing
    def _time(self, entries: list[_Entry], runs: int, warmup: int) -> None:
        for e in entries:
            for _ in range(warmup):
                e.run()
        LOGGER.info(f"Timing {len(entries)} model/format pairs: {runs} interleaved rounds after {warmup} warm-up runs")
        for r in range(runs):
            k = r % len(entries)
            for e in entries[k:] + entries[:k]:  # rotated order: no row always runs first or after the same one
                t0 = time.perf_counter()
                e.run()
                e.row.times_ms.append(1000 * (time.perf_counter() - t0))
        for e in entries:
            t = e.row.times_ms
            e.row.latency_ms = float(statistics.median(t))
            e.row.p90_ms = percentile(t, 90)
            e.row.images_per_s = 1000 * self.batch / e.row.latency_ms

    def _peak_memory(self, entries: list[_Entry], warmup: int) -> None:
        if self.device.type == "cuda":
            for e in entries:
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                e.run()
                e.row.peak_mem_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        ctx = mp.get_context("spawn")
        for e in entries:
            job = {**e.spec, "imgsz": self.imgsz, "batch": self.batch, "runs": max(warmup, 1),
                   "threads": self.args.get("threads"), "opt_level": self.args["ort_opt_level"],
                   "format": e.fmt, "nms": _nms_settings(self.args)}
            with ctx.Pool(1) as pool:
                e.row.peak_mem_mb = pool.apply(peak_rss_growth_mb, (job,))

    def _map(self, entries: list[_Entry], data) -> None:

        cfg = loaders.load_data(data)
        for e in entries:
            inherited = e.model.inherited_settings() if hasattr(e.model, "inherited_settings") else {}
            args = resolve_settings({**{k: v for k, v in inherited.items() if k != "imgsz"}, "imgsz": self.imgsz,
                                     "workers": self.args["workers"], "verbose": False}, family=e.model.head.family,
                                    verb="val")
            validator = Validator(args=args)
            metrics = validator.run(e.model, loaders.val_loader(cfg, args, max(self.batch, 1)))
            e.row.mAP50_95, e.row.mAP50 = _available(metrics["mAP50-95"]), _available(metrics["mAP50"])

    # ------------------------------------------------------------------ reporting
    def _header(self, runs: int, warmup: int) -> dict:
        import onnxruntime

        return {"device": str(self.device), "cpu": platform.processor() or platform.machine(),
                "torch_threads": torch.get_num_threads(), "ort_threads": self.args.get("threads") or "default",
                "ort_opt_level": self.args["ort_opt_level"], "imgsz": self.imgsz, "batch": self.batch,
                "runs": runs, "warmup": warmup, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}

    def _write(self) -> None:

        rows = [r.as_dict() for r in self.rows]
        h = self.header
        note = (f"device {h['device']}, {h['torch_threads']} torch threads, ONNX Runtime threads {h['ort_threads']}, "
                f"graph optimisation {h['ort_opt_level']}; imgsz {h['imgsz']}, batch {h['batch']}; latency = model + "
                f"post-processing per batch, median / p90 of {h['runs']} interleaved runs after {h['warmup']} warm-up; "
                f"GFLOPs = 2 x multiply-accumulates at imgsz; torch {h['torch']}, onnxruntime {h['onnxruntime']}")
        table = markdown_table(rows, COLUMNS)
        write_csv(rows, COLUMNS, self.save_dir / "benchmark.csv")

        atomic_write_text(self.save_dir / "benchmark.md", f"{table}\n\n{note}\n")
        atomic_write_text(self.save_dir / "benchmark.json", json.dumps({"header": h, "rows": rows}, indent=1))
        if self.args.get("verbose", True):
            print(table)
            print(note)
        LOGGER.info(f"Benchmark saved to {self.save_dir} (benchmark.csv, benchmark.md)")


def _available(value: float | None) -> float | str:
    """A metric for the table: "n/a" when the validator could not measure it (a val split without labels)."""
    return "n/a" if value is None else float(value)


# ---------------------------------------------------------------------------------- peak memory (child)
def _status_mb(field: str) -> float:
    """A VmRSS / VmHWM line of /proc/self/status, in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"/proc/self/status has no {field}")


def peak_rss_growth_mb(job: dict) -> float | None:
    """In a fresh process: how far the resident set grows (MB) from just before the model is loaded to
    its peak over ``runs`` inferences. The peak is reset first (``/proc/self/clear_refs``), so imports do
    not count. None where that is not available (not Linux)."""
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))

    x = check_image(None, (job["imgsz"], job["imgsz"]), job["batch"])
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the high-water mark to the current resident set
        base = _status_mb("VmRSS")
    except OSError:
        return None
    if job.get("onnx"):
        model = load_onnx_model(job["onnx"], "cpu", job.get("threads"), job["opt_level"])
    else:
        model = _pytorch_for_inference(load_model(job["model"], nc=job.get("nc")).model, torch.device("cpu"), False)

    run = _runner(model, x, *(job.get("nms") or _nms_settings(resolve_settings({}, verb="benchmark"))))
    for _ in range(job["runs"]):
        run()
    return max(_status_mb("VmHWM") - base, 0.0)
