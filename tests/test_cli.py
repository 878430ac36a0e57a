"""Command line: key=value parsing, helpful errors, and the info / train / val / predict verbs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtdet.cli import CLIError, main, parse_args
from rtdet.engine.settings import SettingsError
from tests.tiny_models import tiny_rtdetr_yaml

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("single_thread")


def test_values_are_yaml_scalars():
    args = parse_args(["epochs=3", "amp=false", "lr0=1e-4", "name=", "device=cpu", "imgsz=320", "conf=0.5",
                       "--batch=4", "source=[a.jpg, b.jpg]"])
    assert args == {"epochs": 3, "amp": False, "lr0": 1e-4, "name": None, "device": "cpu", "imgsz": 320,
                    "conf": 0.5, "batch": 4, "source": ["a.jpg", "b.jpg"]}


def test_text_keys_keep_what_was_typed():
    """name=007 is a run name, not the number 7; name=on is a name, not YAML's boolean spelling."""
    assert parse_args(["name=007", "scale=n", "project=on", "model=3.yaml"]) == {
        "name": "007", "scale": "n", "project": "on", "model": "3.yaml"}
    assert parse_args(["name=", "exist_ok=yes", "resume=on"]) == {"name": None, "exist_ok": True, "resume": True}


def test_unknown_key_names_the_key_the_closest_keys_and_the_verb(capsys):
    with pytest.raises(SettingsError) as err:
        parse_args(["epoch=3"], "train")
    assert "'epoch'" in str(err.value) and "epochs" in str(err.value) and "train" in str(err.value)
    assert main(["train", "model=rtdetr-l.yaml", "lr=0.1"]) == 2
    msg = capsys.readouterr().err
    assert "'lr'" in msg and "lr0" in msg and "rtdet train" in msg


def test_argument_without_equals_sign():
    with pytest.raises(CLIError, match="key=value"):
        parse_args(["epochs", "3"], "train")


def test_unknown_verb_and_help(capsys):
    assert main(["trian"]) == 2
    assert "Did you mean: train" in capsys.readouterr().err
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "Usage: rtdet <verb>" in out and "predict" in out and "default.yaml" in out


def test_info_prints_the_table_and_summary(capsys):
    assert main(["info", "model=rtdetr-demo.yaml", "imgsz=64", "nc=3"]) == 0
    out = capsys.readouterr().out
    assert "RTDETRDecoder" in out
    assert "rtdetr-demo summary:" in out and "parameters" in out and "GFLOPs" in out


def test_bad_model_file_is_an_error_not_a_traceback(capsys):
    assert main(["info", "model=no-such-model.yaml"]) == 1
    assert "no-such-model.yaml" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "rtdet", "info", "model=rtdetr-demo.yaml", "imgsz=64"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "rtdetr-demo summary:" in out.stdout


def test_train_val_predict_verbs(tmp_path, capsys):
    from rtdet.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, imgsz=64, n_classes=2,
                                  size_range=(0.3, 0.6), max_objects=2)
    model = tmp_path / "tiny.yaml"
    model.write_text(tiny_rtdetr_yaml(nc=2))
    common = [f"project={tmp_path / 'runs'}", "workers=0", "verbose=false", "device=cpu"]
    assert main(["train", f"model={model}", f"data={data}", "epochs=1", "imgsz=64", "batch=2", "plots=false",
                 "train_pipeline=plain", *common]) == 0
    best = tmp_path / "runs" / "train" / "train" / "weights" / "best.pt"
    assert best.is_file()
    assert main(["val", f"model={best}", f"data={data}", *common]) == 0
    assert (tmp_path / "runs" / "val" / "val" / "predictions.json").is_file()
    assert main(["predict", f"model={best}", f"source={tmp_path / 'data' / 'images' / 'val'}", *common]) == 0
    assert "2 image(s) processed" in capsys.readouterr().out
    assert len(list((tmp_path / "runs" / "predict" / "predict").glob("*.jpg"))) == 2


def test_data_check(tmp_path, capsys):
    from rtdet.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, imgsz=64, n_classes=2)
    assert main(["data", "check", f"data={data}", "imgsz=64", "n_samples=4", f"project={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    assert "data check: OK" in out
    assert (tmp_path / "runs" / "data" / "check" / "train_samples.png").is_file()
    assert (tmp_path / "runs" / "data" / "check" / "report.json").is_file()
    assert main(["data", "check", f"data={tmp_path / 'missing.yaml'}", f"project={tmp_path / 'runs2'}"]) == 1
    assert "missing.yaml" in capsys.readouterr().err
    assert not (tmp_path / "runs2").exists()  # no empty run folder for a command that failed
    assert main(["data", "inspect", f"data={data}"]) == 2


def test_train_resume_from_the_command_line(tmp_path):
    from rtdet.data.synthetic import make_synthetic_dataset
    from rtdet.utils.checkpoint import load_checkpoint

    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, imgsz=64, n_classes=2)
    model = tmp_path / "tiny.yaml"
    model.write_text("nc: 2\nbackbone:\n  - [-1, 1, Conv, [8, 3, 4]]\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n"
                     "  - [[0, 1], 1, RTDETRDecoder, [nc, 16, 10, 2, 2, 1, 32, 0.0, None, -1, 10]]\n")
    project = tmp_path / "runs"
    common = [f"project={project}", "workers=0", "verbose=false", "val=false", "plots=false"]
    assert main(["train", f"model={model}", f"data={data}", "epochs=2", "imgsz=64", "batch=4", *common]) == 0
    last = project / "train" / "train" / "weights" / "last.pt"
    ckpt = load_checkpoint(last)
    ckpt["epoch"] = 0  # pretend the run stopped after its first epoch
    torch.save(ckpt, last)
    assert main(["train", "resume=true", f"project={project}"]) == 0  # finds the latest last.pt
    assert load_checkpoint(last)["epoch"] == 1
    assert not (project / "train" / "train2").exists()
    assert main(["train", f"data={data}"]) == 2  # neither a model nor resume


def test_a_closed_output_pipe_ends_quietly():
    """`rtdet ... | head`: when the reader goes away the command stops with 141 (128 + SIGPIPE) and no
    error line, as other command-line tools do."""
    proc = subprocess.Popen([sys.executable, "-m", "rtdet", "convert", "help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before rtdet writes
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"error" not in err, err
