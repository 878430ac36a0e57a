"""benchmarks/gpu.py on a machine without CUDA: its arguments are checked, and it stops with one line."""

import os
import subprocess
import sys

import pytest
import torch

from tests.benchmarks.scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    return load_script("gpu")


def test_arguments_are_parsed_and_checked(gpu, tmp_path):
    args = gpu.parse_args(["--models", "rtdetr-l.yaml, rtmdet-s.yaml", "--imgsz", "320", "--steps", "5",
                           "--out", str(tmp_path / "gpu.md")])
    assert args.models == ["rtdetr-l.yaml", "rtmdet-s.yaml"] and args.imgsz == 320 and args.steps == 5
    assert gpu.parse_args([]).models == gpu.DEFAULT_MODELS
    for argv, match in ((["--imgsz", "100"], "--imgsz 100: expected a multiple of 32"),
                        (["--steps", "0"], "--steps 0"), (["--models", ","], "--models is empty"),
                        (["--models", "no-such-model.yaml"], "--models no-such-model.yaml"),
                        (["--out", str(tmp_path / "missing" / "x.md")], "does not exist")):
        with pytest.raises(gpu.UsageError, match=match):
            gpu.parse_args(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the message of a machine without CUDA")
def test_without_cuda_it_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--models", "rtmdet-s.yaml"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_every_section_runs_on_the_cpu_in_smoke_mode(tmp_path):
    """--cpu-smoke runs the script's code end to end on the CPU (gloo instead of NCCL, no CUDA calls), so a
    GPU run does not fail on a typo; its figures are meaningless."""
    from tests.tiny_models import tiny_rtdetr_yaml

    model = tmp_path / "tiny.yaml"
    model.write_text(tiny_rtdetr_yaml(nc=4))
    out = tmp_path / "gpu.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--models", str(model), "--imgsz", "64",
                           "--steps", "3", "--batch", "2", "--timed-steps", "1", "--tiny-model", str(model),
                           "--tiny-steps", "2", "--tiny-imgsz", "64", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for expected in ("| fp32 |", "| AMP bf16, channels_last |", "all finite", "DDP over gloo",
                     "same within tolerance", "ONNX Runtime, CPU provider (no CUDA provider here)"):
        assert expected in text, (expected, text)
