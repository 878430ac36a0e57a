"""``rtdet compare``: a measured ablation -- train every variant alike over seeds, validate, time, test.

    rtdet compare models=rtdetr-l.yaml,rtdetr-l-dysample.yaml data=coco128.yaml epochs=10 seeds=3
    Compare({"models": "a.yaml,b.yaml", "data": "d.yaml", "epochs": 10, "seeds": 3})()

Every variant is trained with the same recipe, data, budget and seeds (any ``rtdet train`` setting given
here applies to all of them); a variant given as a checkpoint (``.pt``, or a glob of one per seed) is
taken as a finished run. Each run is an ordinary train run in ``<project>/compare/<name>/train/
<variant>-s<seed>`` (its own weights, results.csv, resumable with ``rtdet train resume=...``). Then each
run's best weights are validated, the variants are timed side by side (:mod:`rtdet.engine.benchmark`,
interleaved), and per variant the report gives: params, GFLOPs, latency, mAP50-95 / mAP50 as mean +- std
over seeds, the difference to the first model (the baseline) with its 95 % confidence interval and a
verdict from a paired t-test over seeds (:mod:`rtdet.engine.stats`), and per-class AP deltas.

Outputs in the comparison folder: ``compare.md``, ``compare.csv``, ``per_class.csv``, ``compare.json``,
``pareto.png`` (latency vs mAP, error bars = std over seeds), ``curves.png`` (validation mAP per epoch of
all variants) and ``report.html`` (all of it in one self-contained file).

``pretrained=x.pt`` gives every variant the same start: each run transplants it by structure
(:mod:`rtdet.io.transplant`, the run's ``transplant.md``), and the table gains a column with the share of each
variant's parameters that came from it, so a reader sees at once whether the starts differ.

Interrupting and re-running the same command resumes: a finished run (``done.json``) and its validation
(``eval.json``) are reused, an interrupted one continues from its ``last.pt``. ``devices=0,1`` trains
several runs at once, one per device, each in its own ``rtdet train`` process.
"""

from __future__ import annotations

import csv
import glob
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rtdet.engine.stats import mean_std, paired_t_test
from rtdet.utils.checkpoint import atomic_write_text
from rtdet.utils.logging import LOGGER

__all__ = ["COMPARE_KEYS", "Compare", "Run", "Variant", "parse_seeds"]

# Settings that steer the comparison itself; every other setting is a training setting of each run.
COMPARE_KEYS = ("model", "models", "seeds", "devices", "formats", "runs", "warmup", "threads", "ort_opt_level",
                "project", "name", "exist_ok")
METRICS = ("mAP50-95", "mAP50")


def parse_seeds(value) -> list[int]:
    """``3`` -> [0, 1, 2]; ``[0, 7]`` or ``"0,7"`` -> [0, 7]."""
    from rtdet.engine.settings import SettingsError

    if isinstance(value, bool):
        raise SettingsError(f"seeds={value!r}: expected a count (3) or a list of seeds ([0, 7])")
    if isinstance(value, int):
        if value < 1:
            raise SettingsError(f"seeds={value}: expected at least one seed")
        return list(range(value))
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    try:
        seeds = [int(s) for s in items]
    except (TypeError, ValueError):
        raise SettingsError(f"seeds={value!r}: expected a count (3) or a list of integer seeds ([0, 7])") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SettingsError(f"seeds={value!r}: expected distinct seeds")
    return seeds


@dataclass
class Run:
    """One training run of one variant with one seed (or a given checkpoint)."""

    variant: str
    seed: int | None
    dir: Path | None  # None for a given checkpoint
    weights: Path | None = None
    metrics: dict = field(default_factory=dict)
    per_class: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.variant}-s{self.seed}"

    @property
    def last(self) -> Path:
        return self.dir / "weights" / "last.pt"

    @property
    def done(self) -> bool:
        return self.dir is None or (self.dir / "done.json").is_file()


@dataclass
class Variant:
    label: str
    spec: str
    runs: list[Run] = field(default_factory=list)
    bench: dict = field(default_factory=dict)  # {format: BenchmarkRow}


class Compare:
    """``rtdet compare`` (see the module docstring). ``callbacks`` ({event: fn(trainer)}) are added to every
    in-process training run (the tests interrupt one with them)."""

    task = "compare"

    def __init__(self, overrides: dict | None = None, callbacks: dict[str, Callable] | None = None):
        self.overrides = dict(overrides or {})
        self.callbacks = dict(callbacks or {})
        self.variants: list[Variant] = []
        self.save_dir: Path | None = None
        self.trained: list[str] = []  # runs this call trained (or resumed)
        self.resumed: list[str] = []  # the interrupted runs among them, continued from their last.pt
        self.summary: dict = {}

    # ------------------------------------------------------------------ entry
    def __call__(self) -> dict:
        self._setup()
        todo = [r for v in self.variants for r in v.runs if not r.done]
        LOGGER.info(f"compare: {len(self.variants)} variants x {len(self.seeds)} seeds in {self.save_dir}; "
                    f"{len(todo)} run(s) to train, {sum(len(v.runs) for v in self.variants) - len(todo)} reused")
        if len(self.devices) > 1:
            self._train_parallel(todo)
        else:
            for run in todo:
                self._train_in_process(run)
        self._evaluate()
        self._time()
        self.summary = self._summarise()
        self._write()
        return self.summary

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from rtdet.engine.benchmark import split_models
        from rtdet.engine.settings import SettingsError, check_device, check_keys, resolve_settings
        from rtdet.utils.logging import set_verbosity

        user = dict(self.overrides)
        check_keys({k: v for k, v in user.items() if k not in ("model", "models")}, "compare")
        specs = split_models(user.get("models")) or split_models(user.get("model"))
        if len(specs) < 2:
            raise SettingsError("compare needs models=baseline.yaml,variant.yaml[,...] (two or more; the first is "
                                "the baseline)")
        args = resolve_settings({k: v for k, v in user.items() if k not in ("model", "models")}, verb="compare")
        set_verbosity(bool(args["verbose"]))
        if not args.get("data"):
            raise SettingsError("compare needs data=<dataset YAML>: every variant is trained and validated on it")
        self.args = args
        self.seeds = parse_seeds(args.get("seeds") if args.get("seeds") is not None else 3)
        try:
            self.devices = [check_device(d) for d in split_models(args.get("devices"))] or [args.get("device") or ""]
        except ValueError as e:
            raise SettingsError(f"devices={args.get('devices')!r}: {e}") from None
        self.train_args = {k: v for k, v in user.items() if k not in COMPARE_KEYS and k != "seed"}
        root = Path(args["project"] or "runs") / self.task / (args.get("name") or self.task)
        self.save_dir = root
        self._check_plan(root, specs)
        labels = _labels(specs)
        self.variants = []
        for label, spec in zip(labels, specs):
            variant = Variant(label, spec)
            if spec.lower().endswith((".pt", ".pth")):  # finished runs: one checkpoint, or a glob (one per seed)
                files = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
                if not files or not all(Path(f).is_file() for f in files):
                    raise FileNotFoundError(f"compare: {spec} names no checkpoint file")
                variant.runs = [Run(label, i, None, Path(f)) for i, f in enumerate(files)]
            else:
                variant.runs = [Run(label, seed, root / "train" / f"{label}-s{seed}") for seed in self.seeds]
            self.variants.append(variant)

    def _check_plan(self, root: Path, specs: list[str]) -> None:
        """A comparison folder belongs to one set of variants and training settings: re-running the same
        command resumes it; other settings under the same name are refused (nothing is overwritten)."""
        from rtdet.engine.settings import SettingsError
        from rtdet.engine.trainer import _plain

        plan = {"models": specs, "train": _plain(self.train_args)}
        path = root / "plan.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if old != plan:
                changed = sorted(k for k in set(old["train"]) | set(plan["train"])
                                 if old["train"].get(k) != plan["train"].get(k))
                what = "models" if old["models"] != plan["models"] else f"settings {changed}"
                raise SettingsError(f"{root} holds a comparison with other {what}; re-run it with the same "
                                    f"arguments to resume it, or pass name=<new name> for a new comparison")
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(plan, indent=1))

    # ------------------------------------------------------------------ training
    def _run_settings(self, run: Run, device: str) -> dict:
        spec = next(v.spec for v in self.variants if v.label == run.variant)
        return {**self.train_args, "model": spec, "seed": run.seed, "project": str(self.save_dir),
                "name": run.dir.name, "exist_ok": True, **({"device": device} if device else {})}

    def _resume_settings(self, run: Run, device: str) -> dict | None:
        """``resume=last.pt`` settings for an interrupted run; None when its last.pt already finished."""
        from rtdet.utils.checkpoint import load_checkpoint

        ckpt = load_checkpoint(run.last)
        epochs = int((ckpt.get("args") or {}).get("epochs", 0))
        if not ckpt.get("step_in_epoch") and int(ckpt.get("epoch", -1)) + 1 >= epochs:
            return None
        keep = {k: self.train_args[k] for k in ("workers", "verbose", "plots") if k in self.train_args}
        return {"resume": str(run.last), **keep, **({"device": device} if device else {})}

    def _train_in_process(self, run: Run) -> None:
        from rtdet.engine.trainer import Trainer

        device = self.devices[0]
        settings = self._run_settings(run, device)
        if run.last.is_file():
            settings = self._resume_settings(run, device)
            if settings is None:
                self._mark_done(run)
                return
        LOGGER.info(f"compare: training {run.name}" + (" (resuming)" if "resume" in settings else ""))
        if "resume" in settings:
            self.resumed.append(run.name)
        trainer = Trainer(settings)
        for event, fn in self.callbacks.items():
            trainer.add_callback(event, fn)
        self.trained.append(run.name)
        trainer.train()
        self._mark_done(run)

    def _train_parallel(self, runs: list[Run]) -> None:
        """One ``rtdet train`` process per device at a time, until every run is trained."""
        from rtdet.engine.trainer import _cli_value

        queue = list(runs)
        lock = threading.Lock()
        failures: list[str] = []

        def worker(device: str) -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    run = queue.pop(0)
                settings = self._run_settings(run, device)
                if run.last.is_file():
                    settings = self._resume_settings(run, device)
                    if settings is None:
                        self._mark_done(run)
                        continue
                tokens = [f"{k}={_cli_value(v)}" for k, v in settings.items()]
                if "resume" in settings:
                    with lock:
                        self.resumed.append(run.name)
                LOGGER.info(f"compare: training {run.name} on device {device or 'default'}")
                with lock:
                    self.trained.append(run.name)
                run.dir.mkdir(parents=True, exist_ok=True)
                with (run.dir.parent / f"{run.name}.log").open("w") as log:
                    rc = subprocess.run([sys.executable, "-m", "rtdet", "train", *tokens], stdout=log,
                                        stderr=subprocess.STDOUT).returncode
                if rc == 0:
                    self._mark_done(run)
                else:
                    with lock:
                        failures.append(f"{run.name} (exit {rc}, log {run.dir.parent / f'{run.name}.log'})")

        threads = [threading.Thread(target=worker, args=(d,), daemon=True) for d in self.devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise RuntimeError(f"compare: training failed for {', '.join(failures)}; fix the cause and re-run "
                               f"the same command (finished runs are kept)")

    @staticmethod
    def _mark_done(run: Run) -> None:
        atomic_write_text(run.dir / "done.json", json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S")}))

    # ------------------------------------------------------------------ validation and timing
    def _evaluate(self) -> None:
        from rtdet.engine.validator import Validator

        for variant in self.variants:
            for run in variant.runs:
                if run.dir is not None:
                    best, last = run.dir / "weights" / "best.pt", run.last
                    run.weights = best if best.is_file() else last
                cache = run.dir / "eval.json" if run.dir is not None else None
                if cache is not None and cache.is_file():
                    saved = json.loads(cache.read_text())
                    run.metrics, run.per_class = saved["metrics"], saved["per_class"]
                    continue
                settings = {k: self.args[k] for k in ("data", "device", "workers", "batch", "half") if k in self.args}
                settings.update({k: self.train_args[k] for k in ("imgsz",) if k in self.train_args})
                name = f"val-{run.name if run.dir is not None else run.weights.stem}"
                settings.update({"verbose": False, "project": str(self.save_dir), "name": name, "exist_ok": True,
                                 "device": self.devices[0] if self.devices[0] else self.args.get("device")})
                validator = Validator(settings)
                metrics = validator(str(run.weights))
                run.metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
                run.per_class = {k: list(v) for k, v in validator.per_class.items()}
                if cache is not None:
                    atomic_write_text(cache, json.dumps({"metrics": run.metrics, "per_class": run.per_class}))

    def _time(self) -> None:
        """Params, GFLOPs and latency of every variant (one run's weights each), timed side by side."""
        from rtdet.engine.benchmark import Benchmark

        args = self.args
        settings = {"model": ",".join(str(v.runs[0].weights) for v in self.variants),
                    "formats": args.get("formats") or "pytorch", "runs": args["runs"], "warmup": args["warmup"],
                    "imgsz": self.train_args.get("imgsz", args["imgsz"]), "device": self.devices[0] or args["device"],
                    "project": str(self.save_dir), "name": "benchmark", "exist_ok": True, "verbose": False,
                    "threads": args.get("threads"), "ort_opt_level": args["ort_opt_level"]}
        bench = Benchmark(settings, memory=False, labels=[v.label for v in self.variants])
        rows = bench()
        self.latency_format, self.bench_header = rows[0].format, bench.header  # the first format listed
        for variant in self.variants:
            variant.bench = {row.format: row for row in rows if row.model == variant.label}

    # ------------------------------------------------------------------ summary
    def _summarise(self) -> dict:
        base = self.variants[0]
        rows, per_class = [], {}
        for variant in self.variants:
            bench = variant.bench[self.latency_format]
            row = {"variant": variant.label, "model": variant.spec, "seeds": len(variant.runs), "params": bench.params,
                   "gflops": bench.gflops, "latency_ms": bench.latency_ms, "latency_format": self.latency_format}
            if self.train_args.get("pretrained"):  # how much of each variant started from the same source
                row["pretrained_share"] = _pretrained_share(variant)
            for fmt_name, b in variant.bench.items():
                row[f"latency_ms_{fmt_name}"] = b.latency_ms
            for metric in METRICS:
                values = [r.metrics[metric] for r in variant.runs]
                row[metric], row[f"{metric}_std"] = mean_std(values)
                row[f"{metric}_seeds"] = values
                if variant is not base:
                    test = _paired(base, variant, metric)
                    row[f"delta_{metric}"], row[f"ci_low_{metric}"], row[f"ci_high_{metric}"] = (
                        test.mean, test.ci_low, test.ci_high)
                    row[f"p_{metric}"], row[f"verdict_{metric}"] = test.p, test.verdict
            rows.append(row)
            classes = {}
            for run in variant.runs:
                for name, (ap, _) in run.per_class.items():
                    classes.setdefault(name, []).append(float(ap))
            per_class[variant.label] = {k: sum(v) / len(v) for k, v in classes.items()}
        class_rows = []
        for name, ap in per_class[base.label].items():
            r = {"class": name, f"{base.label} AP50-95": ap}
            for variant in self.variants[1:]:
                other = per_class[variant.label].get(name)
                r[f"delta {variant.label}"] = None if other is None else other - ap
            class_rows.append(r)
        return {"variants": rows, "per_class": class_rows, "seeds": self.seeds, "trained": list(self.trained),
                "resumed": list(self.resumed),
                "benchmark": self.bench_header, "curves": self._curves()}

    def _curves(self) -> dict[str, list[tuple[list[float], list[float]]]]:
        """Validation mAP50-95 per epoch of every run (results.csv), by variant."""
        curves: dict[str, list] = {}
        for variant in self.variants:
            runs = []
            for run in variant.runs:
                path = run.dir / "results.csv" if run.dir is not None else None
                if path is None or not path.is_file():
                    continue
                with path.open() as fh:
                    rows = [r for r in csv.DictReader(fh) if r.get("metrics/mAP50-95") not in (None, "")]
                runs.append(([float(r["epoch"]) for r in rows], [float(r["metrics/mAP50-95"]) for r in rows]))
            curves[variant.label] = runs
        return curves

    # ------------------------------------------------------------------ outputs
    def _write(self) -> None:
        from rtdet.engine.report import Table, markdown_table, write_csv, write_html_report
        from rtdet.utils.plotting import plot_curves, plot_pareto

        s, root = self.summary, self.save_dir
        rows = s["variants"]
        table_rows = [_display_row(r, i == 0) for i, r in enumerate(rows)]
        formats = list(self.variants[0].bench)
        columns = ["variant", "params", "GFLOPs", *[f"latency ms ({f})" for f in formats], "mAP50-95", "mAP50",
                   "delta mAP50-95 [95% CI]", "p", "verdict", "delta mAP50", "verdict mAP50"]
        init = ["from pretrained"] if "pretrained_share" in rows[0] else []  # share of parameters, per variant
        columns[3:3] = init
        csv_columns = ["variant", "model", "seeds", "params", "gflops", "latency_ms", "latency_format",
                       *[f"latency_ms_{f}" for f in self.variants[0].bench], "mAP50-95", "mAP50-95_std", "mAP50",
                       "mAP50_std", "delta_mAP50-95", "ci_low_mAP50-95", "ci_high_mAP50-95", "p_mAP50-95",
                       "verdict_mAP50-95", "delta_mAP50", "ci_low_mAP50", "ci_high_mAP50", "p_mAP50", "verdict_mAP50"]
        csv_columns[5:5] = ["pretrained_share"] if init else []
        write_csv(rows, csv_columns, root / "compare.csv")
        class_columns = list(s["per_class"][0]) if s["per_class"] else ["class"]
        write_csv(s["per_class"], class_columns, root / "per_class.csv")
        atomic_write_text(root / "compare.json", json.dumps(s, indent=1, default=str))
        points = [{"label": r["variant"], "latency": r["latency_ms"], "mean": r["mAP50-95"], "std": r["mAP50-95_std"]}
                  for r in rows]
        pareto = plot_pareto(points, root / "pareto.png",
                             latency_label=f"latency (ms per image, {self.latency_format}, {self._device_words()})")
        curves = plot_curves(s["curves"], root / "curves.png") if any(s["curves"].values()) else None
        method = (f"{len(self.seeds)} seeds per variant ({', '.join(map(str, self.seeds))}); mean +- std over seeds; "
                  f"delta = variant - baseline ({rows[0]['variant']}) with a 95% confidence interval from a paired "
                  f"t-test over seeds (seed k of each variant shares its data order); 'not significant' when the "
                  f"interval contains 0. Latency: model + post-processing, batch 1, median of "
                  f"{self.bench_header['runs']} interleaved runs ({self._device_words()}); GFLOPs = 2 x MACs.")
        md = [f"# compare: {', '.join(r['variant'] for r in rows)}", "", markdown_table(table_rows, columns), "",
              method, "", "## Per-class AP50-95 (mean over seeds) and deltas to the baseline", "",
              markdown_table(s["per_class"], class_columns), "", "![pareto](pareto.png)"]
        if curves is not None:
            md += ["", "![curves](curves.png)"]
        atomic_write_text(root / "compare.md", "\n".join(md) + "\n")
        sections = [("Variants", Table(table_rows, columns)), ("", method), ("Latency vs mAP50-95", pareto)]
        if curves is not None:
            sections.append(("Training curves (validation mAP50-95)", curves))
        sections.append(("Per-class AP50-95 and deltas to the baseline", Table(s["per_class"], class_columns)))
        write_html_report(root / "report.html", f"rtdet compare: {', '.join(r['variant'] for r in rows)}", sections)
        print(markdown_table(table_rows, columns))
        LOGGER.info(f"compare: results in {root} (compare.md, compare.csv, pareto.png, curves.png, report.html)")

    def _device_words(self) -> str:
        h = self.bench_header
        return f"{h['device']}, {h['torch_threads']} threads"


def _paired(base: Variant, variant: Variant, metric: str):
    """The paired test over the seeds both variants have (checkpoints pair by their sorted order)."""
    ours = {r.seed: r.metrics[metric] for r in base.runs}
    theirs = {r.seed: r.metrics[metric] for r in variant.runs}
    common = [k for k in ours if k in theirs]
    return paired_t_test([ours[k] for k in common], [theirs[k] for k in common])


def _labels(specs: list[str]) -> list[str]:
    """Short unique names: the file stem (checkpoints: the run folder's name), numbered when repeated."""
    labels = []
    for spec in specs:
        p = Path(spec)
        stem = p.parent.parent.name if p.suffix in (".pt", ".pth") and p.parent.name == "weights" else p.stem
        stem = stem.replace("*", "").strip("-_") or "variant"
        label, n = stem, 2
        while label in labels:
            label, n = f"{stem}-{n}", n + 1
        labels.append(label)
    return labels


def _pretrained_share(variant: Variant) -> float | None:
    """The share of parameters a variant's runs took from pretrained= (their transplant.json; the same for
    every seed), or None for a variant given as a finished checkpoint."""
    shares = [json.loads((r.dir / "transplant.json").read_text())["share"] for r in variant.runs
              if r.dir is not None and (r.dir / "transplant.json").is_file()]
    return sum(shares) / len(shares) if shares else None


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} +- {std:.4f}"


def _display_row(r: dict, baseline: bool) -> dict:
    out = {"variant": r["variant"] + (" (baseline)" if baseline else ""), "params": r["params"],
           "GFLOPs": r["gflops"],
           **{f"latency ms ({k[len('latency_ms_'):]})": v for k, v in r.items() if k.startswith("latency_ms_")},
           "mAP50-95": _pm(r["mAP50-95"], r["mAP50-95_std"]), "mAP50": _pm(r["mAP50"], r["mAP50_std"])}
    if "pretrained_share" in r:
        share = r["pretrained_share"]
        out["from pretrained"] = "-" if share is None else f"{100 * share:.0f}% of parameters"
    if not baseline:
        d, lo, hi = r["delta_mAP50-95"], r["ci_low_mAP50-95"], r["ci_high_mAP50-95"]
        ci = "" if lo != lo else f" [{lo:+.4f}, {hi:+.4f}]"  # NaN: one seed
        out.update({"delta mAP50-95 [95% CI]": f"{d:+.4f}{ci}", "p": r["p_mAP50-95"],
                    "verdict": r["verdict_mAP50-95"], "delta mAP50": f"{r['delta_mAP50']:+.4f}",
                    "verdict mAP50": r["verdict_mAP50"]})
    return out
