"""The bounded restricted reader: what its checks cost on a real checkpoint, and how fast it refuses bombs.

    .venv/bin/python benchmarks/safe_reader.py [--repeats 3]

Times ``torch.load(weights_only=True)`` and ``rtdet.io.safe_pickle.read_torch_file`` (restricted unpickler,
zip records checked against the budget, expanded size counted) on an rtdet checkpoint of rtdetr-l (132 MB),
then the refusal of three hand-built bombs (tests/io/hostile.py builds them). Prints the table recorded in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtdet.io.load import build_model  # noqa: E402
from rtdet.io.safe_pickle import read_torch_file  # noqa: E402
from rtdet.utils.checkpoint import CheckpointError  # noqa: E402
from tests.io.hostile import P, tensor, torch_zip  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bombs(folder: Path) -> dict[str, Path]:
    """The three bombs of issue 18: a set from a huge range, shared references, an inflating record."""
    ops = P.proto() + P.EMPTY_LIST + P.text("x") + P.APPEND + P.put(0) + P.POP
    for i in range(1, 41):
        ops += P.EMPTY_LIST + P.MARK + P.get(i - 1) + P.get(i - 1) + P.APPENDS + P.put(i) + P.POP
    size = 1 << 30
    return {
        "set(range(10**9))": torch_zip(folder / "set.pt", P.proto() + P.global_("builtins", "set")
                                       + P.global_("builtins", "range") + P.int_(10**9) + P.TUPLE1 + P.REDUCE
                                       + P.TUPLE1 + P.REDUCE + P.STOP),
        "2**40 shared references": torch_zip(folder / "tree.pt", ops + P.get(40) + P.STOP),
        "1 GiB record, deflated": torch_zip(folder / "inflate.pt", P.proto() + tensor("0", size, (size,), (1,),
                                                                                      "ByteStorage") + P.STOP,
                                            deflated={"0": (size, 1 << 22)}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = build_model("rtdetr-l.yaml").save(folder / "rtdetr-l.pt")
        mb = ckpt.stat().st_size / 1e6
        print("| file | size | torch.load(weights_only=True) | read_torch_file (bounded) |\n|---|---|---|---|")
        a = median_seconds(lambda: torch.load(ckpt, weights_only=True), args.repeats)
        b = median_seconds(lambda: read_torch_file(ckpt), args.repeats)
        print(f"| rtdetr-l.pt | {mb:.0f} MB | {a:.2f} s | {b:.2f} s |")
        print("\n| bomb | file size | refused in | message |\n|---|---|---|---|")
        for name, path in bombs(folder).items():
            t0 = time.perf_counter()
            try:
                read_torch_file(path)
                message = "read (not refused!)"
            except CheckpointError as e:
                message = str(e).split(": ", 1)[1][:70] + "..."
            print(f"| {name} | {path.stat().st_size:,} B | {time.perf_counter() - t0:.3f} s | {message} |")


if __name__ == "__main__":
    main()
