"""Inputs the DETR-style head tests share: encoder maps and a batch of targets, seeded."""

import torch


def maps(shapes, ch, b: int = 2) -> list[torch.Tensor]:
    """Random maps [b, c, h, w], one per (c, (h, w))."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, c, h, w, generator=g) for c, (h, w) in zip(ch, shapes)]


def targets(counts, nc: int = 5, seed: int = 0) -> dict:
    """A batch dict with ``counts[i]`` boxes in image i: centres in [0.3, 0.7], sizes in [0.1, 0.3]."""
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    centre = torch.rand(n, 2, generator=g) * 0.4 + 0.3
    size = torch.rand(n, 2, generator=g) * 0.2 + 0.1
    return {"batch_idx": torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)),
            "cls": torch.randint(0, nc, (n,), generator=g), "bboxes": torch.cat([centre, size], 1)}
