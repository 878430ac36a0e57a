"""What every family's loss shares: element-wise classification losses on logits.

The padded targets of a batch live in :mod:`rtdet.ops.targets`, below the heads that also read them;
they are re-exported here because the trainer still imports ``batch_targets`` from this module.

Losses: every function returns the un-reduced loss with the shape of ``logits``; the caller sums and
normalises (DETR losses divide by the number of boxes, dense heads by the number of positives). They are
computed in float32 whatever the input dtype, so they are safe under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rtdet.ops.targets import PaddedTargets, batch_targets, pad_targets

__all__ = ["PaddedTargets", "pad_targets", "batch_targets", "sigmoid_focal_loss", "varifocal_loss",
           "quality_focal_loss"]


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): BCE · (1 − p_t)^γ · α_t, with ``targets`` in {0, 1}.

    ``alpha < 0`` disables the class balancing term (as in torchvision).
    """
    x, t = logits.float(), targets.float()
    p = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def varifocal_loss(logits: torch.Tensor, score: torch.Tensor, label: torch.Tensor, alpha: float = 0.75,
                   gamma: float = 2.0) -> torch.Tensor:
    """Varifocal loss (Zhang et al. 2021, VarifocalNet), as RT-DETR uses it.

    ``score`` is the soft target q (IoU of the matched box on its class, 0 elsewhere), ``label`` the 0/1
    one-hot of matched classes. Positives are weighted by q, negatives by α·p^γ with p = σ(logit) detached:
    ``loss = BCE(logit, q) · (α·p^γ·(1 − label) + q)``.
    """
    x, q, lab = logits.float(), score.float(), label.float()
    weight = alpha * x.detach().sigmoid().pow(gamma) * (1 - lab) + q
    return F.binary_cross_entropy_with_logits(x, q, weight=weight, reduction="none")


def quality_focal_loss(logits: torch.Tensor, score: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Quality focal loss (Li et al. 2020, GFL), as RTMDet uses it: ``BCE(logit, q) · |q − σ(logit)|^β``.

    ``score`` is the dense soft target q (quality on the assigned class, 0 for background); the modulating
    factor is differentiated through, as in mmdetection.
    """
    x, q = logits.float(), score.float()
    return F.binary_cross_entropy_with_logits(x, q, reduction="none") * (q - x.sigmoid()).abs().pow(beta)
