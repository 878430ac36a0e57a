"""``rtdet tune``: a hyperparameter search over any settings, with Optuna, on the compare executors.

    rtdet tune model=rtmdet-s.yaml data=coco128.yaml space=space.yaml trials=20 epochs=10 [pruner=asha]
    Tune({"model": "a.yaml", "data": "d.yaml", "space": "space.yaml", "trials": 8})()

The search space is the user's YAML; any setting of the schema (and of the model family's loss) may be
searched, and nothing is searched that the user did not name (no family's defaults leak into another's):

    lr0: [1.0e-4, 1.0e-2, log]        # a float between the bounds, sampled on a log scale
    warmup_iters: [0, 200]            # an integer (both bounds are integers)
    weight_decay: [0.0, 1.0e-3]       # a float
    optimizer: {choices: [SGD, AdamW]}

Every key and bound is checked against the schema before the first trial (one line naming the file, the key
and what is allowed). Each trial is an ordinary ``rtdet train`` run (every other setting given here applies
to all trials) in ``<project>/tune/<name>/train/trial-NNN``, handed to the executor (``executor=local``:
one after another, or one per device in ``devices=``; ``executor=ray``: as many at once as the cluster has
``cpus_per_run`` for). Optuna's TPE sampler (seeded by ``seed=``) proposes each wave of trials from the
results of the earlier ones; a trial's value is its best validation mAP50-95. ``pruner=asha`` stops
unpromising trials early: each epoch's validation mAP50-95 is reported to Optuna's successive-halving
pruner through the study's journal file, which every worker reads and writes (on a cluster it lives under
``project=`` on shared storage, like the runs). A trial whose loss became NaN is recorded as failed.

Outputs: ``results.md`` / ``results.csv`` (one row per trial, best first), ``best.yaml`` (the settings of
the best trial: ``rtdet train cfg=best.yaml`` trains it), ``history.png`` (value per trial and the best so
far), ``importance.png`` (parameter importance, PED-ANOVA) and ``parallel.png`` (parallel coordinates),
and ``study.log`` (Optuna's journal: ``optuna.load_study`` reads it).
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import yaml

from rtdet.data import load_data_config
from rtdet.engine.errors import NonFiniteLossError
from rtdet.engine.executors import EXECUTOR_KEYS, Job, make_executor, run_job
from rtdet.engine.loggers import grouped
from rtdet.engine.report import markdown_table, write_csv
from rtdet.engine.rundir import run_dir
from rtdet.engine.settings import (
    SettingsError,
    apply_cfg,
    check_device,
    check_keys,
    load_yaml,
    plain_settings,
    resolve_settings,
    schema,
    yaml_number,
)
from rtdet.io.load import load_model
from rtdet.utils.checkpoint import atomic_write_bytes, atomic_write_text
from rtdet.utils.logging import LOGGER, set_verbosity
from rtdet.utils.schema import SettingError

__all__ = ["Dimension", "Tune", "parse_space", "run_trial"]

# Settings of the search itself; every other setting is a training setting of each trial.
TUNE_KEYS = ("space", "trials", "pruner", "devices", "project", "name", "exist_ok", "cfg", *EXECUTOR_KEYS)
# Settings a search space may not name: they say what is trained and where, not how.
NOT_SEARCHABLE = ("model", "data", "resume", "project", "name", "exist_ok", "cfg", "device", "devices", "val",
                  *TUNE_KEYS)


class Dimension:
    """One searched setting: ``kind`` int / float (``low``, ``high``, ``log``) or choice (``choices``)."""

    def __init__(self, key: str, kind: str, low=None, high=None, log: bool = False, choices: list | None = None):
        self.key, self.kind, self.low, self.high, self.log, self.choices = key, kind, low, high, log, choices

    def distribution(self):
        """The Optuna distribution of this dimension."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # optional: tune

        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        cls = IntDistribution if self.kind == "int" else FloatDistribution
        return cls(self.low, self.high, log=self.log)

    def __repr__(self) -> str:
        return f"{self.key}: {self.choices if self.kind == 'choice' else [self.low, self.high]}"


def parse_space(path: str | Path, family: str | None = None) -> dict[str, Dimension]:
    """The search space YAML as {key: Dimension}, every key and bound checked against the schema (of
    ``family`` when given: its loss keys are searchable, another family's are not)."""
    raw = load_yaml(path)
    if not raw:
        raise SettingsError(f"{path}: empty search space; write one line per setting, e.g. lr0: [1.0e-4, 1.0e-2, log]")
    bad = [k for k in raw if k in NOT_SEARCHABLE]
    if bad:
        raise SettingsError(f"{path}: '{bad[0]}' cannot be searched (it says what is trained and where); search "
                            f"training settings such as lr0, weight_decay, or a loss gain")
    try:
        check_keys(raw, "tune", family)
    except SettingsError as e:
        raise SettingsError("\n".join(f"{path}: {line}" for line in str(e).splitlines())) from None
    table = schema(family)
    return {str(k): _dimension(path, str(k), v, table[k]) for k, v in raw.items()}


def _dimension(path, key: str, value, setting) -> Dimension:
    """``[low, high]``, ``[low, high, log]`` or ``{choices: [...]}`` for ``key``, its bounds checked."""
    where = f"{path}: {key}"
    try:
        if isinstance(value, dict) and set(value) == {"choices"} and isinstance(value["choices"], list):
            if len(value["choices"]) < 2:
                raise SettingsError(f"{where}: expected two or more choices, got {value['choices']!r}")
            return Dimension(key, "choice", choices=[setting.check(yaml_number(c)) for c in value["choices"]])
        if isinstance(value, list) and len(value) in (2, 3) and (len(value) == 2 or value[2] == "log"):
            low, high = (yaml_number(v) for v in value[:2])
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                raise SettingsError(f"{where}: expected [low, high] numbers with low < high, got {value!r}")
            kind = "int" if isinstance(low, int) and isinstance(high, int) and int in _kinds(setting) else "float"
            low, high = setting.check(low), setting.check(high)  # each bound inside the setting's own range
            if len(value) == 3 and low <= 0:
                raise SettingsError(f"{where}: a log scale needs low > 0, got {low}")
            if kind == "int":
                low, high = int(low), int(high)
            return Dimension(key, kind, low, high, log=len(value) == 3)
    except SettingError as e:
        raise SettingsError(f"{path}: {e}") from None
    raise SettingsError(f"{where}: {value!r} is not a range or choices; write {key}: [low, high], "
                        f"{key}: [low, high, log] or {key}: {{choices: [a, b]}}")


def _kinds(setting) -> tuple:
    return setting.kind if isinstance(setting.kind, tuple) else (setting.kind,)


# ---------------------------------------------------------------------------------------------- a trial
class _Reporter:
    """``on_fit_epoch_end``: this epoch's validation mAP50-95 to the trial; stop it when the pruner says so."""

    def __init__(self, trial):
        self.trial = trial

    def __call__(self, trainer) -> None:
        import optuna  # optional: tune

        value = (trainer.metrics or {}).get("mAP50-95")
        if value is None:  # no validation this epoch (no labelled box): nothing to decide on
            return
        self.trial.report(float(value), trainer.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {trainer.epoch + 1} (mAP50-95 {value:.4f})")


def run_trial(job: Job, callbacks: dict | None = None) -> dict:
    """Train one trial (an executor job; :func:`rtdet.engine.executors.run_job`), reporting to the pruner
    when there is one. Returns {"name", "status": complete / pruned / failed, "value", "error"}."""
    import optuna  # optional: tune

    callbacks = dict(callbacks or {})
    if job.extra.get("prune"):
        study = optuna.load_study(study_name="tune", storage=_storage(job.extra["storage"]))
        callbacks["on_fit_epoch_end"] = _Reporter(optuna.trial.Trial(study, int(job.extra["trial_id"])))
    status, error = "complete", None
    try:
        run_job(job, callbacks)
    except optuna.TrialPruned as e:
        status, error = "pruned", str(e)
    except NonFiniteLossError as e:
        status, error = "failed", str(e).splitlines()[0]
    epochs, value = best_map(job.dir / "results.csv")
    if status == "complete" and value is None:
        status, error = "failed", "no validation mAP50-95 (val=false, or a val split without labels)"
    return {"name": job.name, "status": status, "value": value, "epochs": epochs, "error": error}


def best_map(results_csv: Path) -> tuple[int, float | None]:
    """(epochs completed, best validation mAP50-95) of a run's results.csv; None when no epoch has one."""
    if not results_csv.is_file():
        return 0, None
    with results_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    values = []
    for row in rows:
        try:
            values.append(float(row.get("metrics/mAP50-95") or "nan"))
        except ValueError:
            continue
    values = [v for v in values if v == v]
    return len(rows), (max(values) if values else None)


def _storage(path: str | Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage  # optional: tune

    return JournalStorage(JournalFileBackend(str(path)))


# ---------------------------------------------------------------------------------------------- the search
class Tune:
    """``rtdet tune`` (see the module docstring)."""

    task = "tune"

    def __init__(self, overrides: dict | None = None):
        self.overrides = dict(overrides or {})
        self.save_dir: Path | None = None

    def __call__(self) -> dict:
        study = self._setup()
        with self.executor:
            while len(study.trials) < self.n_trials:
                self._wave(study, min(self.executor.slots, self.n_trials - len(study.trials)))
        return self._write(study)

    def _setup(self):
        """Settings, the space (checked against the model's family), the executor, the run folder, the study."""
        try:
            import optuna  # optional: tune
        except ImportError:
            raise SettingsError("rtdet tune needs Optuna: pip install 'rtdet[tune]' (or pip install optuna)") from None

        user = apply_cfg(self.overrides, "tune")
        args = resolve_settings(user, verb="tune")
        set_verbosity(bool(args["verbose"]))
        for key, example in (("model", "rtdetr-l.yaml"), ("data", "coco128.yaml"), ("space", "space.yaml")):
            if not args.get(key):
                raise SettingsError(f"tune needs {key}=..., e.g. {key}={example}")
        if args.get("val") is False:
            raise SettingsError("tune needs val=true: a trial's value is its validation mAP50-95")
        names = list(load_data_config(args["data"]).names)
        model = load_model(args["model"], nc=len(names), names=names, scale=args.get("scale")).model
        self.space = parse_space(args["space"], model.head.family)
        self.train_args = {k: v for k, v in user.items() if k not in TUNE_KEYS}
        resolve_settings(self.train_args, model.head.family, "train")  # every training setting, before a trial
        self.args, self.n_trials = args, int(args["trials"])
        self.devices = [check_device(d) for d in str(args.get("devices") or "").split(",") if d] or [
            args.get("device") or ""]
        self.executor = make_executor(args, self.devices)
        self.save_dir = run_dir(args["project"], self.task, args.get("name"), bool(args["exist_ok"]))
        pruner = (optuna.pruners.SuccessiveHalvingPruner() if args["pruner"] == "asha" else optuna.pruners.NopPruner())
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        LOGGER.info(f"tune: {self.n_trials} trials over {list(self.space.values())} in {self.save_dir}")
        return optuna.create_study(study_name="tune", direction="maximize", pruner=pruner,
                                   storage=_storage(self.save_dir / "study.log"),
                                   sampler=optuna.samplers.TPESampler(seed=int(args["seed"])))

    def _wave(self, study, n: int) -> None:
        """``n`` trials proposed from every result so far, trained at once on the executor, told back."""
        import optuna  # optional: tune

        dists = {k: d.distribution() for k, d in self.space.items()}
        trials = [study.ask(dists) for _ in range(n)]
        jobs = []
        storage = str((self.save_dir / "study.log").resolve())  # workers may run in other folders
        for trial in trials:
            name = f"trial-{trial.number:03d}"
            settings = {**plain_settings(self.train_args), **trial.params, "val": True, "project": str(self.save_dir),
                        "name": name, "exist_ok": True}
            settings = grouped(settings, f"tune-{self.save_dir.name}", trial=trial.number)
            jobs.append(Job(name, self.save_dir / "train" / name, settings,
                            {"prune": self.args["pruner"] != "none", "storage": storage, "trial_id": trial._trial_id}))
        for trial, outcome in zip(trials, self.executor.run(run_trial, jobs)):
            state = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}.get(
                outcome["status"], optuna.trial.TrialState.FAIL)
            trial.set_user_attr("epochs", outcome.get("epochs"))
            study.tell(trial, outcome["value"] if state == optuna.trial.TrialState.COMPLETE else None, state=state)
            value = "n/a" if outcome["value"] is None else f"{outcome['value']:.4f}"
            why = f" ({outcome['error']})" if outcome.get("error") else ""
            LOGGER.info(f"tune: {outcome['name']} {outcome['status']} {trial.params} -> mAP50-95 {value}{why}")

    # ------------------------------------------------------------------ outputs
    def _write(self, study) -> dict:
        rows = sorted((_row(t, self.space) for t in study.trials),
                      key=lambda r: (r["mAP50-95"] is None, -(r["mAP50-95"] or 0.0)))
        columns = ["trial", "state", "mAP50-95", *self.space, "epochs"]
        write_csv(rows, columns, self.save_dir / "results.csv")
        shown = [{**r, "mAP50-95": "n/a" if r["mAP50-95"] is None else f"{r['mAP50-95']:.4f}"} for r in rows]
        complete = [t for t in study.trials if t.value is not None]
        best = max(complete, key=lambda t: t.value) if complete else None
        md = [f"# tune: {self.args['model']} on {self.args['data']}", "", markdown_table(shown, columns), ""]
        if best is not None:
            best_settings = {**plain_settings(self.train_args), **best.params}
            atomic_write_text(self.save_dir / "best.yaml", yaml.safe_dump(best_settings, sort_keys=False))
            md += [f"Best: trial {best.number}, mAP50-95 {best.value:.4f}: {best.params}. Train it with "
                   f"`rtdet train cfg={self.save_dir / 'best.yaml'}`.", ""]
        md += [f"![{p.stem}]({p.name})" for p in _plots(study, self.save_dir)]
        atomic_write_text(self.save_dir / "results.md", "\n".join(md) + "\n")
        print(markdown_table(shown, columns))
        LOGGER.info(f"tune: results in {self.save_dir} (results.md, results.csv, best.yaml, plots)")
        return {"trials": rows, "best": None if best is None else {"trial": best.number, "value": best.value,
                                                                    "params": best.params}}


def _row(trial, space: dict) -> dict:
    return {"trial": trial.number, "state": trial.state.name.lower(), "mAP50-95": trial.value,
            **{k: trial.params.get(k) for k in space}, "epochs": trial.user_attrs.get("epochs")}


def _plots(study, folder: Path) -> list[Path]:
    """Optuna's matplotlib plots of the study (no plotly needed): history, importance, parallel coordinates.
    A plot that needs more than the study has (two finished trials, two parameters) is left out."""
    import optuna.visualization.matplotlib as vis  # optional: tune
    from optuna.importance import PedAnovaImportanceEvaluator

    matplotlib.use("Agg")  # optuna draws through pyplot: a file backend, never a window

    target = "mAP50-95"
    wanted = {"history": lambda: vis.plot_optimization_history(study, target_name=target),
              "importance": lambda: vis.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(),
                                                               target_name=target),
              "parallel": lambda: vis.plot_parallel_coordinate(study, target_name=target)}
    written = []
    for name, make in wanted.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            try:
                ax = make()
            except (ValueError, RuntimeError) as e:
                LOGGER.info(f"tune: no {name} plot ({' '.join(str(e).split())[:100]})")
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        path = folder / f"{name}.png"
        atomic_write_bytes(path, lambda fh, fig=fig: fig.savefig(fh, format="png", dpi=100))
        plt.close(fig)
        written.append(path)
    return written
