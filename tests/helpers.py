"""Small helpers shared by several test modules (imported as `helpers`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch


def randomise_bn(model: torch.nn.Module, generator: torch.Generator | None = None) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, so folding BN is exercised."""
    generator = generator or torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=generator) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=generator) * 0.2 - 0.1)
