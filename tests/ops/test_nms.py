import importlib

import numpy as np
import pytest
import torch

from rtdet.ops.nms import HAS_TORCHVISION, batched_nms, batched_nms_torch, nms, nms_torch


def greedy_reference(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None, thr: float) -> list[int]:
    """Textbook NMS, one box at a time: visit by decreasing score (ties: lower index first), keep a box
    unless a kept box of the same class overlaps it with IoU > thr."""
    boxes = boxes.astype(np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        suppressed = False
        for k in kept:
            if classes is not None and classes[i] != classes[k]:
                continue
            w = max(np.float32(0), min(boxes[i, 2], boxes[k, 2]) - max(boxes[i, 0], boxes[k, 0]))
            h = max(np.float32(0), min(boxes[i, 3], boxes[k, 3]) - max(boxes[i, 1], boxes[k, 1]))
            inter = np.float32(w * h)
            if inter / (area[k] + area[i] - inter) > thr:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return kept


def clustered_boxes(n: int, n_classes: int, seed: int, tied_scores: bool = False):
    """Boxes jittered around a few centres, so that suppression chains are long."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(50, 250, (6, 2))
    c = centres[rng.integers(0, 6, n)] + rng.normal(0, 12, (n, 2))
    wh = rng.uniform(20, 60, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    if tied_scores:
        scores = np.round(scores * 5) / 5  # many equal scores: order must follow the input order
    return boxes, scores, rng.integers(0, n_classes, n)


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_pure_nms_equals_greedy_reference(thr, seed):
    boxes, scores, classes = clustered_boxes(300, 4, seed)
    want = greedy_reference(boxes, scores, None, thr)
    got = nms_torch(torch.from_numpy(boxes), torch.from_numpy(scores), thr)
    assert got.dtype == torch.int64
    assert got.tolist() == want
    assert 10 < len(want) < 300  # the case really suppresses something

    want_cls = greedy_reference(boxes, scores, classes, thr)
    got_cls = batched_nms_torch(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), thr)
    assert got_cls.tolist() == want_cls
    assert len(want_cls) > len(want)  # class-aware keeps more


def test_blocked_overlap_search_and_tied_scores():
    boxes, scores, classes = clustered_boxes(157, 3, seed=5, tied_scores=True)
    want = greedy_reference(boxes, scores, classes, 0.45)
    for block in (1, 7, 64, 4096):
        got = batched_nms_torch(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), 0.45,
                                block=block)
        assert got.tolist() == want, block


def test_identical_boxes_keep_the_best_and_suppression_does_not_chain_through_removed_boxes():
    # A suppresses B; B would suppress C, but B is gone, so C survives (greedy, not transitive)
    boxes = torch.tensor([[0.0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms_torch(boxes, scores, 0.3).tolist() == [0, 2]


def test_empty_input():
    out = batched_nms_torch(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert out.shape == (0,) and out.dtype == torch.int64


def test_shape_errors():
    with pytest.raises(ValueError, match="boxes must be"):
        nms_torch(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores must be"):
        nms_torch(torch.zeros(3, 4), torch.zeros(2), 0.5)


def test_public_functions_dispatch_to_the_pure_path_without_torchvision(monkeypatch):
    nms_mod = importlib.import_module("rtdet.ops.nms")  # the module; rtdet.ops.nms is also the function
    monkeypatch.setattr(nms_mod, "HAS_TORCHVISION", False)
    boxes, scores, classes = clustered_boxes(80, 3, seed=3)
    b, s, c = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes)
    assert nms_mod.nms(b, s, 0.5).tolist() == greedy_reference(boxes, scores, None, 0.5)
    assert nms_mod.batched_nms(b, s, c, 0.5).tolist() == greedy_reference(boxes, scores, classes, 0.5)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision not installed")
def test_pure_path_equals_torchvision():
    import torchvision

    boxes, scores, classes = clustered_boxes(400, 5, seed=7)
    b, s, c = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes)
    assert nms_torch(b, s, 0.5).tolist() == torchvision.ops.nms(b, s, 0.5).tolist()
    assert batched_nms_torch(b, s, c, 0.5).tolist() == torchvision.ops.batched_nms(b, s, c, 0.5).tolist()
    assert batched_nms(b, s, c, 0.5).tolist() == batched_nms_torch(b, s, c, 0.5).tolist()
    assert nms(b, s, 0.5).tolist() == nms_torch(b, s, 0.5).tolist()


def dense_reference(boxes, scores, conf, thr, max_det, multi_label):
    """One image at a time, one candidate at a time: threshold, greedy class-aware NMS, top max_det."""
    out = []
    for bx, sc in zip(boxes.numpy(), scores.numpy()):
        if multi_label:
            anchor, label = np.nonzero(sc > conf)
            score = sc[anchor, label]
        else:
            label, score = sc.argmax(-1), sc.max(-1)
            anchor = np.nonzero(score > conf)[0]
            label, score = label[anchor], score[anchor]
        kept = greedy_reference(bx[anchor], score, label, thr)[:max_det]
        out.append((bx[anchor][kept], score[kept], label[kept]))
    return out


@pytest.mark.parametrize("multi_label", [False, True])
def test_dense_nms_equals_one_image_at_a_time(multi_label):
    from rtdet.ops.nms import dense_nms

    g = torch.Generator().manual_seed(3)
    b, n, c = 3, 200, 4
    boxes_np, _, _ = clustered_boxes(b * n, 1, seed=5)
    boxes = torch.from_numpy(boxes_np).view(b, n, 4)
    scores = torch.rand(b, n, c, generator=g) ** 3
    scores[1] = 0.0  # an image with no candidate
    got = dense_nms(boxes, scores, conf=0.2, iou=0.5, max_det=25, multi_label=multi_label)
    want = dense_reference(boxes, scores, 0.2, 0.5, 25, multi_label)
    assert len(got) == b and len(got[1][0]) == 0
    for (gb, gs, gl), (wb, ws, wl) in zip(got, want):
        assert gl.dtype == torch.int64 and len(gs) <= 25
        np.testing.assert_array_equal(gs.numpy(), ws)
        np.testing.assert_array_equal(gl.numpy(), wl)
        np.testing.assert_array_equal(gb.numpy(), wb)


def test_dense_nms_caps_candidates_per_image_and_rejects_bad_shapes():
    from rtdet.ops.nms import dense_nms

    boxes = torch.tensor([[[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]], dtype=torch.float32)
    scores = torch.tensor([[[0.9], [0.8], [0.7]]])
    (kb, ks, kl), = dense_nms(boxes, scores, conf=0.1, max_candidates=2)
    assert ks.tolist() == pytest.approx([0.9, 0.8])
    with pytest.raises(ValueError, match=r"expected boxes \[B, N, 4\]"):
        dense_nms(boxes[0], scores)


@pytest.mark.parametrize("max_det", [1, 3, 40])
def test_dense_nms_stops_early_with_the_same_answer_as_nms_over_every_candidate(max_det):
    """Heavy suppression (one class, clustered boxes, tied scores): few survivors among each image's best
    4 x max_det candidates, so the search widens; the answer equals NMS over every candidate."""
    from rtdet.ops.nms import dense_nms

    b, n = 4, 300
    boxes_np, scores_np, _ = clustered_boxes(b * n, 1, seed=7, tied_scores=True)
    boxes = torch.from_numpy(boxes_np).view(b, n, 4)
    scores = torch.from_numpy(scores_np).view(b, n, 1).clamp(min=0.01)
    scores[2, :, 0] = 0.0  # an image without candidates
    scores[3, 5:, 0] = 0.0  # one with fewer candidates than 4 x max_det
    got = dense_nms(boxes, scores, conf=0.005, iou=0.3, max_det=max_det)
    want = dense_reference(boxes, scores, 0.005, 0.3, max_det, multi_label=False)
    for (gb, gs, gl), (wb, ws, wl) in zip(got, want):
        np.testing.assert_array_equal(gs.numpy(), ws)
        np.testing.assert_array_equal(gb.numpy(), wb)
        np.testing.assert_array_equal(gl.numpy(), wl)
    assert len(got[2][0]) == 0 and 0 < len(got[3][0]) <= 5
