"""`rtdet compare`: two tiny variants x 2 seeds x 1 epoch on the synthetic set -- every output, resume after
an interruption without retraining, and statistics equal to a hand computation."""

import csv
import json
import math

import pytest
import yaml

from rtdet.engine.compare import Compare, _labels, parse_seeds
from rtdet.engine.settings import SettingsError
from rtdet.engine.stats import mean_std, paired_t_test

pytestmark = pytest.mark.filterwarnings("ignore")


# ---------------------------------------------------------------------------------- statistics
def test_paired_t_test_equals_hand_computation():
    baseline = [0.300, 0.320, 0.310]
    variant = [0.330, 0.340, 0.345]
    # d = [0.030, 0.020, 0.035]: mean 0.028333..., deviations [0.001667, -0.008333, 0.006667]
    mean = 0.085 / 3
    sd = math.sqrt((0.030 - mean) ** 2 + (0.020 - mean) ** 2 + (0.035 - mean) ** 2) / math.sqrt(2)
    se = sd / math.sqrt(3)
    t_crit = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (table value)
    test = paired_t_test(baseline, variant)
    assert test.n == 3 and test.mean == pytest.approx(mean) and test.sd == pytest.approx(sd)
    assert test.t == pytest.approx(mean / se)
    assert (test.ci_low, test.ci_high) == (pytest.approx(mean - t_crit * se), pytest.approx(mean + t_crit * se))
    t = mean / se  # 6.425; with 2 d.f. Student's CDF is 1/2 + t / (2 sqrt(2 + t^2)), so two-sided:
    assert test.p == pytest.approx(1 - t / math.sqrt(2 + t * t))  # 0.0234
    assert test.significant and test.verdict == "better"


def test_paired_t_test_verdicts():
    noisy = paired_t_test([0.30, 0.31, 0.32], [0.31, 0.30, 0.33])  # d = [+0.01, -0.01, +0.01]
    assert noisy.ci_low < 0 < noisy.ci_high and noisy.verdict == "not significant"
    worse = paired_t_test([0.5, 0.75], [0.25, 0.5])  # identical differences: no spread, the sign decides
    assert worse.sd == 0 and worse.p == 0.0 and worse.verdict == "worse"
    one = paired_t_test([0.3], [0.4])
    assert one.significant is None and one.verdict == "n/a (1 seed)" and math.isnan(one.ci_low)
    with pytest.raises(ValueError, match="one value per seed on both sides"):
        paired_t_test([0.3, 0.4], [0.3])


def test_mean_std_is_the_sample_deviation():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(5 / 3)))
    assert mean_std([7.0]) == (7.0, 0.0)


def test_seeds_and_labels():
    assert parse_seeds(3) == [0, 1, 2] and parse_seeds([0, 7]) == [0, 7] and parse_seeds("4,5") == [4, 5]
    with pytest.raises(SettingsError, match="seeds=0: expected at least one seed"):
        parse_seeds(0)
    with pytest.raises(SettingsError, match="distinct"):
        parse_seeds([1, 1])
    assert _labels(["a/rtdetr-l.yaml", "b/rtdetr-l.yaml", "runs/x/weights/best.pt"]) == ["rtdetr-l", "rtdetr-l-2", "x"]


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture
def variants(tiny_yaml, tmp_path):
    wide = tmp_path / "rtdetr-tiny-wide.yaml"
    wide.write_text(tiny_yaml.read_text().replace("[32, 3, 2]", "[48, 3, 2]"))
    return [tiny_yaml, wide]


def _settings(variants, tiny_data, tmp_path) -> dict:
    return {"models": ",".join(map(str, variants)), "data": str(tiny_data), "epochs": 1, "seeds": 2, "imgsz": 64,
            "batch": 4, "workers": 0, "device": "cpu", "project": str(tmp_path / "runs"), "verbose": False,
            "train_pipeline": "plain", "warmup_iters": 1, "runs": 2, "warmup": 0, "plots": False}


def test_compare_writes_every_output_and_resumes_without_retraining(variants, tiny_data, tmp_path):
    settings = _settings(variants, tiny_data, tmp_path)

    def stop_third_run(trainer):  # Ctrl-C in the middle of the third run's only epoch
        if trainer.save_dir.name == "rtdetr-tiny-wide-s0" and trainer.batch_index == 0:
            trainer.request_stop()

    first = Compare(settings, callbacks={"on_train_batch_end": stop_third_run})
    with pytest.raises(KeyboardInterrupt):
        first()
    root = tmp_path / "runs" / "compare" / "compare"
    runs = {name: root / "train" / name for name in
            ("rtdetr-tiny-s0", "rtdetr-tiny-s1", "rtdetr-tiny-wide-s0", "rtdetr-tiny-wide-s1")}
    assert first.trained == ["rtdetr-tiny-s0", "rtdetr-tiny-s1", "rtdetr-tiny-wide-s0"]
    assert (runs["rtdetr-tiny-s0"] / "done.json").is_file() and (runs["rtdetr-tiny-s1"] / "done.json").is_file()
    assert (runs["rtdetr-tiny-wide-s0"] / "weights" / "last.pt").is_file()  # saved mid-epoch
    assert not (runs["rtdetr-tiny-wide-s0"] / "done.json").exists() and not runs["rtdetr-tiny-wide-s1"].exists()
    finished = {p: p.stat().st_mtime_ns for name in ("rtdetr-tiny-s0", "rtdetr-tiny-s1")
                for p in (runs[name] / "weights").glob("*.pt")}

    second = Compare(settings)
    summary = second()
    assert second.trained == ["rtdetr-tiny-wide-s0", "rtdetr-tiny-wide-s1"]  # the finished runs are reused
    assert second.resumed == ["rtdetr-tiny-wide-s0"]  # the interrupted one continues from its last.pt
    assert {p: p.stat().st_mtime_ns for p in finished} == finished

    for name in ("compare.md", "compare.csv", "per_class.csv", "compare.json", "pareto.png", "curves.png",
                 "report.html"):
        assert (root / name).is_file() and (root / name).stat().st_size > 0, name
    with (root / "compare.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["variant"] for r in table] == ["rtdetr-tiny", "rtdetr-tiny-wide"]
    assert int(table[1]["params"]) > int(table[0]["params"]) and float(table[0]["latency_ms"]) > 0
    assert table[0]["seeds"] == "2" and table[1]["verdict_mAP50-95"]
    with (root / "per_class.csv").open() as fh:
        classes = list(csv.DictReader(fh))
    assert [r["class"] for r in classes] == ["circle", "square"] and "delta rtdetr-tiny-wide" in classes[0]

    # the table is the statistics of the runs' own validation results
    evals = {name: json.loads((runs[name] / "eval.json").read_text())["metrics"] for name in runs}
    base = [evals["rtdetr-tiny-s0"]["mAP50-95"], evals["rtdetr-tiny-s1"]["mAP50-95"]]
    wide = [evals["rtdetr-tiny-wide-s0"]["mAP50-95"], evals["rtdetr-tiny-wide-s1"]["mAP50-95"]]
    row = summary["variants"][1]
    mean, std = mean_std(wide)
    assert row["mAP50-95"] == pytest.approx(mean) and row["mAP50-95_std"] == pytest.approx(std)
    assert row["delta_mAP50-95"] == pytest.approx(paired_t_test(base, wide).mean)
    md = (root / "compare.md").read_text()
    assert "rtdetr-tiny (baseline)" in md and "paired t-test over seeds" in md and "![pareto](pareto.png)" in md

    third = Compare(settings)
    third()
    assert third.trained == [] and third.resumed == []  # nothing left to train

    # every run logs into one experiment, tagged with its variant and seed (loggers chart the seeds together)
    args = yaml.safe_load((runs["rtdetr-tiny-wide-s1"] / "args.yaml").read_text())
    assert args["experiment"] == "compare-compare" and args["tags"] == {"variant": "rtdetr-tiny-wide", "seed": "1"}


def test_compare_refuses_other_settings_under_the_same_name(variants, tiny_data, tmp_path):
    settings = _settings(variants, tiny_data, tmp_path)
    root = tmp_path / "runs" / "compare" / "compare"
    root.mkdir(parents=True)
    (root / "plan.json").write_text(json.dumps({"models": [str(v) for v in variants], "train": {"epochs": 5}}))
    with pytest.raises(SettingsError, match="holds a comparison with other settings .*epochs.*name=<new name>"):
        Compare(settings)()


def test_compare_needs_two_models_and_data(tiny_yaml, tmp_path):
    with pytest.raises(SettingsError, match="two or more"):
        Compare({"models": str(tiny_yaml), "data": "x.yaml", "project": str(tmp_path)})()
    with pytest.raises(SettingsError, match="compare needs data="):
        Compare({"models": f"{tiny_yaml},{tiny_yaml}", "project": str(tmp_path)})()


def test_compare_takes_finished_checkpoints(variants, tiny_data, tmp_path):
    """Variants given as checkpoints are validated and timed, never trained."""
    from rtdet import build_model

    files = []
    for k, spec in enumerate(variants):
        path = tmp_path / f"v{k}" / "weights" / "best.pt"
        build_model(spec, nc=2, names=["circle", "square"]).save(path)
        files.append(str(path))
    settings = {**_settings(variants, tiny_data, tmp_path), "models": ",".join(files)}
    cmp = Compare(settings)
    summary = cmp()
    assert cmp.trained == [] and [r["variant"] for r in summary["variants"]] == ["v0", "v1"]
    assert summary["variants"][1]["verdict_mAP50-95"] == "n/a (1 seed)"


def test_compare_from_one_pretrained_start_reports_each_variants_share(variants, tiny_data, tmp_path):
    """pretrained= is transplanted into every variant; the table says how much of each came from it."""
    from rtdet import build_model

    source = build_model(variants[0], nc=2).save(tmp_path / "start.pt")
    settings = {**_settings(variants, tiny_data, tmp_path), "seeds": 1, "pretrained": str(source)}
    summary = Compare(settings)()
    root = tmp_path / "runs" / "compare" / "compare"
    with (root / "compare.csv").open() as fh:
        table = list(csv.DictReader(fh))
    shares = [float(r["pretrained_share"]) for r in table]
    report = json.loads((root / "train" / "rtdetr-tiny-wide-s0" / "transplant.json").read_text())
    assert shares[0] == 1.0 and shares[1] == pytest.approx(report["share"]) and 0 < shares[1] < 1
    assert [r["pretrained_share"] for r in summary["variants"]] == pytest.approx(shares)
    md = (root / "compare.md").read_text()
    assert "| from pretrained |" in md and "100% of parameters" in md and f"{100 * shares[1]:.0f}% of parameters" in md


@pytest.mark.slow
def test_compare_trains_one_run_per_device_at_once(variants, tiny_data, tmp_path):
    """devices=cpu,cpu: two `rtdet train` processes at a time; each run is an ordinary train run."""
    settings = {**_settings(variants, tiny_data, tmp_path), "devices": "cpu,cpu"}
    cmp = Compare(settings)
    summary = cmp()
    assert sorted(cmp.trained) == ["rtdetr-tiny-s0", "rtdetr-tiny-s1", "rtdetr-tiny-wide-s0", "rtdetr-tiny-wide-s1"]
    root = tmp_path / "runs" / "compare" / "compare" / "train"
    for name in cmp.trained:
        assert (root / name / "weights" / "last.pt").is_file() and (root / name / "done.json").is_file()
        assert (root / f"{name}.log").is_file()
    assert len(summary["variants"]) == 2
    assert Compare(settings)().get("trained") == []


# ---------------------------------------------------------------------------------- bad plans (issue 18)
def _cli(capsys, settings: dict) -> tuple[int, list[str]]:
    from rtdet.cli import main

    code = main(["compare", *(f"{k}={v}" for k, v in settings.items())])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_typo_in_the_last_model_stops_before_any_run_trains(variants, tiny_data, tmp_path, capsys):
    settings = {**_settings(variants, tiny_data, tmp_path), "models": f"{variants[0]},{tmp_path / 'tpyo.yaml'}"}
    code, err = _cli(capsys, settings)
    assert code == 1 and len(err) == 1 and "tpyo.yaml' not found" in err[0] and "unexpected" not in err[0]
    assert not (tmp_path / "runs").exists()  # nothing trained, no plan recorded
    code, err = _cli(capsys, {**settings, "models": f"{variants[0]},{variants[1]}", "box": 7.5})
    assert code == 2 and "'box' is a loss setting of the yolov9 family" in err[0]  # a setting, per model
    assert not (tmp_path / "runs").exists()


def test_a_corrected_plan_reuses_the_runs_that_match(variants, tiny_data, tmp_path):
    settings = {**_settings(variants, tiny_data, tmp_path), "seeds": 1}
    first = Compare(settings)
    first()
    assert first.trained == ["rtdetr-tiny-s0", "rtdetr-tiny-wide-s0"]
    root = tmp_path / "runs" / "compare" / "compare"
    # an older plan that recorded a typo (as a list of models): the corrected command is not refused
    plan = json.loads((root / "plan.json").read_text())
    (root / "plan.json").write_text(json.dumps({"models": [str(variants[0]), "tpyo.yaml"], "train": plan["train"]}))
    narrow = tmp_path / "rtdetr-tiny-narrow.yaml"
    narrow.write_text(variants[0].read_text().replace("[32, 3, 2]", "[24, 3, 2]"))
    second = Compare({**settings, "models": f"{variants[0]},{narrow}"})
    summary = second()
    assert second.trained == ["rtdetr-tiny-narrow-s0"]  # the baseline's finished run is reused
    assert [r["variant"] for r in summary["variants"]] == ["rtdetr-tiny", "rtdetr-tiny-narrow"]
    moved = tmp_path / "elsewhere" / "rtdetr-tiny-wide.yaml"  # the same label from another file: refused
    moved.parent.mkdir()
    moved.write_text(variants[0].read_text())
    with pytest.raises(SettingsError, match="holds runs of variant 'rtdetr-tiny-wide' trained from"):
        Compare({**settings, "models": f"{variants[0]},{moved}"})()


def test_a_damaged_plan_is_one_clean_line(variants, tiny_data, tmp_path, capsys):
    root = tmp_path / "runs" / "compare" / "compare"
    root.mkdir(parents=True)
    (root / "plan.json").write_text('{"models": ["a.yaml"], "tr')
    code, err = _cli(capsys, _settings(variants, tiny_data, tmp_path))
    assert code == 1 and len(err) == 1 and "plan.json: damaged" in err[0] and "unexpected" not in err[0]
    assert sorted(p.name for p in root.iterdir()) == ["plan.json"]  # nothing trained


def test_a_val_split_without_labels_gives_n_a_everywhere_and_caches_nothing(variants, tmp_path):
    import shutil

    from rtdet.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "nolabels", n_train=8, n_val=4, imgsz=64, seed=0, n_classes=2,
                                  min_objects=1, max_objects=3, size_range=(0.3, 0.6))
    shutil.rmtree(tmp_path / "nolabels" / "labels" / "val")
    settings = {**_settings(variants, data, tmp_path), "seeds": 1}
    summary = Compare(settings)()
    base, wide = summary["variants"]
    assert base["mAP50-95"] is None and wide["delta_mAP50-95"] is None and wide["verdict_mAP50-95"] == "n/a (no labels)"
    root = tmp_path / "runs" / "compare" / "compare"
    assert "n/a" in (root / "compare.md").read_text() and (root / "report.html").is_file()
    assert not list(root.glob("train/*/eval.json"))  # an unmeasured result is not cached
    again = Compare(settings)
    again()  # the rerun validates again instead of failing the same way
    assert again.trained == []


def test_compare_runs_a_dfine_beside_an_rt_detr(tiny_yaml, tiny_data, tmp_path):
    """A fourth family in the same verb: each variant trains with its own family's loss and recipe keys."""
    from tests.contract_models import TINY_DFINE_YAML

    dfine = tmp_path / "dfine-tiny.yaml"
    dfine.write_text(TINY_DFINE_YAML.replace("nc: 3", "nc: 2"))
    settings = {**_settings([tiny_yaml, dfine], tiny_data, tmp_path), "seeds": 1}
    compare = Compare(settings)
    compare()
    assert compare.trained == ["rtdetr-tiny-s0", "dfine-tiny-s0"]
    with (tmp_path / "runs" / "compare" / "compare" / "compare.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == ["rtdetr-tiny", "dfine-tiny"] and all(r["mAP50-95"] != "" for r in rows)
    assert int(rows[1]["params"]) > int(rows[0]["params"]) > 0
