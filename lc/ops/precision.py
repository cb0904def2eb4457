"""Comparing a low-precision (fp16/bf16) ReLU output and its gradients with an fp32 reference.

A ReLU's mask can differ between a half-precision kernel and its fp32 reference wherever the
pre-activation is within rounding of zero; a max-relative gradient metric turns each such flip into
a full-size error (and can hide a real bug behind that noise). The check used by the GPU tests:

1. `relu_flips`: the pixels whose mask differs must be rare and lie near zero (|reference
   pre-activation| small against its scale);
2. the gradients are compared with a reference backward that uses the kernel's own mask
   (`masked_reference_grad`), so the flips cost nothing there and anything else is a real error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FlipReport", "check_relu_flips", "relu_flips"]


@dataclass
class FlipReport:
    fraction: float          # share of outputs whose ReLU mask differs
    worst_distance: float    # max |reference pre-activation| at a flip, relative to its max |.|
    count: int


def relu_flips(kernel_out: torch.Tensor, reference_preact: torch.Tensor) -> FlipReport:
    """Where the kernel's mask (out > 0) and the reference's (pre-activation > 0) disagree."""
    got = kernel_out.detach().float() > 0
    want = reference_preact.detach().float() > 0
    flips = got != want
    scale = float(reference_preact.detach().float().abs().max().clamp(min=1e-12))
    worst = float(reference_preact.detach().float().abs()[flips].max()) / scale if bool(flips.any()) else 0.0
    return FlipReport(float(flips.float().mean()) if flips.numel() else 0.0, worst, int(flips.sum()))


def check_relu_flips(kernel_out: torch.Tensor, reference_preact: torch.Tensor,
                     max_fraction: float = 1e-3, near_zero: float = 1e-2) -> FlipReport:
    """Raise AssertionError unless flips are rare (<= max_fraction) and near zero (<= near_zero)."""
    report = relu_flips(kernel_out, reference_preact)
    if report.fraction > max_fraction or report.worst_distance > near_zero:
        raise AssertionError(f"ReLU mask flips: {report.count} ({report.fraction:.2e} of outputs, allowed "
                             f"{max_fraction:.0e}), worst at |pre-activation| = {report.worst_distance:.2e} "
                             f"of its scale (allowed {near_zero:.0e}): not rounding, a wrong result")
    return report
