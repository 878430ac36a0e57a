"""Structural weight transplant: which rows map, what is copied, what is named -- on the built-in pairs
(alignment only, models built on the meta device) and on tiny real models (tensors copied)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch

from rtdet import DetectionModel, build_model, transplant
from rtdet.io.transplant import plan_transplant
from tests.io.iohelpers import fp16_exact, official_backbone_file, with_classifier

pytestmark = pytest.mark.usefixtures("single_thread")

COMMUNITY = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "community-yaml"


@cache
def meta(name: str, nc: int = 3) -> DetectionModel:
    """A built-in model with shapes only (no weights allocated): enough for the alignment."""
    with torch.device("meta"):  # shapes are all the alignment reads
        return DetectionModel(name, nc=nc)


def mapping(report) -> dict[int, int]:
    """{target row: source row} of the aligned rows."""
    return {r.target: r.source for r in report.rows if r.source is not None}


def assert_same_types(report, source: DetectionModel, target: DetectionModel) -> None:
    src = {b.row: b.name for b in source.layers_info}
    for r in report.rows:
        if r.source is not None:
            assert src[r.source] == r.module, (r.source, r.target)


# ------------------------------------------------------------------------------------------ built-in pairs
def test_gelan_c_gives_yolov9_c_its_main_branch():
    source, target = meta("gelan-c.yaml"), meta("yolov9-c.yaml")
    report = plan_transplant(source, target)
    assert mapping(report) == {t: t - 1 for t in range(1, 23)}  # yolov9-c row 0 is the Silence the branch reads
    rows = {r.target: r for r in report.rows}
    assert all(rows[t].status == "copied" and not rows[t].skipped for t in range(1, 23))
    assert report.new_rows == [*range(23, 30), 31, 32, 34, 35, 37, 38]  # PGI branch and the DualDDetect head
    assert rows[38].module == "DualDDetect" and rows[38].source is None  # never into another module type
    assert report.transplanted_rows == [t for t in range(1, 23) if rows[t].has_tensors]
    assert report.summary().startswith("yolov9-c: 22 rows (backbone, neck; 39% of parameters) from gelan-c; 13 rows")


@pytest.mark.skipif(not (COMMUNITY / "yolov9-c-DySample.yaml").is_file(), reason="community YAMLs not present")
def test_yolov9_c_into_its_dysample_variant():
    target = meta(str(COMMUNITY / "yolov9-c-DySample.yaml"))
    report = plan_transplant(meta("yolov9-c.yaml"), target)
    assert mapping(report) == {t: t for t in range(39) if t != 14}
    assert report.new_rows == [14] and report.rows[14].module == "DySample"
    assert all(r.status == "copied" for r in report.rows if r.target != 14)
    assert report.share == pytest.approx(1 - target.model[14].np / sum(m.np for m in target.model))


# target row -> rtdetr-l row for the neck and decoder; rows of other shapes; rows left new
RTDETR_VARIANTS = {
    "rtdetr-convnextv2-atto.yaml": ({t: t + 6 for t in range(4, 23)}, [4, 8, 13], [0, 4, 8, 13]),
    "rtdetr-l-dysample.yaml": ({t: t for t in range(29) if t not in (13, 18)}, [], [13, 18]),
    "rtdetr-l-shsa.yaml": ({**{t: t for t in range(8)}, 9: 8, 10: 9, **{t: t - 2 for t in range(12, 31)}}, [], [8, 11]),
    "rtdetr-resnet50.yaml": ({t: t + 5 for t in range(5, 24)}, [], [0, 1, 2, 3, 4]),
    "rtdetr-shvit-s4.yaml": ({**{t: t + 5 for t in range(5, 23) if t not in (8, 13)}, 27: 28}, [5, 9, 14],
                             [0, 4, 5, 8, 9, 13, 14, 23, 24, 26]),
}


@pytest.mark.parametrize("variant", list(RTDETR_VARIANTS))  # about 2 s each: shapes only, rtdetr-l built once
def test_rtdetr_l_lands_in_every_builtin_variant(variant):
    expected, other_shapes, new = RTDETR_VARIANTS[variant]
    source, target = meta("rtdetr-l.yaml"), meta(variant)
    report = plan_transplant(source, target)
    assert mapping(report) == expected
    assert_same_types(report, source, target)
    rows = {r.target: r for r in report.rows}
    assert [t for t, r in rows.items() if r.status == "skipped"] == other_shapes
    for t in other_shapes:  # named, with both shapes
        assert "input channels" in rows[t].reason and "in the source" in rows[t].skipped[0].reason
    assert report.new_rows == new
    head = rows[target.head_index]
    assert head.copied and head.source == source.head_index  # the decoder lands


def test_rtmdet_s_into_tiny_copies_nothing_and_names_every_row():
    source, target = meta("rtmdet-s.yaml"), meta("rtmdet-tiny.yaml")
    report = plan_transplant(source, target)
    assert mapping(report) == {t: t for t in range(len(target.model))}  # same structure, other widths
    assert report.params_copied == 0 and report.transplanted_rows == []
    with_tensors = [r for r in report.rows if r.has_tensors]
    assert with_tensors and all(r.status == "skipped" and r.skipped for r in with_tensors)
    for r in with_tensors:
        first = next(s for s in r.skipped if s.source_shape != s.target_shape)
        assert f"{tuple(first.source_shape)}".replace(",)", ")") in first.reason.replace(",)", ")")
    assert report.summary().startswith("rtmdet-tiny: 0 rows (0% of parameters) from rtmdet-s")


# ------------------------------------------------------------------------------------------ real tensors
TINY_NECK = """\
nc: 3
backbone:
  - [-1, 1, Conv, [8, 3, 2]]      # 0 /2
  - [-1, 1, Conv, [16, 3, 2]]     # 1 /4
  - [-1, 1, Conv, [24, 3, 2]]     # 2 /8
  - [-1, 1, Conv, [32, 3, 2]]     # 3 /16
head:
  - [-1, 1, Conv, [16, 1, 1]]     # 4
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]  # 5
  - [[-1, 2], 1, Concat, [1]]     # 6
  - [-1, 1, RepC3, [16]]          # 7
  - [[7, 4], 1, RTDETRDecoder, [nc, 16, 10, 2, 2, 1, 32, 0.0, None, -1, 5]]  # 8
"""


def test_transplant_copies_aligned_tensors_and_writes_its_report(tmp_path):
    torch.manual_seed(0)
    source = build_model(_yaml(tmp_path, "base", TINY_NECK))
    ckpt = source.save(tmp_path / "base.pt")
    # the variant swaps row 1 for a DWConv and adds a Conv: every later index moves
    variant = TINY_NECK.replace("  - [-1, 1, Conv, [16, 3, 2]]     # 1 /4",
                                "  - [-1, 1, DWConv, [8, 3, 2]]\n  - [-1, 1, Conv, [16, 1, 1]]")
    variant = variant.replace("[[-1, 2], 1, Concat", "[[-1, 3], 1, Concat").replace("[[7, 4]", "[[8, 5]")
    report = transplant(ckpt, _yaml(tmp_path, "variant", variant))
    assert mapping(report) == {0: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 8: 7, 9: 8}
    assert report.new_rows == [1, 2] and report.rows[1].source is None  # the DWConv has no partner
    assert report.rows[2].status == "skipped"  # the Conv in row 1's place: aligned, other kernel, named
    assert report.rows[2].skipped[0].reason == "shape (16, 8, 3, 3) in the source, (16, 8, 1, 1) here"
    theirs = source.state_dict()
    ours = report.model.state_dict()
    for r in report.rows:
        for key in r.copied:
            assert torch.equal(ours[f"model.{r.target}.{key}"], theirs[f"model.{r.source}.{key}"])
    summary = report.summary()
    assert summary.startswith("variant: 8 rows (backbone, neck, head; ") and " from base.pt" in summary
    saved = json.loads(report.to_json())
    assert saved["transplanted_rows"] == report.transplanted_rows and saved["rows"][2]["skipped"][0]["source_shape"]
    assert "| 3 | 2 | Conv | backbone | copied |" in report.to_markdown()


def test_another_class_count_keeps_every_tensor_that_still_fits(tmp_path):
    source = build_model(_yaml(tmp_path, "base", TINY_NECK))
    report = transplant(source, _yaml(tmp_path, "five", TINY_NECK.replace("nc: 3", "nc: 5")))
    head = report.rows[-1]
    assert head.status == "partial" and all("in the source" in s.reason for s in head.skipped)
    assert all(r.status == "copied" for r in report.rows[:-1])


def test_a_rows_own_weights_win_over_the_transplant(tmp_path):
    from rtdet.nn.modules.convnextv2 import ConvNeXtV2Atto

    backbone = fp16_exact(ConvNeXtV2Atto(), 3).eval()
    weights = official_backbone_file(with_classifier(backbone.state_dict(), 320, "convnextv2"), tmp_path / "atto.pt")
    text = """\
nc: 2
backbone:
  - [-1, 1, convnextv2_atto, [{weights}]]
  - [0, 1, Index, [160, 2]]
  - [0, 1, Index, [320, 3]]
head:
  - [[1, 2], 1, RTDETRDecoder, [nc, 16, 10, 2, 2, 1, 32, 0.0, None, -1, 5]]
"""
    source = build_model(_yaml(tmp_path, "plain", text.format(weights="")))
    report = transplant(source, _yaml(tmp_path, "imagenet", text.format(weights=f"weights={weights}")))
    row0 = report.rows[0]
    assert row0.status == "weights" and not row0.copied and row0.source == 0
    assert torch.equal(report.model.model[0].state_dict()["downsample_layers.0.0.weight"],
                       backbone.state_dict()["downsample_layers.0.0.weight"])
    assert report.transplanted_rows == [3]
    assert "; row 0 from atto.pt" in report.summary() and "own weights atto.pt" in report.to_markdown()


def _yaml(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ property
# A small model whose rows are written with absolute 'from' indices (-1 only for the image), so that an edit
# fixes them up by arithmetic. Rows 0-4 backbone, 5-11 neck, 12 head. Edits keep every map's size: new rows
# and removed or replaced rows have stride 1.
BASE_ROWS = [
    [-1, 1, "Conv", [8, 3, 2]], [0, 1, "Conv", [16, 3, 2]], [1, 1, "Conv", [20, 3, 1]], [2, 1, "Conv", [24, 3, 2]],
    [3, 1, "Conv", [32, 3, 2]], [4, 1, "Conv", [16, 1, 1]], [5, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[6, 3], 1, "Concat", [1]], [7, 1, "RepC3", [16]], [8, 1, "Conv", [16, 3, 2]], [[9, 5], 1, "Concat", [1]],
    [10, 1, "RepC3", [24]], [[8, 11], 1, "RTDETRDecoder", ["nc", 16, 10, 2, 2, 1, 32, 0.0, None, -1, 5]],
]
STRIDE_ONE = [2, 5, 8, 11]
# None builds like a row of BASE_ROWS (widths are rounded up to multiples of 8): a twin inserted beside its
# original is ambiguous (either may be called the new one; the alignment picks the one whose inputs fit).
NEW_ROWS = [["Conv", [40, 3, 1]], ["Conv", [48, 1, 1]], ["DWConv", [16, 3, 1]], ["nn.Identity", []],
            ["SPPELAN", [24, 16]], ["RepC3", [40]]]


def _shift(f, fix):
    return [fix(x) for x in f] if isinstance(f, list) else fix(f)


def edit_rows(kind: str, at: int, new: list) -> tuple[list, dict[int, int]]:
    """BASE_ROWS with one row inserted before ``at``, removed at ``at`` or replaced at ``at`` ('from' fixed
    up), and {original row: its row in the edit} for every row outside the edit."""
    rows = [list(r) for r in BASE_ROWS]
    if kind == "insert":
        rows = [[_shift(f, lambda x: x + 1 if x >= at else x), n, m, a] for f, n, m, a in rows]
        rows[at][0] = _shift(rows[at][0], lambda x: at if x == at - 1 else x)  # the next row reads the new one
        rows.insert(at, [at - 1, 1, *new])
        return rows, {k: k + (k >= at) for k in range(len(BASE_ROWS))}
    if kind == "remove":
        bypass = rows[at][0]  # who reads the removed row now reads its input
        rows = [[_shift(f, lambda x: bypass if x == at else x - 1 if x > at else x), n, m, a] for f, n, m, a in rows]
        del rows[at]
        return rows, {k: k - (k > at) for k in range(len(BASE_ROWS)) if k != at}
    rows[at] = [rows[at][0], 1, *new]
    return rows, {k: k for k in range(len(BASE_ROWS)) if k != at}


def _model(rows: list) -> DetectionModel:
    with torch.device("meta"):  # shapes are all the alignment reads
        return DetectionModel({"nc": 3, "backbone": rows[:5], "head": rows[5:], "name": "edited"})


def test_every_row_outside_a_random_edit_keeps_its_partner():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    base = _model(BASE_ROWS)
    edits = st.one_of(
        st.tuples(st.just("insert"), st.integers(0, len(BASE_ROWS) - 1), st.sampled_from(NEW_ROWS)),
        st.tuples(st.just("remove"), st.sampled_from(STRIDE_ONE), st.just(None)),
        st.tuples(st.just("replace"), st.sampled_from(STRIDE_ONE), st.sampled_from(NEW_ROWS)),
    )

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(edits)
    def check(edit):
        kind, at, new = edit
        rows, partner = edit_rows(kind, at, new)
        target = _model(rows)
        report = plan_transplant(base, target)
        got = mapping(report)
        for original, moved in partner.items():
            assert got.get(moved) == original, (edit, moved, got)
        assert_same_types(report, base, target)  # nothing lands in a row of another module type

    check()


# ------------------------------------------------------------------------------------------ rtdet transplant
def test_the_transplant_verb_writes_a_checkpoint_that_loads_and_trains(tmp_path, capsys):
    from rtdet.cli import main
    from rtdet.io import load_model

    source = build_model(_yaml(tmp_path, "base", TINY_NECK))
    ckpt = source.save(tmp_path / "base.pt")
    variant = _yaml(tmp_path, "variant", TINY_NECK.replace("[-1, 1, Conv, [16, 1, 1]]     # 4",
                                                           "[-1, 1, DWConv, [32, 3, 1]]\n  - [-1, 1, Conv, [16, 1, 1]]")
                    .replace("[[-1, 2], 1, Concat", "[[-1, 2], 1, Concat").replace("[[7, 4]", "[[8, 5]"))
    out = tmp_path / "variant-init.pt"
    assert main(["transplant", f"source={ckpt}", f"model={variant}", f"to={out}", "nc=2"]) == 0
    printed = capsys.readouterr().out
    assert "variant: " in printed and "1 row new: 4" in printed and f"wrote {out}" in printed
    loaded = load_model(out)
    assert loaded.format == "rtdet" and loaded.model.nc == 2
    saved = torch.load(out, weights_only=True)["transplant"]
    assert saved["new_rows"] == [4] and saved["source"] == "base.pt"
    for r in saved["rows"]:
        for key in r["copied"]:
            assert torch.equal(loaded.model.state_dict()[f"model.{r['target']}.{key}"],
                               source.state_dict()[f"model.{r['source']}.{key}"])


@pytest.mark.parametrize(("argv", "code", "says"), [
    (["transplant", "model=rtdetr-demo.yaml"], 2, "needs source="),
    (["transplant", "source=x.pt"], 2, "needs model="),
    (["transplant", "source=x.pt", "model=rtdetr-demo.yaml", "epochs=3"], 2, "does not take epochs"),
    (["transplant", "source=missing.pt", "model=rtdetr-demo.yaml"], 1, "missing.pt: checkpoint file not found"),
])
def test_the_transplant_verb_names_bad_input(argv, code, says, capsys):
    from rtdet.cli import main

    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rtdet transplant: error: ") and says in err[0]


def test_a_source_of_which_nothing_fits_writes_nothing(tmp_path, capsys):
    from rtdet.cli import main

    ckpt = build_model(_yaml(tmp_path, "base", TINY_NECK)).save(tmp_path / "base.pt")
    wider = TINY_NECK
    for a, b in (("[8, 3, 2]", "[40, 3, 2]"), ("[16, 3, 2]", "[48, 3, 2]"), ("[24, 3, 2]", "[56, 3, 2]"),
                 ("[32, 3, 2]", "[64, 3, 2]"), ("[16, 1, 1]", "[40, 1, 1]"), ("RepC3, [16]", "RepC3, [40]")):
        wider = wider.replace(a, b)  # other widths everywhere (multiples of 8: widths are rounded up to them)
    out = tmp_path / "out.pt"
    assert main(["transplant", f"source={ckpt}", f"model={_yaml(tmp_path, 'other', wider)}", f"to={out}"]) == 1
    assert "no row of other can take its weights" in capsys.readouterr().err and not out.exists()
