"""One run over several nodes: torchrun's multi-node rendezvous, as two "nodes" on this machine (two torchrun
launches of one process each, meeting on 127.0.0.1; Gloo on the CPU). The run completes with identical weights
on every rank and one run folder written by rank 0; SIGTERM to one node (a preempting scheduler) stops both
with a saved last.pt, from which the two nodes resume."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from rtdet.utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

# Each rank saves its final weights beside the run (the test's own callback): rank 1 writes nothing else.
RANK_DUMP = """\
import json, os, sys, torch
from rtdet.engine.trainer import Trainer
from rtdet.utils.torch_utils import de_parallel

settings, out = json.loads(sys.argv[1]), sys.argv[2]
trainer = Trainer(settings)
trainer.add_callback("on_train_end", lambda t: torch.save(de_parallel(t.model).state_dict(),
                                                          os.path.join(out, f"rank{os.environ['RANK']}.pt")))
trainer.train()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(node_rank: int, rendezvous: list[str], program: list[str], log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node_rank}",
           "--nproc-per-node=1", *rendezvous, *program]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _static(port: int) -> list[str]:
    return ["--master-addr=127.0.0.1", f"--master-port={port}"]


def _c10d(port: int, run_id: str) -> list[str]:
    return ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}"]


def _wait(nodes, timeout: float = 300) -> list[int]:
    return [p.wait(timeout=timeout) for p in nodes]


def test_two_nodes_train_one_run_with_identical_weights(tiny_settings, tmp_path):
    script = tmp_path / "train_and_dump.py"
    script.write_text(RANK_DUMP)
    settings = {**tiny_settings, "epochs": 2, "val": True, "project": str(tmp_path / "runs")}
    program = [str(script), json.dumps(settings), str(tmp_path)]
    port = _free_port()
    with (tmp_path / "node0.log").open("w") as l0, (tmp_path / "node1.log").open("w") as l1:
        codes = _wait([_torchrun(0, _static(port), program, l0), _torchrun(1, _static(port), program, l1)])
    assert codes == [0, 0], (tmp_path / "node0.log").read_text()[-3000:] + (tmp_path / "node1.log").read_text()[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # one model, trained together
    assert [p.name for p in (tmp_path / "runs" / "train").iterdir()] == ["train"]  # one run folder (rank 0)
    saved = load_checkpoint(tmp_path / "runs" / "train" / "train" / "weights" / "last.pt")["model"]["state_dict"]
    assert all(torch.equal(saved[k], ranks[0][k]) for k in saved)
    rows = list(csv.DictReader((tmp_path / "runs" / "train" / "train" / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # written once, not once per node


def test_sigterm_to_one_node_stops_both_with_last_pt_and_the_run_resumes(tiny_settings, tmp_path):
    epochs = 12
    settings = {**tiny_settings, "epochs": epochs, "project": str(tmp_path / "runs")}
    train = ["-m", "rtdet", "train", *(f"{k}={v}" for k, v in settings.items())]
    run = tmp_path / "runs" / "train" / "train"
    port = _free_port()
    with (tmp_path / "node0.log").open("w") as l0, (tmp_path / "node1.log").open("w") as l1:
        nodes = [_torchrun(0, _c10d(port, "a"), train, l0), _torchrun(1, _c10d(port, "a"), train, l1)]
        deadline = time.time() + 240
        while not (run / "results.csv").is_file() and time.time() < deadline and nodes[0].poll() is None:
            time.sleep(0.05)
        nodes[1].send_signal(signal.SIGTERM)  # the scheduler preempts one node
        codes = _wait(nodes, timeout=120)
    logs = (tmp_path / "node0.log").read_text() + (tmp_path / "node1.log").read_text()
    assert all(c != 0 for c in codes), logs[-3000:]  # both ended, neither claims success
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    assert ckpt["epoch"] + 1 < epochs, "the run finished before the signal"
    assert "SIGTERM" in logs and "resume=" in logs

    port = _free_port()
    resume = ["-m", "rtdet", "train", f"resume={run / 'weights' / 'last.pt'}"]
    with (tmp_path / "resume0.log").open("w") as l0, (tmp_path / "resume1.log").open("w") as l1:
        codes = _wait([_torchrun(0, _c10d(port, "b"), resume, l0), _torchrun(1, _c10d(port, "b"), resume, l1)])
    assert codes == [0, 0], (tmp_path / "resume0.log").read_text()[-3000:]
    assert load_checkpoint(run / "weights" / "last.pt")["epoch"] == epochs - 1
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
