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
(``eval.json``) are reused, an interrupted one continues from its ``last.pt``. The runs are handed to an
executor (:mod:`rtdet.engine.executors`): ``executor=local`` trains them here, one after another, or with
``devices=0,1`` one process per device at a time; ``executor=ray`` makes each run a Ray task on a cluster
(``address=``) or a local Ray runtime, retried from its ``last.pt`` when its worker dies. Every model and
setting is checked before the first run trains; variants may change between calls (a typo fixed), and the
runs of the unchanged ones are reused.
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rtdet.data import load_data_config
from rtdet.engine.benchmark import Benchmark, split_models
from rtdet.engine.errors import RunRecordError
from rtdet.engine.executors import EXECUTOR_KEYS, Job, make_executor, run_job
from rtdet.engine.loggers import grouped
from rtdet.engine.report import Table, markdown_table, write_csv, write_html_report
from rtdet.engine.settings import SettingsError, check_device, check_keys, plain_settings, resolve_settings
from rtdet.engine.stats import mean_std, paired_t_test
from rtdet.engine.validator import Validator
from rtdet.io.load import load_model
from rtdet.utils.checkpoint import atomic_write_text
from rtdet.utils.logging import LOGGER, set_verbosity
from rtdet.utils.plotting import plot_curves, plot_pareto

__all__ = ["COMPARE_KEYS", "Compare", "Run", "Variant", "parse_seeds"]

# Settings that steer the comparison itself; every other setting is a training setting of each run.
COMPARE_KEYS = ("model", "models", "seeds", "devices", "formats", "runs", "warmup", "threads", "ort_opt_level",
                "project", "name", "exist_ok", *EXECUTOR_KEYS)
METRICS = ("mAP50-95", "mAP50")


def parse_seeds(value) -> list[int]:
    """``3`` -> [0, 1, 2]; ``[0, 7]`` or ``"0,7"`` -> [0, 7]."""
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
        self._train(todo)
        self._evaluate()
        self._time()
        self.summary = self._summarise()
        self._write()
        return self.summary

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
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
        labels = _labels(specs)
        self._preflight(specs)
        self._check_plan(root, dict(zip(labels, specs)))
        self.variants = []
        for label, spec in zip(labels, specs):
            variant = Variant(label, spec)
            if _is_checkpoint(spec):
                variant.runs = [Run(label, i, None, Path(f)) for i, f in enumerate(_checkpoint_files(spec))]
            else:
                variant.runs = [Run(label, seed, root / "train" / f"{label}-s{seed}") for seed in self.seeds]
            self.variants.append(variant)

    def _preflight(self, specs: list[str]) -> None:
        """Every variant and every setting checked before the first run trains (a typo in the last model must
        not cost the baseline's runs): the data, each model built once, the training settings against each
        model's family (its loss keys, its recipe), the executor's own requirements."""
        names = list(load_data_config(self.args["data"]).names)
        for spec in specs:
            if _is_checkpoint(spec):
                _checkpoint_files(spec)
                continue
            model = load_model(spec, nc=len(names), names=names, scale=self.train_args.get("scale")).model
            resolve_settings(self.train_args, model.head.family, "train")
        if self.args.get("executor") == "ray" and self.callbacks:
            raise SettingsError("executor=ray runs each training run in a Ray worker: Python callbacks need "
                                "executor=local")
        if self.args.get("executor") == "ray":
            make_executor(self.args, self.devices)  # Ray missing: one line saying how to install it

    def _check_plan(self, root: Path, models: dict[str, str]) -> None:
        """A comparison folder belongs to one set of training settings: re-running the command resumes it, and
        other settings under the same name are refused (nothing is overwritten). Its variants may change (a
        typo fixed, a variant added): the runs of every variant whose model is unchanged are reused."""
        plan = {"models": models, "train": plain_settings(self.train_args)}
        path = root / "plan.json"
        old = _read_plan(path) if path.is_file() else None
        if old is not None and old["train"] != plan["train"]:
            changed = sorted(k for k in set(old["train"]) | set(plan["train"])
                             if old["train"].get(k) != plan["train"].get(k))
            raise SettingsError(f"{root} holds a comparison with other settings {changed}; re-run it with the same "
                                f"arguments to resume it, or pass name=<new name> for a new comparison")
        for label, spec in models.items():
            before = _trained_from(root / "train", label)
            if before not in (None, spec):
                raise SettingsError(f"{root} holds runs of variant '{label}' trained from {before}, not {spec}; "
                                    f"pass name=<new name> for a new comparison, or rename the file")
        if old is not None:
            plan["models"] = {**old.get("models", {}), **models}  # runs of variants left out stay on record
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(plan, indent=1))

    # ------------------------------------------------------------------ training
    def _jobs(self, runs: list[Run]) -> list[Job]:
        """Each run as an executor job: an ordinary ``rtdet train`` of its variant with its seed, in its folder."""
        jobs = []
        for run in runs:
            spec = next(v.spec for v in self.variants if v.label == run.variant)
            settings = {**plain_settings(self.train_args), "model": spec, "seed": run.seed,
                        "project": str(self.save_dir), "name": run.dir.name, "exist_ok": True}
            settings = grouped(settings, f"compare-{self.save_dir.name}", variant=run.variant, seed=run.seed)
            jobs.append(Job(run.name, run.dir, settings))
        return jobs

    def _train(self, runs: list[Run]) -> None:
        """Every unfinished run on the executor (``executor=local|ray``, see :mod:`rtdet.engine.executors`)."""
        if not runs:
            return
        executor = make_executor(self.args, self.devices)
        outcomes = executor.run(run_job, self._jobs(runs), callbacks=self.callbacks or None,
                                on_start=lambda job: self.trained.append(job.name))
        for outcome in outcomes:
            if outcome["status"] == "resumed":
                self.resumed.append(outcome["name"])
            elif outcome["status"] == "done" and outcome["name"] in self.trained:
                self.trained.remove(outcome["name"])  # its last.pt had finished already: nothing was trained

    # ------------------------------------------------------------------ validation and timing
    def _evaluate(self) -> None:
        for variant in self.variants:
            for run in variant.runs:
                if run.dir is not None:
                    best, last = run.dir / "weights" / "best.pt", run.last
                    run.weights = best if best.is_file() else last
                cache = run.dir / "eval.json" if run.dir is not None else None
                saved = _read_eval(cache) if cache is not None and cache.is_file() else None
                if saved is not None:
                    run.metrics, run.per_class = saved["metrics"], saved["per_class"]
                    continue
                settings = {k: self.args[k] for k in ("data", "device", "workers", "batch", "half") if k in self.args}
                settings.update({k: self.train_args[k] for k in ("imgsz",) if k in self.train_args})
                name = f"val-{run.name if run.dir is not None else run.weights.stem}"
                settings.update({"verbose": False, "project": str(self.save_dir), "name": name, "exist_ok": True,
                                 "device": self.devices[0] if self.devices[0] else self.args.get("device")})
                validator = Validator(settings)
                metrics = validator(str(run.weights))
                # None = unavailable (a split without labels): it stays None, "n/a" in every report
                run.metrics = {k: None if v is None else float(v) for k, v in metrics.items()
                               if v is None or isinstance(v, int | float)}
                run.per_class = {k: list(v) for k, v in validator.per_class.items()}
                if cache is not None and all(run.metrics.get(m) is not None for m in METRICS):
                    # only a measured result is kept: labels added later are then scored on the next run
                    atomic_write_text(cache, json.dumps({"metrics": run.metrics, "per_class": run.per_class}))

    def _time(self) -> None:
        """Params, GFLOPs and latency of every variant (one run's weights each), timed side by side."""
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
                row.update(_metric_columns(base, variant, metric))
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
                    rows = [r for r in csv.DictReader(fh) if _number(r.get("metrics/mAP50-95"))]
                runs.append(([float(r["epoch"]) for r in rows], [float(r["metrics/mAP50-95"]) for r in rows]))
            curves[variant.label] = runs
        return curves

    # ------------------------------------------------------------------ outputs
    def _write(self) -> None:
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
                  for r in rows if r["mAP50-95"] is not None]
        pareto = None if not points else plot_pareto(points, root / "pareto.png",
                             latency_label=f"latency (ms per image, {self.latency_format}, {self._device_words()})")
        curves = plot_curves(s["curves"], root / "curves.png") if any(s["curves"].values()) else None
        method = (f"{len(self.seeds)} seeds per variant ({', '.join(map(str, self.seeds))}); mean +- std over seeds; "
                  f"delta = variant - baseline ({rows[0]['variant']}) with a 95% confidence interval from a paired "
                  f"t-test over seeds (seed k of each variant shares its data order); 'not significant' when the "
                  f"interval contains 0. Latency: model + post-processing, batch 1, median of "
                  f"{self.bench_header['runs']} interleaved runs ({self._device_words()}); GFLOPs = 2 x MACs.")
        md = [f"# compare: {', '.join(r['variant'] for r in rows)}", "", markdown_table(table_rows, columns), "",
              method, "", "## Per-class AP50-95 (mean over seeds) and deltas to the baseline", "",
              markdown_table(s["per_class"], class_columns)] + (["", "![pareto](pareto.png)"] if pareto else [])
        if curves is not None:
            md += ["", "![curves](curves.png)"]
        atomic_write_text(root / "compare.md", "\n".join(md) + "\n")
        sections = [("Variants", Table(table_rows, columns)), ("", method)]
        if pareto is not None:
            sections.append(("Latency vs mAP50-95", pareto))
        if curves is not None:
            sections.append(("Training curves (validation mAP50-95)", curves))
        sections.append(("Per-class AP50-95 and deltas to the baseline", Table(s["per_class"], class_columns)))
        write_html_report(root / "report.html", f"rtdet compare: {', '.join(r['variant'] for r in rows)}", sections)
        print(markdown_table(table_rows, columns))
        LOGGER.info(f"compare: results in {root} (compare.md, compare.csv, pareto.png, curves.png, report.html)")

    def _device_words(self) -> str:
        h = self.bench_header
        return f"{h['device']}, {h['torch_threads']} threads"


def _metric_columns(base: Variant, variant: Variant, metric: str) -> dict:
    """Mean, std, per-seed values and (not for the baseline) the paired test of ``metric``; None and the
    verdict "n/a (no labels)" where a run's metric is unavailable."""
    values = [r.metrics.get(metric) for r in variant.runs]
    out = {f"{metric}_seeds": values}
    measured = all(v is not None for v in values)
    out[metric], out[f"{metric}_std"] = mean_std(values) if measured else (None, None)
    if variant is not base:
        if measured and all(r.metrics.get(metric) is not None for r in base.runs):
            test = _paired(base, variant, metric)
            out.update({f"delta_{metric}": test.mean, f"ci_low_{metric}": test.ci_low,
                        f"ci_high_{metric}": test.ci_high, f"p_{metric}": test.p, f"verdict_{metric}": test.verdict})
        else:
            out.update({f"delta_{metric}": None, f"ci_low_{metric}": None, f"ci_high_{metric}": None,
                        f"p_{metric}": None, f"verdict_{metric}": "n/a (no labels)"})
    return out


def _read_eval(path: Path) -> dict | None:
    """A run's cached validation (eval.json), or None when it is damaged (the run is validated again)."""
    try:
        saved = json.loads(path.read_text())
        return saved if isinstance(saved, dict) and {"metrics", "per_class"} <= set(saved) else None
    except (ValueError, UnicodeDecodeError):
        return None


def _paired(base: Variant, variant: Variant, metric: str):
    """The paired test over the seeds both variants have (checkpoints pair by their sorted order)."""
    ours = {r.seed: r.metrics[metric] for r in base.runs}
    theirs = {r.seed: r.metrics[metric] for r in variant.runs}
    common = [k for k in ours if k in theirs]
    return paired_t_test([ours[k] for k in common], [theirs[k] for k in common])


def _number(text: str | None) -> bool:
    try:
        return float(text) == float(text)  # not NaN
    except (TypeError, ValueError):
        return False


def _is_checkpoint(spec: str) -> bool:
    return spec.lower().endswith((".pt", ".pth"))


def _checkpoint_files(spec: str) -> list[str]:
    """A finished run given as one checkpoint, or a glob of one per seed."""
    files = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
    if not files or not all(Path(f).is_file() for f in files):
        raise FileNotFoundError(f"compare: {spec} names no checkpoint file")
    return files


def _trained_from(folder: Path, label: str) -> str | None:
    """The model a variant's existing runs were trained from (their own args.yaml), or None when none has run."""
    for args in sorted(folder.glob(f"{label}-s*/args.yaml")):
        try:
            model = (yaml.safe_load(args.read_text()) or {}).get("model")
        except yaml.YAMLError:
            continue
        if model:
            return str(model)
    return None


def _read_plan(path: Path) -> dict:
    """plan.json as written by :meth:`Compare._check_plan` (older files list the models without labels)."""
    try:
        plan = json.loads(path.read_text())
        if not isinstance(plan, dict) or not isinstance(plan.get("train"), dict):
            raise ValueError("expected {'models': ..., 'train': {...}}")
    except (ValueError, UnicodeDecodeError) as e:
        raise RunRecordError(f"{path}: damaged ({' '.join(str(e).split())[:120]}); delete it and run the same "
                             f"command again (finished runs are kept and reused), or pass name=<new name>") from None
    if isinstance(plan.get("models"), list):
        plan["models"] = dict(zip(_labels(plan["models"]), plan["models"]))
    elif not isinstance(plan.get("models"), dict):
        plan["models"] = {}
    return plan


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


def _pm(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.4f} +- {std:.4f}"


def _signed(v: float | None, ci: str = "") -> str:
    return "n/a" if v is None else f"{v:+.4f}{ci}"


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
        ci = "" if lo is None or lo != lo else f" [{lo:+.4f}, {hi:+.4f}]"  # NaN: one seed
        out.update({"delta mAP50-95 [95% CI]": _signed(d, ci), "p": "n/a" if r["p_mAP50-95"] is None else
                    r["p_mAP50-95"], "verdict": r["verdict_mAP50-95"], "delta mAP50": _signed(r["delta_mAP50"]),
                    "verdict mAP50": r["verdict_mAP50"]})
    return out
