"""The demos side by side: ``rtdet demo`` of several models, each in its own process with one torch thread,
all started together, so that they share the machine alike. Reports each run's final and per-epoch mAP, its
CPU time (the process's user + sys) and that time as a ratio to the first model's.

    .venv/bin/python benchmarks/demo_race.py                                 # rtdetr-demo against dfine-demo
    .venv/bin/python benchmarks/demo_race.py --set dfine-demo.yaml:loss_fgl=0.15 dfine-demo.yaml:loss=vfl
    .venv/bin/python benchmarks/demo_race.py --seeds 0 1 2                   # one race per seed, and the means
    .venv/bin/python benchmarks/demo_race.py --quick                         # 1 epoch each: checks it runs

Each demo uses its family's ``cfg/demo/<family>.yaml`` on top of the recipe (what ``rtdet demo model=...``
does); ``--set MODEL:key=value`` changes one model's settings. With two models on a two-core machine each
run has a core; more runs than cores share them, which inflates every CPU time alike only roughly.

A demo's final mAP moves by a few hundredths with anything that changes its floating-point sums (the seed,
the memory layout, the thread count), so one race is one sample: ``--seeds`` runs one race per training seed
(the synthetic set stays the same) and adds a table of each model's mean and range over the seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _value(text: str):
    """A --set value as YAML would read it (numbers, booleans), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_one(model: str, settings: dict, project: str, queue) -> None:
    """One demo in this process (1 thread); puts its figures on ``queue``."""
    import torch

    from rtdet.demo import run_demo

    torch.set_num_threads(1)
    t0 = time.time()
    out = run_demo(model=model, project=project, plots=False, **settings)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(Path(out["train_dir"]) / "results.csv") as f:
        rows = list(csv.DictReader(f))
    per_epoch = [(round(float(r["metrics/mAP50"]), 3), round(float(r["metrics/mAP50-95"]), 3)) for r in rows]
    queue.put({"model": model, "settings": settings, "cpu_s": usage.ru_utime + usage.ru_stime,
               "wall_s": time.time() - t0, "mAP50": out["metrics"].get("mAP50"),
               "mAP50-95": out["metrics"].get("mAP50-95"), "per_epoch": per_epoch})


def race(models: list[str], sets: dict[str, dict], folder: Path, seed: int | None = None) -> list[dict]:
    """Every model's demo in its own process, all at once; results in ``models`` order. ``seed``: the
    training seed of every run (None: the demo's own)."""
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no shared torch state
    queue = ctx.Queue()
    extra = {} if seed is None else {"seed": seed}
    procs = [ctx.Process(target=run_one, args=(m, {**sets.get(m, {}), **extra}, str(folder / Path(m).stem), queue))
             for m in models]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sorted(results, key=lambda r: models.index(r["model"]))


def summary(races: list[list[dict]]) -> str:
    """Each model's mean (min-max) final mAPs and CPU time over the races, and its mean CPU time as a
    ratio to the first model's."""
    lines = [f"Over {len(races)} seeds:", "",
             "| run | val mAP50, mean (min-max) | val mAP50-95, mean (min-max) | CPU time, mean | CPU time ratio |",
             "|---|---:|---:|---:|---:|"]
    base = statistics.mean(r[0]["cpu_s"] for r in races)
    for i, first in enumerate(races[0]):
        runs = [r[i] for r in races]
        cells = []
        for key in ("mAP50", "mAP50-95"):
            v = [r[key] for r in runs]
            cells.append(f"{statistics.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})")
        cpu = statistics.mean(r["cpu_s"] for r in runs)
        lines.append(f"| {Path(first['model']).stem} | {cells[0]} | {cells[1]} | {cpu:.0f} s | {cpu / base:.2f} |")
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    base = results[0]["cpu_s"]
    lines = ["| run | val mAP50 | val mAP50-95 | CPU time (user + sys) | CPU time ratio | wall time |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        extra = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        name = Path(r["model"]).stem + (f" ({extra})" if extra else "")
        lines.append(f"| {name} | {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {r['cpu_s']:.0f} s | "
                     f"{r['cpu_s'] / base:.2f} | {r['wall_s']:.0f} s |")
    lines.append("")
    lines += [f"mAP50 / mAP50-95 per epoch, {Path(r['model']).stem}: "
              + ", ".join(f"{a:.2f} / {b:.2f}" for a, b in r["per_epoch"]) for r in results]
    return "\n".join(lines)


def parse_sets(items: list[str]) -> dict[str, dict]:
    sets: dict[str, dict] = {}
    for item in items:
        model, _, kv = item.partition(":")
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected MODEL:key=value, e.g. dfine-demo.yaml:epochs=10")
        sets.setdefault(model, {})[key] = _value(value)
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["rtdetr-demo.yaml", "dfine-demo.yaml"])
    ap.add_argument("--set", nargs="*", default=[], help="MODEL:key=value, one model's setting")
    ap.add_argument("--dir", type=Path, default=None, help="run folders (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="one race per training seed, and the means")
    ap.add_argument("--quick", action="store_true", help="1 epoch: checks the script runs")
    args = ap.parse_args()
    sets = parse_sets(args.set)
    if args.quick:
        for m in args.models:
            sets.setdefault(m, {}).update(epochs=1)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="demo-race-"))
    if args.seeds is None:
        text = table(race(args.models, sets, folder))
    else:
        races = []
        for seed in args.seeds:
            races.append(race(args.models, sets, folder / f"seed{seed}", seed))
            print(f"seed {seed}:\n{table(races[-1])}\n", flush=True)
        text = "\n\n".join([*(f"seed {s}:\n{table(r)}" for s, r in zip(args.seeds, races)), summary(races)])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
