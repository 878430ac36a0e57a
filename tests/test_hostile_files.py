"""Issue 18 sections 2 and 3: files that are bombs, lie about themselves or break a library underneath --
table-driven, through the real command line (the driver of tests/test_bad_input.py: one forked child per
case). Each case: its exit status, one clean ``rtdet <verb>: error:`` line naming the file (never
"unexpected", never a traceback), the text that says why, and the user's files unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.engine.test_onnx_checks import dense_file
from tests.io.hostile import P, tensor, torch_zip
from tests.test_bad_input import DRIVER, ROOT, TINY


def _set_bomb() -> bytes:  # {'model': set(range(10**9))}: 2.6 GB from a few hundred bytes, before
    return (P.proto() + P.EMPTY_DICT + P.text("model") + P.global_("builtins", "set") + P.global_("builtins", "range")
            + P.int_(10**9) + P.TUPLE1 + P.REDUCE + P.TUPLE1 + P.REDUCE + P.SETITEM + P.STOP)


def _shared_meta(levels: int = 40) -> bytes:  # an mmdetection file whose meta is a tree of shared references
    ops = P.proto() + P.EMPTY_LIST + P.text("x") + P.APPEND + P.put(0) + P.POP
    for i in range(1, levels + 1):
        ops += P.EMPTY_LIST + P.MARK + P.get(i - 1) + P.get(i - 1) + P.APPENDS + P.put(i) + P.POP
    return (ops + P.EMPTY_DICT + P.text("meta") + P.EMPTY_DICT + P.text("cfg") + P.get(levels) + P.SETITEM + P.SETITEM
            + P.text("state_dict") + P.EMPTY_DICT + P.SETITEM + P.STOP)


def _inflating() -> tuple[bytes, dict]:  # a tensor record of 300 MiB of zeros, deflated to a few hundred KB
    size = 300 << 20
    pkl = P.proto() + P.EMPTY_DICT + P.text("w") + tensor("0", size, (size,), (1,), "ByteStorage") + P.SETITEM + P.STOP
    return pkl, {"0": (size, 1 << 20)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from rtdet.data.synthetic import make_synthetic_dataset
    from rtdet.io.load import build_model

    root = tmp_path_factory.mktemp("hostile")
    data = make_synthetic_dataset(root / "data", n_train=2, n_val=2, imgsz=64, n_classes=2, size_range=(0.3, 0.6),
                                  max_objects=2)
    (root / "tiny.yaml").write_text(TINY)
    torch.manual_seed(0)
    build_model(str(root / "tiny.yaml")).save(root / "tiny.pt")
    good = torch.load(root / "tiny.pt", weights_only=True)
    cv2.imwrite(str(root / "img.jpg"), np.full((48, 64, 3), 90, np.uint8))
    nolabels = root / "nolabels"
    (nolabels / "images").mkdir(parents=True)
    for k in range(2):
        cv2.imwrite(str(nolabels / "images" / f"{k}.jpg"), np.full((32, 32, 3), 60 * k, np.uint8))
    (nolabels / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [a, b]\n")
    torch_zip(root / "set.pt", _set_bomb())
    torch_zip(root / "meta.pth", _shared_meta())
    pkl, deflated = _inflating()
    torch_zip(root / "inflate.pt", pkl, deflated=deflated)
    for name, args in {"imgsz": {"imgsz": 99999}, "letterbox": {"val_pipeline": [{"name": "LetterBox", "imgsz": 8000}]},
                       "pathpipe": {"val_pipeline": "/etc/hosts"}}.items():
        torch.save({**good, "args": args}, root / f"args_{name}.pt")
    shapes = {**good, "model": {**good["model"], "state_dict": dict(good["model"]["state_dict"])}}
    key = next(k for k, v in shapes["model"]["state_dict"].items() if v.dim() == 4)
    shapes["model"]["state_dict"][key] = torch.zeros(3, 3, 3, 3)
    torch.save(shapes, root / "shapes.pt")
    (root / "m").mkdir()
    dense_file(root / "m" / "size.onnx", meta={"imgsz": [32, 32]})
    dense_file(root / "m" / "op.onnx", op="FooBar")
    dense_file(root / "m" / "external.onnx", external="../secret.bin")
    (root / "secret.bin").write_bytes(np.ones(84 * 2, np.float32).tobytes())
    return {"root": root, "data": str(data), "key": key}


def _cases(w: dict) -> list[tuple[str, list[str], int, str]]:
    """(name, argv, exit status, text the output must hold). ``{P}`` is the case's own project folder."""
    r = w["root"]
    predict = ["predict", f"source={r / 'img.jpg'}", "device=cpu", "project={P}", "verbose=false"]
    return [
        # section 2: the restricted reader, bounded
        ("a set built from a huge range", ["val", f"model={r / 'set.pt'}", f"data={w['data']}", "project={P}"], 1,
         "set.pt: a set holds 1000000000 items"),
        ("mmdetection meta of shared references", [*predict, f"model={r / 'meta.pth'}"], 1,
         "meta.pth: its content expands to"),
        ("a record that inflates", [*predict, f"model={r / 'inflate.pt'}"], 1, "archive/data/0 inflates to"),
        # settings stored in model files: the command line's schema and ranges
        ("stored imgsz out of range", [*predict, f"model={r / 'args_imgsz.pt'}"], 1,
         "args_imgsz.pt: the setting stored in the file is wrong: imgsz=99999"),
        ("stored pipeline letterboxing to 8000 px", [*predict, f"model={r / 'args_letterbox.pt'}"], 1,
         "LetterBox: imgsz=8000 is larger than the run's imgsz=640"),
        ("stored pipeline naming a path", [*predict, f"model={r / 'args_pathpipe.pt'}"], 1,
         "val_pipeline='/etc/hosts' is not a built-in pipeline"),
        ("the user overrides a bad stored setting", [*predict, f"model={r / 'args_imgsz.pt'}", "imgsz=64"], 0, ""),
        # section 3: files that lie, libraries that refuse
        ("tensor shapes that do not fit", ["val", f"model={r / 'shapes.pt'}", f"data={w['data']}", "project={P}"], 1,
         f"shapes.pt: {w['key']} has shape (3, 3, 3, 3)"),
        ("onnx metadata vs graph", [*predict, f"model={r / 'm' / 'size.onnx'}"], 1,
         "size.onnx: its metadata imgsz=[32, 32] does not match the graph's input size 64x64"),
        ("onnx unknown op", [*predict, f"model={r / 'm' / 'op.onnx'}"], 1, "uses the operation FooBar"),
        ("onnx external data outside", [*predict, f"model={r / 'm' / 'external.onnx'}"], 1,
         "its external data lies outside the model's folder"),
    ]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "projects" not in p.parts}


@pytest.mark.slow  # about 60 s on two loaded cores: the model is loaded and run in a dozen children
def test_hostile_and_lying_files_are_one_clean_error_and_change_nothing(world, tmp_path):
    cases = _cases(world)
    argvs = [[a.replace("{P}", str(tmp_path / "projects" / f"p{i}")) for a in argv]
             for i, (_, argv, _, _) in enumerate(cases)]
    (tmp_path / "cases.json").write_text(json.dumps(argvs))
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "out"
    out.mkdir()
    video = tmp_path / "v.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (48, 32))
    writer.write(np.zeros((32, 48, 3), np.uint8))
    writer.release()
    before = _digest(world["root"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "cases.json"), str(out),
                           str(video), str(world["root"] / "tiny.pt")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    failures = []
    for i, ((name, argv, code, text), got) in enumerate(zip(cases, codes)):
        err, stdout = (out / f"{i}.err").read_text(), (out / f"{i}.out").read_text()
        errors = [line for line in err.splitlines() if ": error: " in line]
        problems = []
        if got != code:
            problems.append(f"exit {got}, expected {code}")
        if "Traceback" in err or "unexpected" in err:
            problems.append("a traceback or an unexpected error")
        if code and (len(errors) != 1 or not errors[0].startswith(f"rtdet {argv[0]}: error: ")):
            problems.append(f"not one clean error line: {errors}")
        if text and text not in err + stdout:
            problems.append(f"{text!r} not in the output")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}\n    stderr: {err.strip()[-600:]}")
    assert not failures, "\n".join(failures)
    assert _digest(world["root"]) == before  # the user's files: every byte as it was


@pytest.mark.slow
def test_a_val_split_without_labels_reports_n_a_in_benchmark_and_int8_export(world, tmp_path):
    """mAP is not available without labelled boxes: "n/a" in the benchmark table and the int8 line."""
    nolabels = world["root"] / "nolabels" / "data.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = [f"model={world['root'] / 'tiny.pt'}", f"data={nolabels}", "imgsz=64", f"project={tmp_path}"]
    for argv, text in ((["benchmark", *common, "runs=1", "warmup=0", "formats=pytorch"], "| n/a | n/a |"),
                       (["export", *common, "int8=true"], "mAP50-95 n/a (no labelled boxes in the val split)")):
        done = subprocess.run([sys.executable, "-m", "rtdet", *argv], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0 and text in done.stdout + done.stderr, done.stderr[-2000:]
        assert "unexpected" not in done.stderr
