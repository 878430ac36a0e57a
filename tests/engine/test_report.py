"""The HTML report: self-contained (no network), opens in headless Chromium without console errors."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rtdet.engine.report import Table, fmt, markdown_table, write_csv, write_html_report
from rtdet.utils.plotting import plot_curves, plot_pareto

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)

ROWS = [{"variant": "nearest (baseline)", "params": 32_148_140, "mAP50-95": 0.41234, "p": None},
        {"variant": "dysample", "params": 32_173_020, "mAP50-95": 0.41785, "p": 0.0312}]


def _report(tmp_path: Path) -> Path:
    pareto = plot_pareto([{"label": "nearest", "latency": 575.0, "mean": 0.412, "std": 0.004},
                          {"label": "dysample", "latency": 590.0, "mean": 0.418, "std": 0.003}],
                         tmp_path / "pareto.png")
    curves = plot_curves({"nearest": [([1, 2, 3], [0.1, 0.2, 0.3]), ([1, 2, 3], [0.12, 0.21, 0.28])],
                          "dysample": [([1, 2, 3], [0.11, 0.22, 0.31])]}, tmp_path / "curves.png")
    return write_html_report(tmp_path / "report.html", "rtdet compare: nearest vs <dysample>",
                             [("Variants", Table(ROWS, ["variant", "params", "mAP50-95", "p"])),
                              ("", "mean +- std over 3 seeds"), ("Pareto", pareto), ("Curves", curves)])


def test_report_is_self_contained(tmp_path):
    page = _report(tmp_path).read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing to fetch
    assert "nearest vs &lt;dysample&gt;" in page  # text is escaped
    assert "<td>32,148,140</td>" in page and "<td>0.4123</td>" in page and "<td>-</td>" in page


def test_tables_and_csv(tmp_path):
    md = markdown_table(ROWS, ["variant", "params", "mAP50-95"])
    assert md.splitlines()[2] == "| nearest (baseline) | 32,148,140 | 0.4123 |"
    path = write_csv(ROWS, ["variant", "p"], tmp_path / "t.csv")
    assert path.read_text().splitlines() == ["variant,p", "nearest (baseline),", "dysample,0.0312"]
    assert fmt(float("nan")) == "-" and fmt(575.123, "latency_ms") == "575.1" and fmt(0.00258, "gflops") == "0.00258"


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (make test installs it)")
def test_report_opens_in_headless_chromium_without_console_errors(tmp_path):
    path = _report(tmp_path)
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # no script error, no picture that failed to decode
    assert 'data-images="2/2"' in proc.stdout  # the page's own check ran: both pictures decoded
    assert "<table>" in proc.stdout and "dysample" in proc.stdout


def test_ap_columns_have_four_decimals():
    assert fmt(0.000394, "rtdetr-l AP50-95") == "0.0004" and fmt(-0.0124, "delta rtdetr-l-dysample") == "-0.0124"
