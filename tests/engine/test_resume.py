"""Resume (rtdet.engine.resume): a last.pt continues in place only inside its own run folder; a copy elsewhere
continues in a new run folder and touches nothing around it; a different model or class count is refused."""

import shutil

import pytest
import torch

from rtdet.engine.resume import own_run_folder
from rtdet.engine.settings import SettingsError
from rtdet.engine.trainer import Trainer
from rtdet.utils.checkpoint import load_checkpoint


@pytest.fixture
def unfinished(tiny_settings, tiny_data, tmp_path):
    """A run of one epoch whose last.pt says it has one more epoch to go; its dataset YAML is its own copy."""
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tiny_data.parent}\ntrain: images/train\nval: images/val\nnames: [circle, square]\n")
    trainer = Trainer({**tiny_settings, "data": str(data), "epochs": 1, "name": "run"})
    trainer.train()
    ckpt = load_checkpoint(trainer.last)
    ckpt["args"]["epochs"] = 2
    torch.save(ckpt, trainer.last)
    args_yaml = trainer.save_dir / "args.yaml"
    args_yaml.write_text(args_yaml.read_text().replace("epochs: 1", "epochs: 2"))
    return trainer


def test_a_last_pt_in_its_own_run_folder_is_recognised(unfinished, tmp_path):
    ckpt = load_checkpoint(unfinished.last)
    assert own_run_folder(unfinished.last, ckpt) == unfinished.save_dir
    other = tmp_path / "other" / "weights"
    other.mkdir(parents=True)
    shutil.copy(unfinished.last, other / "last.pt")
    (other.parent / "args.yaml").write_text("epochs: 3\nseed: 9\n")  # another run's settings
    assert own_run_folder(other / "last.pt", ckpt) is None


def test_a_copied_last_pt_continues_in_a_new_folder_and_leaves_the_one_around_it_alone(unfinished, tmp_path, caplog):
    """Issue 18: resume=~/Downloads/last.pt made ~ the run folder, overwrote results.csv and args.yaml there and
    deleted the user's *.tmp files."""
    downloads = tmp_path / "home" / "Downloads"
    downloads.mkdir(parents=True)
    copy = shutil.copy(unfinished.last, downloads / "last.pt")
    mine = {downloads.parent / "results.csv": "my,table\n", downloads.parent / "args.yaml": "my: settings\n",
            downloads.parent / ".notes.txt.abc123.tmp": "draft", downloads / ".x.tmp": "draft",
            downloads / "weights.tmp": "draft"}
    for path, text in mine.items():
        path.write_text(text)
    resumed = Trainer({"resume": str(copy)})
    resumed.train()
    assert resumed.save_dir.parent == unfinished.save_dir.parent and resumed.save_dir != unfinished.save_dir
    assert load_checkpoint(resumed.last)["epoch"] == 1 and "continues in a new folder" in caplog.text
    assert all(path.read_text() == text for path, text in mine.items())
    assert sorted(p.name for p in downloads.parent.rglob("*")) == sorted(
        ["Downloads", "last.pt", *(p.name for p in mine)])


def test_resume_with_another_model_is_refused(unfinished, tiny_yolo_yaml):
    with pytest.raises(SettingsError, match=r"model=.*yolov9-tiny.yaml with resume=.*drop model= to resume"):
        Trainer({"resume": str(unfinished.last), "model": str(tiny_yolo_yaml)}).train()
    Trainer({"resume": str(unfinished.last), "model": unfinished.args["model"]}).setup()  # its own model: fine


def test_resume_after_the_class_count_changed_is_refused_at_set_up(unfinished):
    data = load_checkpoint(unfinished.last)["args"]["data"]
    with open(data) as fh:
        text = fh.read()
    with open(data, "w") as fh:
        fh.write(text.replace("names: [circle, square]", "names: [circle, square, star]"))
    before = {p: p.stat().st_mtime_ns for p in unfinished.save_dir.rglob("*")}
    with pytest.raises(SettingsError, match=r"trained for 2 classes but data=.* now names 3"):
        Trainer({"resume": str(unfinished.last)}).train()
    assert {p: p.stat().st_mtime_ns for p in unfinished.save_dir.rglob("*")} == before


def test_a_run_saved_before_beta2_existed_resumes_with_adams_default(unfinished):
    ckpt = load_checkpoint(unfinished.last)
    del ckpt["args"]["beta2"]  # last.pt files written before the setting existed
    torch.save(ckpt, unfinished.last)
    resumed = Trainer({"resume": str(unfinished.last)})
    resumed.train()
    assert load_checkpoint(resumed.last)["epoch"] == 1  # the second epoch of two ran
    assert {g["betas"][1] for g in resumed.optimizer.param_groups} == {0.999}  # the tiny run's AdamW
