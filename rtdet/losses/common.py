"""What every family's loss shares: element-wise classification losses on logits, and the choice between
the two IoU-aware ones that the DETR criteria offer (``loss: vfl|mal``).

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
from rtdet.utils.schema import Setting

__all__ = ["PaddedTargets", "pad_targets", "batch_targets", "sigmoid_focal_loss", "varifocal_loss",
           "quality_focal_loss", "matchability_aware_loss", "iou_aware_class_loss", "IOU_CLASS_LOSS_SETTINGS"]

# The settings of every criterion that offers both IoU-aware classification losses: one declaration, so that
# the families that share the names (RT-DETR, D-FINE) also share their meaning, range and default.
IOU_CLASS_LOSS_SETTINGS: tuple[Setting, ...] = (
    Setting("loss", "vfl", str, "classification loss: vfl (varifocal, RT-DETR / D-FINE) or mal (matchability-"
            "aware, DEIM); its weight is loss_vfl", choices=("vfl", "mal")),
    Setting("mal_gamma", 1.5, float, "matchability-aware loss gamma: the IoU target's exponent and the "
            "negatives' focusing power (DEIM: 1.5)", low=0.0),
)


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


def matchability_aware_loss(logits: torch.Tensor, score: torch.Tensor, label: torch.Tensor,
                            gamma: float = 1.5) -> torch.Tensor:
    """Matchability-aware loss (Huang et al. 2025, DEIM): ``BCE(logit, q^γ) · (p^γ·(1 − label) + label)``.

    ``score`` is the IoU q of the matched box on its class (0 elsewhere), ``label`` the 0/1 one-hot of matched
    classes, p = σ(logit) detached. A positive is pulled towards q^γ with weight 1 (so a match of low IoU is
    still supervised, unlike VFL's weight q); a negative costs −p^γ·log(1 − p).
    """
    x, q, lab = logits.float(), score.float(), label.float()
    weight = x.detach().sigmoid().pow(gamma) * (1 - lab) + lab
    return F.binary_cross_entropy_with_logits(x, q.pow(gamma), weight=weight, reduction="none")


def iou_aware_class_loss(kind: str, logits: torch.Tensor, score: torch.Tensor, label: torch.Tensor, *,
                         vfl_alpha: float, vfl_gamma: float, mal_gamma: float) -> torch.Tensor:
    """The classification loss a DETR criterion's ``loss`` setting picks: ``"vfl"`` -> :func:`varifocal_loss`
    (α, γ), ``"mal"`` -> :func:`matchability_aware_loss` (γ). Same arguments and un-reduced result shape."""
    if kind == "vfl":
        return varifocal_loss(logits, score, label, vfl_alpha, vfl_gamma)
    if kind == "mal":
        return matchability_aware_loss(logits, score, label, mal_gamma)
    raise ValueError(f"iou_aware_class_loss: kind must be 'vfl' or 'mal', got {kind!r}")
