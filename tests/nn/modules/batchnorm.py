"""Non-trivial BatchNorm statistics and affine terms, so that folding them into convolutions is really tested."""

import torch
import torch.nn as nn

from rtdet.nn.modules.hgnetv2 import FrozenBatchNorm2d


def randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every BatchNorm2d / FrozenBatchNorm2d of ``module`` gets random weight, bias and statistics, in place."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return module
