"""Fine-grained Distribution Refinement: W(n) as the D-FINE paper and code define it, the integral, the box
coding both ways, and the two-bin targets of the FGL loss against a plain loop."""

import pytest
import torch

from rtdet.ops.boxes import cxcywh_to_xyxy
from rtdet.ops.fdr import (
    boxes_to_distances,
    distance_bins,
    distances_to_boxes,
    distribution_integral,
    weighting_function,
)

# W(0..16) of D-FINE's defaults (reg_max 32, up 0.5), for reg_scale 4 (N/S/M/L) and 8 (X); symmetric above.
W4 = [-4, -2, -1.7881, -1.5912, -1.4082, -1.2381, -1.0801, -0.9332, -0.7967, -0.6698, -0.5518, -0.4422, -0.3404,
      -0.2457, -0.1578, -0.0760, 0]
W8 = [-8, -4, -3.4913, -3.0344, -2.6239, -2.2552, -1.9240, -1.6265, -1.3593, -1.1193, -0.9037, -0.7100, -0.5360,
      -0.3797, -0.2394, -0.1133, 0]


@pytest.mark.parametrize("reg_scale, half", [(4.0, W4), (8.0, W8)])
def test_weighting_function_matches_the_reference_values(reg_scale, half):
    w = weighting_function(32, torch.tensor([0.5]), torch.tensor([reg_scale]))
    expected = torch.tensor(half + [-v for v in reversed(half[:-1])])
    assert w.shape == (33,) and torch.allclose(w, expected, atol=1e-4)
    assert torch.all(w[1:] > w[:-1])  # increasing, so a distance falls between two neighbours


def test_weighting_function_follows_its_parameters():
    up = torch.tensor([0.5], requires_grad=True)
    w = weighting_function(32, up, 4)
    w.sum().backward()  # symmetric: the gradient of the sum cancels
    assert up.grad is not None and abs(float(up.grad)) < 1e-5
    assert torch.allclose(weighting_function(32, -0.5, -4), weighting_function(32, 0.5, 4))  # |up|, |reg_scale|


def test_integral_of_a_peaked_distribution_is_its_bin():
    w = weighting_function(32, 0.5, 4)
    logits = torch.full((2, 4 * 33), -1e4)
    bins = torch.tensor([[0, 16, 20, 32], [5, 16, 16, 31]])
    for q in range(2):
        for e in range(4):
            logits[q, e * 33 + bins[q, e]] = 0.0
    assert torch.allclose(distribution_integral(logits, w), w[bins], atol=1e-5)
    uniform = distribution_integral(torch.zeros(3, 4 * 33), w)
    assert torch.allclose(uniform, torch.zeros(3, 4), atol=1e-5)  # the bins are symmetric about 0


def test_zero_distances_give_the_reference_box_and_the_coding_inverts():
    ref = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.05]])
    assert torch.allclose(distances_to_boxes(ref, torch.zeros(2, 4), 4.0), ref, atol=1e-6)
    target = torch.tensor([[0.35, 0.25, 0.62, 0.8], [0.2, 0.55, 0.4, 0.7]])
    d = boxes_to_distances(ref, target, 4.0)
    assert torch.allclose(cxcywh_to_xyxy(distances_to_boxes(ref, d, 4.0)), target, atol=1e-6)
    # one bin unit is the reference's size / reg_scale: moving the left edge out by w / 4 is d_left = 1
    wider = torch.tensor([[0.5 - 0.1 - 0.05, 0.3, 0.6, 0.7]])
    assert torch.allclose(boxes_to_distances(ref[:1], wider, 4.0)[0, 0], torch.tensor(1.0), atol=1e-5)


def loop_bins(d: float, w: list[float]) -> tuple[float, float, float]:
    """One distance, written out: the bin at or below it, and linear weights to it and the next one."""
    n = len(w) - 1
    i = sum(1 for v in w if v <= d) - 1
    if i < 0:
        return 0.0, 0.0, 1.0
    if i >= n:
        return n - 0.1, 1.0, 0.0
    right = abs(d - w[i]) / (abs(d - w[i]) + abs(w[i + 1] - d))
    return float(i), right, 1.0 - right


def test_distance_bins_against_a_loop():
    w = weighting_function(32, 0.5, 4)
    d = torch.cat([torch.linspace(-6, 6, 97), w, torch.tensor([-4.0, 4.0, 3.999, -3.999, 100.0, -100.0])])
    index, right, left = distance_bins(d, w)
    for k, value in enumerate(d.tolist()):
        ref = loop_bins(value, w.tolist())
        assert index[k].item() == pytest.approx(ref[0], abs=1e-5), value
        assert right[k].item() == pytest.approx(ref[1], abs=1e-5) and left[k].item() == pytest.approx(ref[2], abs=1e-5)
    assert index.max() <= 32 - 0.1 + 1e-6 and index.min() >= 0
    inside = (d > w[0]) & (d < w[-1])  # the two-bin mix reproduces the distance inside the range
    lo = index.floor().long()
    mixed = w[lo] * left + w[(lo + 1).clamp(max=32)] * right
    assert torch.allclose(mixed[inside], d[inside], atol=1e-5)
