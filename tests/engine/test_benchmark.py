"""`rtdet benchmark`: the table of two tiny models, interleaved timing, mAP through both backends."""

import csv

import pytest
import torch

from rtdet import build_model
from rtdet.engine.benchmark import Benchmark, BenchmarkRow, _Entry, peak_rss_growth_mb, percentile
from rtdet.engine.settings import SettingsError
from rtdet.nn.model import count_parameters

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def two_models(tiny_yaml, tmp_path):
    wider = tmp_path / "rtdetr-tiny-wide.yaml"
    wider.write_text(tiny_yaml.read_text().replace("[32, 3, 2]", "[48, 3, 2]"))
    return [tiny_yaml, wider]


def test_benchmark_two_models_writes_its_table(two_models, tmp_path):
    bench = Benchmark({"model": ",".join(map(str, two_models)), "formats": "pytorch,onnx", "imgsz": 64, "runs": 4,
                       "warmup": 1, "project": str(tmp_path), "verbose": False, "device": "cpu", "threads": 1},
                      memory=False)
    rows = bench()
    assert [(r.model, r.format) for r in rows] == [("rtdetr-tiny.yaml", "pytorch"), ("rtdetr-tiny.yaml", "onnx"),
                                                   ("rtdetr-tiny-wide.yaml", "pytorch"),
                                                   ("rtdetr-tiny-wide.yaml", "onnx")]
    for r, yaml in zip(rows, [two_models[0]] * 2 + [two_models[1]] * 2):
        model = build_model(yaml)
        assert r.params == count_parameters(model)
        assert r.gflops == pytest.approx(model.flops(64), rel=1e-6)
        assert len(r.times_ms) == 4 and r.latency_ms > 0 and r.p90_ms >= r.latency_ms - 1e-9
        assert r.images_per_s == pytest.approx(1000 / r.latency_ms)
    assert rows[2].params > rows[0].params
    with (bench.save_dir / "benchmark.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and table[1]["format"] == "onnx" and float(table[1]["latency_ms"]) > 0
    md = (bench.save_dir / "benchmark.md").read_text()
    assert md.startswith("| model | format | params | gflops | latency_ms |")
    assert "1 torch threads, ONNX Runtime threads 1, graph optimisation all" in md
    assert "GFLOPs = 2 x multiply-accumulates" in md and (bench.save_dir / "onnx" / "rtdetr-tiny.onnx").is_file()


def test_rounds_are_interleaved_in_rotated_order():
    order = []
    entries = [_Entry(k, "pytorch", None, (lambda k=k: order.append(k)), BenchmarkRow(k, "pytorch", 0, 0.0), {})
               for k in "abc"]
    bench = Benchmark()
    bench.batch = 2
    bench._time(entries, runs=3, warmup=1)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotated rounds
    assert all(len(e.row.times_ms) == 3 for e in entries)
    assert entries[0].row.images_per_s == pytest.approx(2000 / entries[0].row.latency_ms)


def test_benchmark_map_is_the_same_through_both_backends(tiny_yaml, tiny_data, tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    build_model(tiny_yaml, nc=2).save(checkpoint)
    rows = Benchmark({"model": str(checkpoint), "formats": "pytorch,onnx", "imgsz": 64, "runs": 1, "warmup": 0,
                      "data": str(tiny_data), "project": str(tmp_path), "verbose": False, "workers": 0},
                     memory=False)()
    assert rows[0].mAP50_95 is not None and rows[0].mAP50_95 == pytest.approx(rows[1].mAP50_95, abs=1e-6)
    assert rows[0].mAP50 == pytest.approx(rows[1].mAP50, abs=1e-6)


def test_benchmark_settings_errors(tiny_yaml, tmp_path):
    with pytest.raises(SettingsError, match="unknown format 'tensorrt'"):
        Benchmark({"model": str(tiny_yaml), "formats": "pytorch,tensorrt", "project": str(tmp_path)})()
    with pytest.raises(SettingsError, match="benchmark needs model="):
        Benchmark({"project": str(tmp_path)})()


def test_percentile_matches_hand_computation():
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 50) == 30.0
    assert percentile(values, 90) == pytest.approx(46.0)  # 40 + 0.6 * (50 - 40)


@pytest.mark.slow
def test_peak_memory_grows_with_the_model(tiny_yaml, tmp_path):
    import multiprocessing as mp

    job = {"model": str(tiny_yaml), "nc": 2, "imgsz": 64, "batch": 1, "runs": 1, "threads": 1, "opt_level": "all"}
    big = dict(job, model="rtdetr-l.yaml", nc=80, imgsz=320)
    with mp.get_context("spawn").Pool(1) as pool:
        small_mb, big_mb = pool.apply(peak_rss_growth_mb, (job,)), pool.apply(peak_rss_growth_mb, (big,))
    assert 0 < small_mb < big_mb and big_mb > 100  # rtdetr-l's 32M fp32 weights alone are 128 MB


def test_models_with_one_file_name_get_their_own_rows_and_exports(tiny_yaml, tmp_path):
    """Issue 18: `benchmark model=a/best.pt,b/best.pt formats=onnx` labelled both rows best.pt and the second
    export overwrote the first."""
    specs = []
    for seed, folder in enumerate("ab"):
        torch.manual_seed(seed)
        (tmp_path / folder).mkdir()
        specs.append(str(build_model(tiny_yaml, nc=2).save(tmp_path / folder / "best.pt")))
    bench = Benchmark({"model": ",".join(specs), "formats": "onnx", "imgsz": 64, "runs": 1, "warmup": 0,
                       "project": str(tmp_path / "runs"), "verbose": False, "threads": 1}, memory=False)
    rows = bench()
    assert [r.model for r in rows] == ["a/best.pt", "b/best.pt"]
    a, b = (bench.save_dir / "onnx" / f"{k}-best.onnx" for k in "ab")
    assert a.is_file() and b.is_file() and a.read_bytes() != b.read_bytes()  # each model's own weights


def test_unique_labels_tell_models_apart_by_the_shortest_path_suffix():
    from rtdet.engine.benchmark import unique_labels

    assert unique_labels(["x.yaml", "y/z.yaml"]) == ["x.yaml", "z.yaml"]
    assert unique_labels(["r/a/w/best.pt", "r/b/w/best.pt", "c.yaml"]) == ["a/w/best.pt", "b/w/best.pt", "c.yaml"]
    assert unique_labels(["best.pt", "best.pt"]) == ["best.pt", "best.pt #2"]


def test_benchmark_rounds_imgsz_up_to_the_stride_and_refuses_half_on_a_cpu(tiny_yaml, tmp_path):
    bench = Benchmark({"model": str(tiny_yaml), "imgsz": 70, "runs": 1, "warmup": 0, "project": str(tmp_path),
                       "verbose": False, "device": "cpu"}, memory=False)
    bench()
    assert bench.imgsz == 80 and bench.header["imgsz"] == 80  # the model's largest stride is 16
    with pytest.raises(SettingsError, match="half=true: fp16 inference needs a CUDA GPU"):
        Benchmark({"model": str(tiny_yaml), "half": True, "device": "cpu", "project": str(tmp_path / "h")})()
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("family", ["dfine-tiny", "rtmdet-micro", "yolov9-tiny"])
def test_benchmark_takes_every_family_beside_rt_detr(family, tiny_yaml, tmp_path):
    """The verb reads no family: a tiny model of each family beside the tiny RT-DETR, PyTorch and ONNX rows."""
    from tests.contract_models import TINY_YAMLS

    other = tmp_path / f"{family}.yaml"
    other.write_text(TINY_YAMLS[family])
    rows = Benchmark({"model": f"{tiny_yaml},{other}", "formats": "pytorch,onnx", "imgsz": 64, "runs": 2,
                      "warmup": 1, "project": str(tmp_path), "verbose": False, "device": "cpu", "threads": 1},
                     memory=False)()
    assert [(r.model, r.format) for r in rows][2:] == [(other.name, "pytorch"), (other.name, "onnx")]
    assert rows[2].params == count_parameters(build_model(other)) and all(r.latency_ms > 0 for r in rows)
