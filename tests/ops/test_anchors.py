"""The anchors, grid points and priors of every family (rtdet/ops/anchors.py)."""

import torch

from rtdet.ops.anchors import anchor_points, grid_priors, level_grid, query_anchors


def test_level_grid_is_row_major_with_offset():
    xs, ys = level_grid(2, 3, 0.5)
    assert xs.tolist() == [[0.5, 1.5, 2.5]] * 2 and ys.tolist() == [[0.5] * 3, [1.5] * 3]


def test_anchors_are_cell_centres_level_by_level():
    points, strides = anchor_points([(2, 3), (1, 2)], [8, 16])
    assert points.shape == (8, 2) and strides.shape == (8, 1)
    torch.testing.assert_close(points[:3], torch.tensor([[0.5, 0.5], [1.5, 0.5], [2.5, 0.5]]))  # row 0 first
    torch.testing.assert_close(points[3], torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(points[6:], torch.tensor([[0.5, 0.5], [1.5, 0.5]]))
    assert strides[:6].eq(8).all() and strides[6:].eq(16).all()
    torch.testing.assert_close((points * strides)[7], torch.tensor([24.0, 8.0]))


def test_priors_sit_at_grid_corners():
    points, strides = grid_priors([(2, 3), (1, 2)], [8, 16])
    assert points.tolist() == [[0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8], [0, 0], [16, 0]]
    assert strides.tolist() == [8] * 6 + [16] * 2


def test_query_anchors_keep_dtype_and_mark_border_tokens_invalid():
    anchors, valid = query_anchors([(4, 4), (2, 2)], grid_size=0.25, eps=0.2, dtype=torch.float16)
    assert anchors.dtype == torch.float16 and valid.dtype == torch.bool and anchors.shape == (1, 20, 4)
    inner = [5, 6, 9, 10]  # level 0: centres 0.375 / 0.625 only; 0.125 and 0.875 lie outside (0.2, 0.8)
    assert valid[0, :16, 0].nonzero().flatten().tolist() == inner
    assert valid[0, 16:].all()  # level 1: centres 0.25 / 0.75 and size 0.5 all lie inside (0.2, 0.8)
    assert torch.isinf(anchors[0, 0]).all()
    torch.testing.assert_close(anchors[0, 5].float().sigmoid(), torch.tensor([0.375, 0.375, 0.25, 0.25]),
                               atol=1e-3, rtol=0)


def test_the_three_generators_share_one_grid():
    """YOLO centres are RTMDet corners + 0.5 in grid units; RT-DETR's centres are YOLO's over the map size."""
    shapes, strides = [(3, 5), (2, 2)], [8, 16]
    centres, col = anchor_points(shapes, strides)
    corners, flat = grid_priors(shapes, strides)
    torch.testing.assert_close(corners / flat[:, None] + 0.5, centres, rtol=0, atol=0)
    torch.testing.assert_close(col[:, 0], flat, rtol=0, atol=0)
    anchors, _ = query_anchors(shapes, eps=0.0)
    size = torch.tensor([[5.0, 3.0]] * 15 + [[2.0, 2.0]] * 4)
    torch.testing.assert_close(anchors[0, :, :2].sigmoid(), centres / size)
