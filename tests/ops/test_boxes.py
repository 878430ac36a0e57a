import numpy as np
import pytest
import torch

from rtdet.ops.boxes import (
    boxes_to_input,
    boxes_to_original,
    clip_boxes,
    cxcywh_to_xyxy,
    denormalize_boxes,
    elementwise_iou,
    normalize_boxes,
    pairwise_iou,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def test_conversions_by_hand():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    assert xyxy_to_cxcywh(xyxy).tolist() == [[30.0, 50.0, 40.0, 60.0]]
    assert xyxy_to_xywh(xyxy).tolist() == [[10.0, 20.0, 40.0, 60.0]]
    assert cxcywh_to_xyxy(torch.tensor([[30.0, 50.0, 40.0, 60.0]])).tolist() == xyxy.tolist()
    assert xywh_to_xyxy(torch.tensor([[10.0, 20.0, 40.0, 60.0]])).tolist() == xyxy.tolist()


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_conversion_round_trips_keep_type_and_shape(kind):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (3, 5, 2))
    xyxy = np.concatenate([xy, xy + rng.uniform(1, 50, (3, 5, 2))], -1)
    boxes = torch.from_numpy(xyxy) if kind == "torch" else xyxy
    for fwd, back in ((xyxy_to_cxcywh, cxcywh_to_xyxy), (xyxy_to_xywh, xywh_to_xyxy)):
        out = back(fwd(boxes))
        assert type(out) is type(boxes) and out.shape == (3, 5, 4)
        np.testing.assert_allclose(np.asarray(out), xyxy, rtol=0, atol=1e-9)
    norm = normalize_boxes(boxes, (480, 640))
    assert float(norm[..., 0].max()) <= 1.0 and float(norm[..., 1].max()) <= 1.0 + 50 / 480
    np.testing.assert_allclose(np.asarray(denormalize_boxes(norm, (480, 640))), xyxy, atol=1e-9)


def test_conversion_rejects_wrong_width():
    with pytest.raises(ValueError, match="4 values"):
        xyxy_to_cxcywh(torch.zeros(2, 5))


# (box a, box b, IoU, GIoU, DIoU, CIoU), worked out by hand:
#  1) 2x2 squares offset by (1,1): inter 1, union 7, enclosing 3x3 = 9, centre dist² 2, diagonal² 18
#  2) disjoint unit squares 1 apart: union 2, enclosing 3x1, centre dist² 4, diagonal² 10
#  3) 2x2 inside 4x2 (same corner): IoU 1/2, centre dist² 1, diagonal² 20,
#     v = 4/π²·(atan 2 − atan 1)² = 0.0419565, α = v / (1 − IoU + v) = 0.0774167
CASES = [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9, 1 / 7 - 2 / 18, 1 / 7 - 2 / 18),
    ([0, 0, 1, 1], [2, 0, 3, 1], 0.0, -1 / 3, -0.4, -0.4),
    ([0, 0, 2, 2], [0, 0, 4, 2], 0.5, 0.5, 0.45, 0.4467519),
]


@pytest.mark.parametrize("a, b, iou, giou, diou, ciou", CASES)
def test_iou_family_hand_values(a, b, iou, giou, diou, ciou):
    ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    for kind, want in (("iou", iou), ("giou", giou), ("diou", diou), ("ciou", ciou)):
        got = elementwise_iou(ta, tb, kind=kind)
        assert got.shape == (1,)
        assert got.item() == pytest.approx(want, abs=1e-6), kind
        assert elementwise_iou(tb, ta, kind=kind).item() == pytest.approx(want, abs=1e-6)  # symmetric


def test_pairwise_matches_elementwise_and_broadcasts_batches():
    g = torch.Generator().manual_seed(1)
    a = cxcywh_to_xyxy(torch.rand(2, 6, 4, generator=g))
    b = cxcywh_to_xyxy(torch.rand(2, 3, 4, generator=g))
    for kind in ("iou", "giou", "diou", "ciou"):
        pw = pairwise_iou(a, b, kind=kind)
        assert pw.shape == (2, 6, 3)
        for i in range(6):
            for j in range(3):
                torch.testing.assert_close(pw[:, i, j], elementwise_iou(a[:, i], b[:, j], kind=kind))
    eye = pairwise_iou(a[0], a[0])
    torch.testing.assert_close(eye.diagonal(), torch.ones(6), atol=1e-5, rtol=0)
    assert (pairwise_iou(a[0], a[0], kind="giou") <= 1 + 1e-6).all()
    assert (pairwise_iou(a[0], b[0], kind="giou") >= -1 - 1e-6).all()


def test_iou_gradients_are_finite_for_identical_and_degenerate_boxes():
    a = torch.tensor([[0.2, 0.2, 0.6, 0.6], [0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    b = torch.tensor([[0.2, 0.2, 0.6, 0.6], [0.5, 0.5, 0.5, 0.5]])
    for kind in ("iou", "giou", "diou", "ciou"):
        (g,) = torch.autograd.grad(elementwise_iou(a, b, kind=kind).sum(), a)
        assert torch.isfinite(g).all(), kind


def test_unknown_iou_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        elementwise_iou(torch.zeros(1, 4), torch.zeros(1, 4), kind="eiou")


def test_clip_boxes_torch_and_numpy():
    boxes = np.array([[-5.0, 3.0, 700.0, 500.0]])
    assert clip_boxes(boxes, (480, 640)).tolist() == [[0.0, 3.0, 640.0, 480.0]]
    assert clip_boxes(torch.tensor(boxes), (480, 640)).tolist() == [[0.0, 3.0, 640.0, 480.0]]


def test_letterbox_ratio_pad_maps_back_to_original_pixels():
    # 480x640 (h0, w0) image letterboxed into 640x640: scale 1, 80 px of padding above and below
    ratio_pad = ((1.0, 1.0), (0.0, 80.0))
    original = torch.tensor([[10.0, 20.0, 110.0, 220.0]])
    network = boxes_to_input(original, ratio_pad)
    assert network.tolist() == [[10.0, 100.0, 110.0, 300.0]]
    assert boxes_to_original(network, ratio_pad, ori_shape=(480, 640)).tolist() == original.tolist()


def test_stretch_ratio_pad_with_different_x_and_y_ratios():
    # x_in = x0 * rx + pad_x, y_in = y0 * ry + pad_y with ratio_pad = ((ry, rx), (pad_x, pad_y))
    ratio_pad = ((0.5, 2.0), (3.0, 4.0))
    net = np.array([[23.0, 14.0, 203.0, 54.0]])
    back = boxes_to_original(net, ratio_pad)
    np.testing.assert_allclose(back, [[10.0, 20.0, 100.0, 100.0]])
    np.testing.assert_allclose(boxes_to_input(back, ratio_pad), net)
    # boxes reaching into the padding are clipped to the original image when its shape is given
    clipped = boxes_to_original(np.array([[0.0, 0.0, 500.0, 500.0]]), ratio_pad, ori_shape=(300, 200))
    np.testing.assert_allclose(clipped, [[0.0, 0.0, 200.0, 300.0]])


def test_bad_ratio_pad_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(\(ry, rx\), \(pad_x, pad_y\)\)"):
        boxes_to_original(torch.zeros(1, 4), (1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="must be > 0"):
        boxes_to_original(torch.zeros(1, 4), ((0.0, 1.0), (0.0, 0.0)))


def test_ltrb_distances_round_trip_and_clamp():
    from rtdet.ops.boxes import ltrb_to_xyxy, xyxy_to_ltrb

    points = torch.tensor([[10.0, 20.0], [0.5, 0.5]])
    ltrb = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 2.0, 0.0]])
    boxes = ltrb_to_xyxy(points, ltrb)
    assert boxes.tolist() == [[9.0, 18.0, 13.0, 24.0], [0.0, 0.0, 2.5, 0.5]]
    torch.testing.assert_close(xyxy_to_ltrb(points, boxes), ltrb)
    # the DFL range: sides beyond max_dist (or behind the point) are clamped
    far = xyxy_to_ltrb(points[:1], torch.tensor([[12.0, 0.0, 40.0, 21.0]]), max_dist=14.99)
    assert far[0].tolist() == pytest.approx([0.0, 14.99, 14.99, 1.0])
