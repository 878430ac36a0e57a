"""Count the host reads of tensor values per training batch (what makes a GPU wait), for every family.

    PYTHONPATH=. python benchmarks/host_reads.py [--log-every 10] [--epochs 2]

A host read is a call of float(), int(), bool(), .item(), .tolist(), .numpy() or .cpu() on a tensor: on CUDA
each one waits for every queued kernel. Counted from the start of each epoch to the end of its last batch
(checkpoints and validation excluded) during Trainer.train() of a tiny model of each family on a synthetic
set, on the CPU (the calls are the same on a GPU), for calls made by rtdet's own code, split by where: the
trainer's loop (engine/trainer.py, engine/meters.py) and the rest (losses, matchers, assigners, data).
PyTorch's own reads are left out (e.g. the optimizer's step counters, which it keeps on the CPU). Run it on
two checkouts to compare them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

READS = ("__float__", "__int__", "__bool__", "item", "tolist", "numpy", "cpu")


def count_reads(settings: dict) -> tuple[Counter, int]:
    """({"trainer": n, "other": n}, batches trained) for one run with ``settings``."""
    import rtdet
    from rtdet.engine import trainer as trainer_module
    from rtdet.engine.trainer import Trainer

    package = str(Path(rtdet.__file__).parent)
    engine = {trainer_module.__file__, str(Path(trainer_module.__file__).with_name("meters.py"))}
    counts: Counter = Counter()
    state = {"on": False, "batches": 0}
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def spy(name):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if state["on"] and caller.startswith(package):
                counts["trainer" if caller in engine else "other"] += 1
            return originals[name](self, *args, **kwargs)
        return read

    def on_batch(t):
        state["batches"] += 1
        state["on"] = t.batch_index + 1 < len(t.train_loader)  # the epoch's end (save, validation) not counted

    trainer = Trainer(settings)
    trainer.add_callback("on_train_epoch_start", lambda t: state.update(on=True))
    trainer.add_callback("on_train_batch_end", on_batch)
    for name in READS:
        setattr(torch.Tensor, name, spy(name))
    try:
        trainer.train()
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
    return counts, state["batches"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    opts = parser.parse_args()
    from rtdet.data.synthetic import make_synthetic_dataset
    from rtdet.engine.settings import schema
    from tests.engine.conftest import RTMDET_TINY_YAML, TINY_YAML, TINY_YOLO_YAML

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="host-reads-"))
    data = make_synthetic_dataset(tmp / "data", n_train=32, n_val=4, imgsz=64, seed=0, n_classes=2,
                                  min_objects=1, max_objects=3, size_range=(0.3, 0.6))
    print("| family | batches | host reads per batch: trainer loop | the rest of rtdet (losses, data) |")
    print("|---|---:|---:|---:|")
    for family, text in (("rtdetr", TINY_YAML), ("yolov9", TINY_YOLO_YAML), ("rtmdet", RTMDET_TINY_YAML)):
        model = tmp / f"{family}.yaml"
        model.write_text(text)
        settings = {"model": str(model), "data": str(data), "imgsz": 64, "batch": 2, "epochs": opts.epochs,
                    "workers": 0, "device": "cpu", "project": str(tmp / "runs"), "val": False, "plots": False,
                    "verbose": False, "train_pipeline": "plain", "seed": 0, "nbs": 0}
        if "log_every" in schema():
            settings.update(log_every=opts.log_every, loggers="csv")
        counts, n = count_reads(settings)
        print(f"| {family} | {n} | {counts['trainer'] / n:.2f} | {counts['other'] / n:.2f} |")


if __name__ == "__main__":
    main()
