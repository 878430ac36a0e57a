"""Issue 8: every bad input gets a clear error and nothing is lost -- table-driven, through the real command line.

Every case runs ``rtdet.cli.main`` in a process of its own (one driver process imports rtdet once and forks a
child per case, so the table costs seconds, not minutes): its exit status, its stderr (one clean
``rtdet <verb>: error: ...`` line, never a traceback) and the run folders it leaves are checked. A
hypothesis property test sends random ``key=value`` arguments to ``rtdet predict`` and expects exit 0 or a
clean exit 2, nothing else.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtdet.cli import main
from tests.tiny_models import tiny_rtdetr_yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_rtdetr_yaml(nc=2, queries=10, denoising=10)

# Runs each argv of a JSON list in a forked child (tests/forked_cli.py). Prints [exit status, ...] as JSON.
DRIVER = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    import rtdet.cli, rtdet.engine.trainer, rtdet.engine.validator, rtdet.engine.predictor, rtdet.demo
    import cv2, matplotlib.backends.backend_agg, matplotlib.figure, rtdet.data.check  # load once, not per child
    from rtdet.io.load import load_model
    from tests.forked_cli import run_forked
    load_model(sys.argv[4])  # builds and runs the tiny model once: kernels and registry warm (1 thread: fork-safe)
    cv2.VideoCapture(sys.argv[3]).release()
    print(json.dumps(run_forked(json.load(open(sys.argv[1])), sys.argv[2])))
""")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """What the cases need: a tiny model YAML and checkpoint, a dataset, images, broken files."""
    from rtdet.data.synthetic import make_synthetic_dataset
    from rtdet.io.load import build_model

    root = tmp_path_factory.mktemp("bad_input")
    data = make_synthetic_dataset(root / "data", n_train=4, n_val=2, imgsz=64, n_classes=2, size_range=(0.3, 0.6),
                                  max_objects=2)
    (root / "tiny.yaml").write_text(TINY)
    torch.manual_seed(0)
    build_model(str(root / "tiny.yaml")).save(root / "tiny.pt")
    cv2.imwrite(str(root / "img.jpg"), np.full((48, 64, 3), 90, np.uint8))
    writer = cv2.VideoWriter(str(root / "good.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (48, 32))
    for k in range(6):
        writer.write(np.full((32, 48, 3), 40 * k, np.uint8))
    writer.release()
    video = (root / "good.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(video[: len(video) // 2])
    (root / "junk.mp4").write_bytes(os.urandom(3000))
    torch.save({"model": object()}, root / "objects.pt")
    (root / "half.pt").write_bytes((root / "tiny.pt").read_bytes()[:3000])
    nolabels = root / "nolabels"
    (nolabels / "images").mkdir(parents=True)
    for k in range(3):
        cv2.imwrite(str(nolabels / "images" / f"{k}.jpg"), np.full((32, 32, 3), 60 * k, np.uint8))
    (nolabels / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [a]\n")
    for name, text in BAD_YAMLS.items():
        (root / f"{name}.yaml").write_text(text)
    return {"root": root, "data": str(data), "yaml": str(root / "tiny.yaml"), "ckpt": str(root / "tiny.pt"),
            "img": str(root / "img.jpg")}


def _yaml(first_row: str, top: str = "nc: 2") -> str:
    return TINY.replace("nc: 2", top).replace("  - [-1, 1, Conv, [8, 3, 2]]", f"  - {first_row}", 1)


BAD_YAMLS = {  # issue 8 section 2, each seen raw before
    "nc_negative": _yaml("[-1, 1, Conv, [8, 3, 2]]", "nc: -1"),
    "nc_zero": _yaml("[-1, 1, Conv, [8, 3, 2]]", "nc: 0"),
    "nc_text": _yaml("[-1, 1, Conv, [8, 3, 2]]", 'nc: "abc"'),
    "stride_zero": _yaml("[-1, 1, Conv, [8, 3, 0]]"),
    "channels_negative": _yaml("[-1, 1, Conv, [-8, 3, 2]]"),
    "channels_text": _yaml('[-1, 1, Conv, ["abc", 3, 2]]'),
    "channels_fraction": _yaml("[-1, 1, Conv, [32.5, 3, 2]]"),
    "activation_module": _yaml("[-1, 1, Conv, [8, 3, 2]]", "nc: 2\nactivation: nn.Module"),
    "activation_sequential": _yaml("[-1, 1, Conv, [8, 3, 2]]", "nc: 2\nactivation: nn.Sequential(1)"),
    "module_row": _yaml("[-1, 1, nn.Module, []]"),
    "huge_repeats": _yaml("[-1, 1000000000, Conv, [8, 3, 2]]"),
    "huge_blocks": _yaml("[-1, 1, ResNetLayer, [3, 64, 1, False, 100000]]"),
}


def _cases(w: dict) -> list[dict]:
    """(name, argv, exit status, text the error must contain). ``{P}`` is the case's own project folder."""
    train = ["train", f"model={w['yaml']}", f"data={w['data']}", "imgsz=64", "workers=0", "device=cpu",
             "project={P}", "verbose=false"]
    predict = ["predict", f"model={w['ckpt']}", "device=cpu", "project={P}", "verbose=false"]
    root = w["root"]
    rows = [
        # section 1: settings, checked before anything runs, exit 2
        *[(f"train {kv}", [*train, kv], 2, kv.split("=")[0] + "=") for kv in (
            "epochs=abc", "imgsz=abc", "patience=abc", "conf=abc", "iou=abc", "lr0=nan", "lr0=.nan", "optimizer=Foo",
            "scheduler=bogus", "epochs=-1", "exist_ok=maybe", "batch=0", "batch=-3", "fraction=0", "workers=-1",
            "imgsz=0", "conf=2", "conf=.nan", "max_det=-5", "max_det=0", "val=1", "amp=maybe")],
        ("train device=cuda on a CPU machine", [*train, "device=cuda"], 2, "use device=cpu"),
        ("train device=7", [*train, "device=7"], 2, "device='7'"),
        ("train unknown key", [*train, "epoch=3"], 2, "Did you mean: epochs"),
        ("demo data=x.yaml", ["demo", "data=x.yaml", "project={P}"], 2, "data=x.yaml: not a demo setting"),
        ("demo epochs=abc", ["demo", "epochs=abc", "project={P}"], 2, "epochs='abc'"),
        ("predict conf=2", [*predict, f"source={w['img']}", "conf=2"], 2, "conf=2"),
        ("predict max_det=0", [*predict, f"source={w['img']}", "max_det=0"], 2, "max_det=0"),
        ("info nc=0", ["info", f"model={w['yaml']}", "nc=0", "imgsz=64"], 2, "nc=0"),
        ("val batch=-1", ["val", f"model={w['ckpt']}", f"data={w['data']}", "batch=-1", "project={P}"], 2, "batch=-1"),
        ("not key=value", ["train", "epochs", "3"], 2, "key=value"),
        ("unknown verb", ["trian"], 2, "Did you mean: train"),
        ("convert verbose=maybe", ["convert", f"source={w['ckpt']}", "verbose=maybe"], 2, "verbose='maybe'"),
        ("convert unknown key", ["convert", f"source={w['ckpt']}", "formt=auto"], 2, "Did you mean format="),
        # section 2: model YAMLs, exit 1 naming the file and the row
        *[(f"info {name}", ["info", f"model={root / (name + '.yaml')}", "imgsz=64"], 1, f"{name}.yaml")
          for name in BAD_YAMLS],
        # section 3 and 4: files
        ("predict corrupt video", [*predict, f"source={root / 'junk.mp4'}"], 1, "junk.mp4': OpenCV cannot open"),
        ("predict truncated video", [*predict, f"source={root / 'cut.mp4'}"], 1, "cut.mp4': OpenCV cannot"),
        ("predict missing source", [*predict, f"source={root / 'nope.jpg'}"], 1, "no such file"),
        ("val a checkpoint with objects", ["val", f"model={root / 'objects.pt'}", f"data={w['data']}",
                                           "project={P}"], 1, "objects.pt: not a checkpoint rtdet knows"),
        ("val a truncated checkpoint", ["val", f"model={root / 'half.pt'}", f"data={w['data']}", "project={P}"],
         1, "half.pt: not a torch checkpoint"),
        ("train on a set without images", [*train[:2], f"data={root / 'nolabels' / 'missing.yaml'}", *train[3:]],
         1, "not found"),
        ("data check of a set without labels", ["data", "check", f"data={root / 'nolabels' / 'data.yaml'}",
                                                "imgsz=32", "n_samples=1", "project={P}"], 1, None),
    ]
    return [{"name": n, "argv": a, "code": c, "text": t} for n, a, c, t in rows]


def test_every_bad_input_is_one_clean_error_with_the_right_exit_status_and_no_run_folder(world, tmp_path):
    cases = _cases(world)
    for i, case in enumerate(cases):
        case["project"] = str(tmp_path / f"p{i}")
        case["argv"] = [a.replace("{P}", case["project"]) for a in case["argv"]]
    (tmp_path / "cases.json").write_text(json.dumps([c["argv"] for c in cases]))
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "cases.json"), str(out),
                           str(world["root"] / "good.mp4"), world["ckpt"]],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    failures = []
    for i, (case, code) in enumerate(zip(cases, codes)):
        err = (out / f"{i}.err").read_text()
        errors = [line for line in err.splitlines() if ": error: " in line]
        verb = case["argv"][0]
        problems = []
        if code != case["code"]:
            problems.append(f"exit {code}, expected {case['code']}")
        if "Traceback" in err:
            problems.append("a traceback")
        if case["code"] == 2 and (len(errors) != 1 or not errors[0].startswith(f"rtdet {verb}: error: ")):
            problems.append(f"not one clean error line: {errors}")
        if case["text"] and case["text"] not in err:
            problems.append(f"{case['text']!r} not in the message")
        if "weights_only" in err:
            problems.append("quotes torch's weights_only advice")
        project = Path(case["project"])
        if case["name"] != "data check of a set without labels" and project.exists():
            problems.append(f"left a run folder: {sorted(str(p) for p in project.rglob('*'))[:3]}")
        if problems:
            failures.append(f"{case['name']}: {'; '.join(problems)}\n    stderr: {err.strip()[:500]}")
    assert not failures, "\n".join(failures)
    verdict = (out / f"{len(cases) - 1}.out").read_text()  # the data check: verdict, count and status agree
    assert "none of its 3 images has a labelled box" in verdict and "data check: 2 problems found" in verdict


def test_a_loss_key_of_another_family_names_that_family(world, tmp_path, capsys):
    """Once the model is known, only its own family's loss keys are accepted (exit 2, no run folder)."""
    from rtdet.families import Family, register_family, unregister_family
    from rtdet.losses.base import Criterion
    from rtdet.nn.heads.base import Decoded, DetectionHead
    from rtdet.nn.registry import register, unregister
    from rtdet.utils.schema import Setting

    class ToyLoss(Criterion):
        SETTINGS = (Setting("toy_gain", 1.0, float, "toy loss weight", low=0.0),)

    @register(channels="head")
    class BadInputToyHead(DetectionHead):
        family = "badinputtoy"

        def __init__(self, nc, ch):
            super().__init__()
            self.nc, self.conv = nc, torch.nn.Conv2d(ch[0], nc, 1)

        def forward(self, feats, targets=None):
            return self.conv(feats[0]).flatten(2)

        def decode(self, outputs, img_shape):
            s = outputs.sigmoid().transpose(1, 2)
            return Decoded(torch.zeros(*s.shape[:2], 4), s)

    register_family(Family(name="badinputtoy", heads=(BadInputToyHead,), criterion=ToyLoss))

    toy = tmp_path / "toy.yaml"
    toy.write_text("nc: 2\nbackbone:\n  - [-1, 1, Conv, [8, 3, 2]]\nhead:\n  - [[0], 1, BadInputToyHead, [nc]]\n")
    try:
        code = main(["train", f"model={toy}", f"data={world['data']}", "imgsz=64", "workers=0", "device=cpu",
                     f"project={tmp_path / 'runs'}", "loss_giou=3"])
    finally:
        unregister_family("badinputtoy")
        unregister("BadInputToyHead")
    err = capsys.readouterr().err
    assert code == 2 and "'loss_giou' is a loss setting of the dfine / rtdetr family" in err and "badinputtoy" in err
    assert "toy_gain" in err and not (tmp_path / "runs").exists()


# -------------------------------------------------------------------------- property: random key=value
def _valid_text(setting):
    """A strategy of command-line texts that the setting accepts (so that many runs really run)."""
    from hypothesis import strategies as st

    if setting.choices:
        return st.sampled_from(setting.choices)
    kinds = setting.kinds
    if bool in kinds:
        return st.sampled_from(["true", "false"])
    if int in kinds or float in kinds:
        low = -1e6 if setting.low is None else setting.low + (1e-6 if setting.low_open else 0)
        high = 1e6 if setting.high is None else setting.high - (1e-6 if setting.high_open else 0)
        if int in kinds:
            return st.integers(int(-(-low // 1)), int(min(high, 10**6))).map(str)
        return st.floats(low, high).map(repr)
    if setting.name == "device":
        return st.sampled_from(["cpu", ""])
    return st.text(alphabet="abcxyz019", min_size=1, max_size=6)


def _cli_arguments():
    """Random key=value tokens: keys of the schema with values they accept or values of every YAML shape
    and garbage, and keys that do not exist. Keys naming files (model, source, data, ...) are left out; their
    errors are the table's business. imgsz is bounded (a valid 8192 is an 8192x8192 forward, not a test)."""
    from hypothesis import strategies as st

    from rtdet.engine.settings import schema

    files = {"model", "data", "source", "pretrained", "resume", "project", "train_pipeline", "val_pipeline", "name"}
    table = {k: v for k, v in schema().items() if k not in files}
    garbage = st.one_of(
        st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["true", "false", "maybe", "", "none", "nan", ".nan", ".inf", "[1, 2]", "{a: 1}", "cpu",
                         "0", "cuda", "cuda:1", "-1", "1e-4", "abc", "0,1", "auto", "3.0", "[]"]),
        st.text(max_size=8),
    )

    def value(key):
        if key == "imgsz":
            return st.one_of(st.integers(32, 96).map(str), st.sampled_from(["0", "-32", "1000000", "abc", "64.5"]))
        valid = _valid_text(table[key])
        return st.one_of(valid, valid, valid, valid, valid, garbage)

    known = st.sampled_from(sorted(table)).flatmap(lambda k: value(k).map(lambda v: f"{k}={v}"))
    unknown = st.tuples(st.text(min_size=1, max_size=6).filter(lambda k: "=" not in k), garbage).map(
        lambda kv: f"{kv[0]}={kv[1]}")
    return st.lists(st.one_of(known, known, known, known, known, known, unknown), max_size=3)


def test_random_cli_arguments_run_or_exit_2_cleanly(world, tmp_path, capsys):
    """Property (issue 8): `rtdet predict` with random key=value arguments exits 0 or exits 2 with one
    `rtdet predict: error:` line per problem; no exception ever escapes. Derandomised; 40 runs, of which
    about a third run to the end."""
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(_cli_arguments())
    def check(tokens):
        capsys.readouterr()
        code = main(["predict", f"model={world['ckpt']}", f"source={world['img']}", f"project={tmp_path}",
                     "exist_ok=true", *tokens])
        err = capsys.readouterr().err
        assert code in (0, 2), (tokens, code, err)
        if code == 2:
            lines = err.strip().splitlines()
            assert lines and all(line.startswith("rtdet predict: error: ") for line in lines), (tokens, err)

    check()
