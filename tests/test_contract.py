"""The head contract, timm-style: every registered head and every built-in model YAML goes through the same
checks the engine relies on, so a new family (a registered head and its YAML) is tested by default.

For a model with ``nc=3`` at 64x64 px:

* **train** -- forward in train mode -> the head's criterion built with the family's settings (as the
  trainer builds it) -> backward: a finite scalar loss, finite detached terms, a gradient on every head
  parameter and on the layers before the head;
* **eval** -- forward in eval mode -> ``decode`` (:class:`Decoded` shapes) -> ``postprocess``: per image
  :class:`Detections` with boxes [n, 4], scores [n] in [0, 1] best first, labels [n] in [0, nc);
* **fuse** -- ``fuse()`` (conv + batch norm, RepConv, a dual head's deploy form) keeps the eval output,
  with batch-norm statistics drawn at random first so that folding them changes the weights;
* **export** -- ONNX export, and ONNX Runtime gives the same detections (where onnx is installed).

The default suite runs the four checks on one small model per head (tests/contract_models.py picks it)
and a static check of every built-in YAML; ``-m slow`` runs the four checks on every built-in YAML.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn

from rtdet import build_model
from rtdet.engine.settings import criterion_hyperparameters, resolve_settings
from rtdet.families import criterion_for
from rtdet.losses.common import batch_targets
from rtdet.nn.builder import load_model_yaml
from rtdet.nn.heads.base import Decoded, DetectionHead, Detections
from rtdet.nn.registry import lookup
from tests.contract_models import (
    ModelSource,
    builtin_yamls,
    contract_heads,
    head_name,
    model_for_head,
)

NC, IMGSZ = 3, 64
CHECKS = ["train", "eval", "fuse", "export"]
HEADS = contract_heads()
YAMLS = builtin_yamls()

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Small models run fastest on one thread."""


@functools.lru_cache(maxsize=1)  # the checks of one model run one after another: build it once
def built(source: ModelSource) -> nn.Module:
    torch.manual_seed(0)
    return build_model(source.config(), nc=NC)


def images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))


def train_batch() -> dict:
    """Two images with three boxes (normalised cx cy w h) of classes 0-2, as the data loader gives them."""
    batch = {"img": images(2), "batch_idx": torch.tensor([0.0, 0.0, 1.0]), "cls": torch.tensor([0.0, 2.0, 1.0]),
             "bboxes": torch.tensor([[0.3, 0.3, 0.4, 0.4], [0.7, 0.6, 0.3, 0.5], [0.5, 0.5, 0.6, 0.6]])}
    batch["targets"] = batch_targets(batch, 2, NC)
    return batch


# ------------------------------------------------------------------------------------------ the checks
def check_train(model: nn.Module) -> None:
    """Forward -> criterion (the family's settings, as Trainer.setup builds it) -> backward."""
    model = copy.deepcopy(model).train()
    head = model.head
    hyp = criterion_hyperparameters(resolve_settings({}, head.family, "train"), head.family)
    criterion = criterion_for(head, hyp)  # the family record binds the head to its loss
    batch = train_batch()
    loss, items = criterion(model(batch["img"], batch), batch)
    assert loss.dim() == 0 and torch.isfinite(loss), f"loss {loss}"
    assert items and all(torch.isfinite(torch.as_tensor(v)).all() for v in items.values()), items
    assert not any(torch.as_tensor(v).requires_grad for v in items.values()), "loss terms must be detached"
    loss.backward()
    missing = [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"head parameters without a gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert sum(float(p.grad.abs().sum()) for p in head.parameters() if p.grad is not None) > 0
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids and p.grad is not None]
    assert body and sum(float(p.grad.abs().sum()) for p in body) > 0, "no gradient reaches the layers before the head"


def eval_outputs(model: nn.Module, x: torch.Tensor) -> tuple[Decoded, list[Detections]]:
    """Eval forward -> (decode, postprocess at conf 0: every candidate up to max_det)."""
    with torch.no_grad():
        out = model.eval()(x)
        img_shape = tuple(x.shape[2:])
        return model.head.decode(out, img_shape), model.head.postprocess(out, img_shape, conf=0.0, max_det=100)


def check_decoded(dec: Decoded, head: DetectionHead, batch: int) -> None:
    boxes, scores, labels = dec
    assert boxes.dim() == 3 and boxes.shape[0] == batch and boxes.shape[2] == 4, tuple(boxes.shape)
    assert torch.isfinite(boxes).all() and ((scores >= 0) & (scores <= 1)).all()
    if head.needs_nms:  # dense: every candidate box with a probability per class
        assert labels is None and scores.shape == (*boxes.shape[:2], NC), tuple(scores.shape)
    else:  # final: top-k boxes with one score and label each
        assert labels is not None and scores.shape == labels.shape == boxes.shape[:2]


def check_detections(dets: list[Detections], batch: int) -> None:
    assert isinstance(dets, list) and len(dets) == batch
    for d in dets:
        n = len(d)
        assert 0 < n <= 100, n
        assert d.boxes.shape == (n, 4) and d.scores.shape == (n,) and d.labels.shape == (n,)
        assert torch.isfinite(d.boxes).all() and ((d.scores >= 0) & (d.scores <= 1)).all()
        assert not d.labels.is_floating_point() and ((d.labels >= 0) & (d.labels < NC)).all(), d.labels
        assert (d.scores[:-1] >= d.scores[1:]).all(), "detections must come best first"


def trained_like(model: nn.Module) -> nn.Module:
    """A copy in eval mode with the statistics and weights a trained model could have: batch-norm running
    statistics drawn at random (so that fusing them changes the convolutions) and a little noise on every
    weight. At initialisation some heads predict nothing to check (RTMDet's
    near-zero regression gives zero-size boxes, which its decode scores 0)."""
    model = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def check_eval(model: nn.Module) -> None:
    model = trained_like(model)
    dec, dets = eval_outputs(model, images(2))
    check_decoded(dec, model.head, 2)
    check_detections(dets, 2)


def check_fuse(model: nn.Module) -> None:
    from rtdet.deploy.parity import compare_detections

    model = trained_like(model)
    fused = copy.deepcopy(model).fuse()
    assert fused.is_fused
    x = images(2)
    (dec, dets), (dec_f, dets_f) = eval_outputs(model, x), eval_outputs(fused, x)
    check_decoded(dec_f, fused.head, 2)
    if model.head.needs_nms:  # dense outputs line up candidate by candidate
        torch.testing.assert_close(dec_f.boxes, dec.boxes, atol=1e-2, rtol=1e-4)
        torch.testing.assert_close(dec_f.scores, dec.scores, atol=1e-4, rtol=1e-4)
    report = compare_detections(dets, dets_f, conf=0.0, box_tol=1e-3 * IMGSZ, score_tol=1e-4)
    assert report.ok and report.matched == report.n_torch == report.n_onnx, report


def check_export(model: nn.Module, tmp_path) -> None:
    """Export, then ONNX Runtime against PyTorch: the decoded outputs, and the detections at a threshold
    that keeps the model's 20 best."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from rtdet.deploy import graph, parity
    from rtdet.deploy.runtime import load_onnx_model
    from tests.engine.export_helpers import sample_image

    model = trained_like(model)
    x = parity.check_image(sample_image(), (IMGSZ, IMGSZ), 1)
    scores = eval_outputs(model, x)[1][0].scores
    # between the 20th and 21st best scores: a threshold equal to a score would leave that detection to
    # the last bit of each runtime's arithmetic
    conf = float(scores[19:21].mean()) if len(scores) > 20 else float(scores[-1]) * 0.999
    file = graph.export_onnx(model, tmp_path / "model.onnx", imgsz=IMGSZ, batch=1, count_flops=False)
    report = parity.check_export(file, model, x, conf=conf)
    assert report.ok and report.n_onnx > 0 and report.matched > 0, report
    if model.head.needs_nms:  # dense outputs line up candidate by candidate (near-equal scores may swap in NMS)
        ref = eval_outputs(graph.deploy_form(model, False), x)[0]
        boxes, scores = load_onnx_model(file)(x)[:2]
        torch.testing.assert_close(torch.as_tensor(boxes), ref.boxes, atol=1e-2, rtol=1e-4)
        torch.testing.assert_close(torch.as_tensor(scores), ref.scores, atol=1e-4, rtol=1e-4)
    else:  # final outputs: every detection has its partner
        assert report.matched == report.n_torch == report.n_onnx, report


def run_check(check: str, source: ModelSource, tmp_path) -> None:
    model = built(source)
    if check == "export":
        check_export(model, tmp_path)
    else:
        {"train": check_train, "eval": check_eval, "fuse": check_fuse}[check](model)


# ------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("head", HEADS)
def test_head_contract(head, check, tmp_path):
    """Every registered head, on its smallest model: train, eval, fuse and export."""
    source = model_for_head(head)
    if source is None:
        pytest.fail(f"head {head} has no built-in model YAML (rtdet/cfg/models/<family>/) and no tiny test YAML "
                    f"(tests/contract_models.py TINY_YAMLS): ship one so its family can be built and tested")
    assert isinstance(built(source).head, lookup(head).cls)
    run_check(check, source, tmp_path)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_builtin_yaml_declares_a_tested_head(path):
    """Cheap check of every built-in YAML (building them all would cost about 30 s): each row names a
    registered module, the last row a contract head whose family's settings resolve."""
    d = load_model_yaml(path)
    entries = [lookup(row[2], row=i) for i, row in enumerate([*d["backbone"], *d["head"]])]
    assert entries[-1].is_head and issubclass(entries[-1].cls, DetectionHead), head_name(d)
    assert not any(e.is_head for e in entries[:-1]), "only the last row may be a head"
    assert any(lookup(h).cls is entries[-1].cls for h in HEADS), f"{head_name(d)} is not among {HEADS}"
    family = entries[-1].cls.family
    assert family and resolve_settings({}, family, "train")


def test_every_contract_head_is_a_detection_head():
    assert HEADS, "the registry lists no head"
    assert all(issubclass(lookup(h).cls, DetectionHead) for h in HEADS)


@pytest.mark.slow
@pytest.mark.parametrize("path, check", [(p, c) for p in YAMLS for c in CHECKS],
                         ids=[f"{p.stem}-{c}" for p in YAMLS for c in CHECKS])
def test_builtin_yaml_contract(path, check, tmp_path):
    """The full matrix: every built-in YAML through every check."""
    run_check(check, ModelSource(path.stem, str(path)), tmp_path)
