"""benchmarks/demo_race.py's pure parts: --set parsing and the over-the-seeds summary (no demo is run)."""

import pytest

from tests.benchmarks.scripts import load_script


@pytest.fixture(scope="module")
def race():
    return load_script("demo_race")


def _run(model: str, map50: float, map5095: float, cpu_s: float) -> dict:
    return {"model": model, "settings": {}, "mAP50": map50, "mAP50-95": map5095, "cpu_s": cpu_s, "wall_s": cpu_s,
            "per_epoch": [(map50, map5095)]}


def test_set_values_are_read_per_model_and_a_bad_one_says_the_form(race):
    sets = race.parse_sets(["dfine-demo.yaml:loss_fgl=0.15", "dfine-demo.yaml:loss=vfl", "rtdetr-demo.yaml:epochs=6"])
    assert sets == {"dfine-demo.yaml": {"loss_fgl": 0.15, "loss": "vfl"}, "rtdetr-demo.yaml": {"epochs": 6}}
    with pytest.raises(SystemExit, match="expected MODEL:key=value"):
        race.parse_sets(["dfine-demo.yaml:epochs"])


def test_summary_gives_each_models_mean_and_range_and_the_ratio_of_mean_cpu_times(race):
    races = [[_run("rtdetr-demo.yaml", 0.90, 0.75, 300.0), _run("dfine-demo.yaml", 0.93, 0.82, 270.0)],
             [_run("rtdetr-demo.yaml", 0.92, 0.79, 280.0), _run("dfine-demo.yaml", 0.94, 0.83, 276.0)]]
    text = race.summary(races)
    assert text.startswith("Over 2 seeds:")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "demo" in line]
    assert rows == ["| rtdetr-demo | 0.910 (0.900-0.920) | 0.770 (0.750-0.790) | 290 s | 1.00 |",
                    "| dfine-demo | 0.935 (0.930-0.940) | 0.825 (0.820-0.830) | 273 s | 0.94 |"]
