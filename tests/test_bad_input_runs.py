"""Issue 18, sections 1, 4 and 5: run identity, no empty run folder after a failure, model YAMLs whose first
forward fails -- table-driven, through the real command line.

As in tests/test_bad_input.py, one driver process imports rtdet once and forks a child per case. A case may
inject a fault into its child (a signal or a full disk in the middle of an export, a full disk when val
writes its results), so that interruptions are tested without timing races. Each case is checked for its
exit status, one clean error line naming what was wrong, no "unexpected" error, no run folder left behind
(or, for the cases that succeed, the folder they made), and the user's files unchanged.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.tiny_models import tiny_rtdetr_yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_rtdetr_yaml(nc=2, queries=10, denoising=10)

DRIVER = textwrap.dedent("""
    import errno, json, os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import rtdet.cli, rtdet.engine.trainer, rtdet.engine.validator, rtdet.engine.exporter, rtdet.engine.benchmark
    from rtdet.io.load import load_model
    from tests.forked_cli import run_forked
    load_model(sys.argv[3])  # builds and runs the tiny model once: kernels and registry warm (1 thread: fork-safe)

    def full_disk(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def half_written_then(fault):  # an export that dies after its temporary was created beside the file
        def export(model, file, *args, **kwargs):
            Path(file).with_name(f".{Path(file).name}.k3j2h1yz.rtdet-tmp").write_bytes(b"half an onnx")
            fault(file)
        return export

    FAULTS = {
        "export SIGTERM": lambda: setattr(rtdet.engine.exporter, "export_onnx", half_written_then(
            lambda f: os.kill(os.getpid(), signal.SIGTERM))),
        "export SIGINT": lambda: setattr(rtdet.engine.exporter, "export_onnx", half_written_then(
            lambda f: os.kill(os.getpid(), signal.SIGINT))),
        "export full disk": lambda: setattr(rtdet.engine.exporter, "export_onnx", half_written_then(full_disk)),
        "val full disk": lambda: setattr(rtdet.engine.validator, "save_predictions_json",
                                         lambda path, preds: full_disk(path)),
    }
    cases = json.load(open(sys.argv[1]))
    codes = run_forked([argv for argv, _ in cases], sys.argv[2], [FAULTS[f] if f else None for _, f in cases])
    print(json.dumps(codes))
""")


def _yaml(row: str, extra_row: str | None = None) -> str:
    text = TINY.replace("  - [-1, 1, Conv, [8, 3, 2]]", f"  - {row}", 1)
    if extra_row:  # one more backbone row after row 3
        text = text.replace("head:\n", f"  - {extra_row}\nhead:\n", 1)
    return text


BAD_YAMLS = {  # issue 18 section 5: the first forward fails
    "stride0": _yaml("[-1, 1, Conv, [8, 3, 0]]"),
    "kernel0": _yaml("[-1, 1, Conv, [8, 0, 2]]"),
    "concat9": _yaml("[-1, 1, Conv, [8, 3, 2]]", "[[2, 3], 1, Concat, [9]]"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model YAML and checkpoint, a dataset, a foreign file, and an unfinished training run whose
    dataset later names three classes."""
    from rtdet.data.synthetic import make_synthetic_dataset
    from rtdet.engine.trainer import Trainer
    from rtdet.io.load import build_model
    from rtdet.utils.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("runs_input")
    data = make_synthetic_dataset(root / "data", n_train=4, n_val=2, imgsz=64, n_classes=2, size_range=(0.3, 0.6),
                                  max_objects=2)
    (root / "tiny.yaml").write_text(TINY)
    for name, text in BAD_YAMLS.items():
        (root / f"{name}.yaml").write_text(text)
    torch.manual_seed(0)
    build_model(str(root / "tiny.yaml")).save(root / "tiny.pt")
    torch.save({"model": object()}, root / "foreign.pt")
    changed = root / "changed.yaml"  # the run's dataset: two classes when trained, three afterwards
    changed.write_text(f"path: {data.parent}\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    run = Trainer({"model": str(root / "tiny.yaml"), "data": str(changed), "imgsz": 64, "batch": 2, "epochs": 1,
                   "workers": 0, "device": "cpu", "project": str(root / "user_runs"), "val": False, "plots": False,
                   "verbose": False, "train_pipeline": "plain"})
    run.train()
    ckpt = load_checkpoint(run.last)
    ckpt["args"]["epochs"] = 2  # unfinished: resumable
    torch.save(ckpt, run.last)
    changed.write_text(changed.read_text().replace("[a, b]", "[a, b, c]"))
    return {"root": root, "data": str(data), "yaml": str(root / "tiny.yaml"), "ckpt": str(root / "tiny.pt"),
            "last": str(run.last)}


def _cases(w: dict) -> list[dict]:
    """(name, argv, fault, exit status, text the output must contain, whether the case leaves a run folder)."""
    root = w["root"]
    model, data = f"model={w['ckpt']}", f"data={w['data']}"
    common = ["project={P}", "device=cpu", "verbose=false"]
    export = ["export", model, "imgsz=64", *common]
    rows = [
        # section 1: a run name is one folder name; resume refuses another model and a changed class count
        *[(f"{verb} name={name}", [verb, model, *extra, f"name={name}", *common], None, 2, f"name='{name}'", False)
          for verb, extra, name in (("train", [data], "../../x"), ("val", [data], "a/b"),
                                    ("predict", [f"source={w['root']}"], ".."), ("export", [], "."),
                                    ("benchmark", [], "../up"))],
        ("resume with another model", ["train", f"resume={w['last']}", f"model={root / 'kernel0.yaml'}", *common],
         None, 2, "drop model= to resume", False),
        ("resume after the class count changed", ["train", f"resume={w['last']}", *common], None, 2,
         "trained for 2 classes but data=", False),
        # section 4: refused or interrupted runs leave no folder
        ("export half=true on a CPU", [*export, "half=true"], None, 2, "half=true: fp16", False),
        ("val half=true on a CPU", ["val", model, data, "half=true", *common], None, 2, "half=true: fp16", False),
        ("predict half=true on a CPU", ["predict", model, f"source={w['root']}", "half=true", *common], None, 2,
         "half=true: fp16", False),
        ("benchmark half=true on a CPU", ["benchmark", model, "half=true", *common], None, 2, "half=true", False),
        ("export interrupted by SIGTERM", export, "export SIGTERM", 143, "terminated (SIGTERM)", False),
        ("export interrupted by SIGINT", export, "export SIGINT", 130, "interrupted", False),
        ("export on a full disk", export, "export full disk", 1, "No space left on device", False),
        ("benchmark of a missing model", ["benchmark", f"model={root / 'nope.pt'}", *common], None, 1,
         "nope.pt", False),
        ("benchmark of a foreign file", ["benchmark", f"model={root / 'foreign.pt'}", *common], None, 1,
         "foreign.pt", False),
        ("val name=x of a missing model", ["val", f"model={root / 'nope.pt'}", data, "name=x", *common], None, 1,
         "nope.pt", False),
        ("val name=x on a full disk", ["val", model, data, "name=x", "imgsz=64", *common], "val full disk", 1,
         "No space left on device", False),
        # section 5: the first forward fails: the row, its arguments, in every verb
        ("info stride 0", ["info", f"model={root / 'stride0.yaml'}"], None, 1,
         "stride0.yaml: row 0 (Conv): its arguments [3, 8, 3, 0] fail", False),
        ("train kernel 0", ["train", f"model={root / 'kernel0.yaml'}", data, "imgsz=64", *common], None, 1,
         "kernel0.yaml: row 0 (Conv): its arguments [3, 8, 0, 2] fail", False),
        ("export concat over dimension 9", ["export", f"model={root / 'concat9.yaml'}", *common], None, 1,
         "concat9.yaml: row 4 (Concat): its arguments [9] fail", False),
        ("benchmark stride 0", ["benchmark", f"model={root / 'stride0.yaml'}", *common], None, 1,
         "stride0.yaml: row 0 (Conv)", False),
        ("val kernel 0", ["val", f"model={root / 'kernel0.yaml'}", data, *common], None, 1,
         "kernel0.yaml: row 0 (Conv)", False),
        # section 5: standalone val prints the summary line training prints
        ("val prints the mAP summary", ["val", model, data, "imgsz=64", "project={P}", "device=cpu"], None, 0,
         "val: mAP50-95 ", True),
    ]
    return [dict(zip(("name", "argv", "fault", "code", "text", "folder"), r)) for r in rows]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_runs_refused_or_interrupted_leave_nothing_behind(world, tmp_path):
    cases = _cases(world)
    for i, case in enumerate(cases):
        case["project"] = str(tmp_path / "p" / f"{i}")
        case["argv"] = [a.replace("{P}", case["project"]) for a in case["argv"]]
    (tmp_path / "cases.json").write_text(json.dumps([[c["argv"], c["fault"]] for c in cases]))
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "out"
    out.mkdir()
    users = _files(world["root"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "cases.json"), str(out),
                           world["ckpt"]], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    failures = []
    for i, (case, code) in enumerate(zip(cases, codes)):
        err, said = (out / f"{i}.err").read_text(), (out / f"{i}.out").read_text() + (out / f"{i}.err").read_text()
        errors = [line for line in err.splitlines() if ": error: " in line]
        problems = []
        if code != case["code"]:
            problems.append(f"exit {code}, expected {case['code']}")
        if "Traceback" in err or "unexpected" in err or "Warning" in err:
            problems.append("a traceback, an unexpected error or a warning")
        if case["code"] in (1, 2) and len(errors) != 1:
            problems.append(f"not one clean error line: {errors}")
        if case["text"] not in said:
            problems.append(f"{case['text']!r} not in the output")
        project = Path(case["project"])
        left = sorted(str(p.relative_to(project)) for p in project.rglob("*")) if project.exists() else []
        if case["folder"] and not any(p.count("/") == 1 for p in left):
            problems.append("made no run folder")
        if not case["folder"] and project.exists():
            problems.append(f"left a folder: {left[:3]}")
        if problems:
            failures.append(f"{case['name']}: {'; '.join(problems)}\n    output: {said.strip()[-600:]}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "p" / "x").exists()  # name=../../x wrote nothing outside the project
    assert _files(world["root"]) == users  # the user's files (and the resumed run's folder) unchanged
