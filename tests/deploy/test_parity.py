"""The export parity check: before NMS with a tolerance, after NMS as sets robust to ties."""

from __future__ import annotations

import torch

from rtdet.deploy.parity import compare_decoded, compare_detections
from rtdet.nn.heads.base import Decoded, Detections, finalize


def tied_scene(seed: int = 0, n: int = 400, nc: int = 3) -> Decoded:
    """A dense output whose class scores sit close together (as yolov9-c's did): clusters of overlapping
    boxes whose scores differ by less than 1e-6, so one ulp decides which box of a cluster survives NMS."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n // 8, 2, generator=g) * 600 + 20
    xy = centres.repeat_interleave(8, 0) + torch.rand(n, 2, generator=g) * 2
    boxes = torch.cat([xy - 15, xy + 15], 1)
    base = 0.3 + 0.4 * torch.rand(n // 8, 1, nc, generator=g).repeat_interleave(8, 0).reshape(n, nc)
    scores = base + torch.rand(n, nc, generator=g) * 1e-6  # near-ties within each cluster
    return Decoded(boxes[None], scores[None])


def perturbed(d: Decoded, scale: float, seed: int = 1) -> Decoded:
    """The same output as another backend computes it: differences of ``scale`` (ulps, rounding order)."""
    g = torch.Generator().manual_seed(seed)
    return Decoded(d.boxes + (torch.rand(d.boxes.shape, generator=g) - 0.5) * scale * 500,
                   d.scores + (torch.rand(d.scores.shape, generator=g) - 0.5) * scale)


def test_near_tied_scores_pass_although_nms_keeps_other_boxes():
    ours = tied_scene()
    theirs = perturbed(ours, 4e-7)
    a = finalize(ours, conf=0.25, iou=0.7, max_det=30)
    b = finalize(theirs, conf=0.25, iou=0.7, max_det=30)
    exact = compare_detections(a, b, conf=0.25, box_tol=0.64, score_tol=0.0, iou=0.7, max_det=30)
    assert exact.matched < exact.n_torch  # the survivors really differ (which box of a tie, the last places)
    report = compare_detections(a, b, conf=0.25, box_tol=0.64, score_tol=1e-3, iou=0.7, max_det=30)
    report.decoded = compare_decoded(ours, theirs, box_tol=0.64, score_tol=1e-3)
    assert report.decoded.ok and report.ok, report
    # the same survivors, compared as sets with the other side's candidates, are all explained by ties
    in_graph = compare_detections(a, b, conf=0.25, box_tol=0.64, score_tol=1e-3, iou=0.7, max_det=30,
                                  candidates=ours)
    assert in_graph.ok and in_graph.unmatched == 0 and in_graph.tied > 0


def test_a_wrong_graph_still_fails():
    ours = tied_scene()
    shifted = Decoded(ours.boxes + torch.tensor([6.0, 0, 6.0, 0]), ours.scores)  # boxes 6 px off
    diff = compare_decoded(ours, shifted, box_tol=0.64, score_tol=1e-3)
    assert not diff.ok and abs(diff.max_box_diff - 6.0) < 1e-3
    a, b = finalize(ours, 0.25, 0.7, 30), finalize(shifted, 0.25, 0.7, 30)
    report = compare_detections(a, b, 0.25, 0.64, 1e-3, 0.7, 30, candidates=ours)  # NMS in the graph
    assert not report.ok and report.unmatched > 0
    scaled = Decoded(ours.boxes, ours.scores * 0.9)  # scores off by 0.03..0.07
    assert not compare_decoded(ours, scaled, 0.64, 1e-3).ok


def test_a_detection_at_the_threshold_or_the_max_det_cutoff_is_a_tie():
    box = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]])
    a = [Detections(box[:2], torch.tensor([0.9, 0.2501]), torch.tensor([0, 0]))]
    b = [Detections(box[:1], torch.tensor([0.9]), torch.tensor([0]))]  # its twin fell just under conf
    report = compare_detections(a, b, conf=0.25, box_tol=0.5, score_tol=1e-3)
    assert report.ok and report.matched == 1 and report.tied == 1
    a = [Detections(box[:2], torch.tensor([0.9, 0.5]), torch.tensor([0, 1]))]  # max_det=2: the last place
    b = [Detections(box[[0, 2]], torch.tensor([0.9, 0.5]), torch.tensor([0, 1]))]  # went to an equal score
    assert compare_detections(a, b, conf=0.25, max_det=2).ok
    assert not compare_detections(a, b, conf=0.25, max_det=None).ok  # without the cutoff: a real difference


def test_final_outputs_whose_top_k_order_ties_changed_compare_equal():
    boxes = torch.rand(1, 6, 4) * 100
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.3, 0.1]])
    labels = torch.tensor([[1, 0, 2, 0, 1, 1]])
    order = torch.tensor([0, 3, 2, 1, 4, 5])  # the three tied entries in another order
    theirs = Decoded(boxes[:, order], scores[:, order], labels[:, order])
    assert compare_decoded(Decoded(boxes, scores, labels), theirs, 0.1, 1e-6).ok


def test_final_outputs_of_a_uniform_image_whose_scores_all_tie_compare_equal():
    """A DETR head on a blank image: every query scores the same, so its top-k picks any k of them."""
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(1, 30, 4, generator=g) * 60
    scores, labels = torch.full((1, 30), 0.4243), torch.zeros(1, 30, dtype=torch.long)
    ours = Decoded(boxes[:, :10], scores[:, :10], labels[:, :10])
    theirs = Decoded(boxes[:, 15:25], scores[:, 15:25], labels[:, 15:25])  # another 10 of the tied queries
    assert compare_decoded(ours, theirs, 0.064, 1e-3).ok
    worse = Decoded(boxes[:, 15:25], scores[:, 15:25] - 0.1, labels[:, 15:25])  # lower scores: not a tie
    assert not compare_decoded(ours, worse, 0.064, 1e-3).ok
