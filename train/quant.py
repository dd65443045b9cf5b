"""Quantisation-aware training helpers: keep what the student computes with on Loihi's grids.

Loihi (Lava fixed point) stores weights as 8-bit integers, thresholds as integers in the same unit as
the weights (vth << 6 against a_in << 6) and decays as 12-bit fractions of 4096 (the docstring of
hwmodels/loihi.py; docs/loihi_net.md).
A float value x on a grid of step s is x = s * k with k an integer; the straight-through estimator
(STE) passes gradients through the rounding unchanged.
"""
import torch

from common.loihi import (ACT_SHIFT, BIAS_MAX, DECAY_UNITY, STATE_MAX, VTH_MAX,  # noqa: F401
                          WEIGHT_MAX, WEIGHT_MIN)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def weight_steps(w: torch.Tensor, step: float, lo=WEIGHT_MIN, hi=WEIGHT_MAX) -> torch.Tensor:
    """w -> clamp(round(w / step), lo, hi): integers on the step grid (STE), int8 by default."""
    return torch.clamp(round_ste(w / step), lo, hi)


def quantize_weight(w: torch.Tensor, step: float) -> torch.Tensor:
    """w -> step * clamp(round(w / step), -128, 127): the 8-bit grid Loihi stores."""
    return step * weight_steps(w, step)


def weight_to_int(w: torch.Tensor, step: float) -> torch.Tensor:
    """Integer weights as Loihi stores them (int64)."""
    return torch.clamp(torch.round(w / step), WEIGHT_MIN, WEIGHT_MAX).to(torch.int64)


def decay_to_int(keep: torch.Tensor) -> torch.Tensor:
    """Fraction kept per step (snnTorch alpha/beta) -> Loihi decay = round(4096 * (1 - keep))."""
    return torch.clamp(torch.round(DECAY_UNITY * (1.0 - keep)), 0, DECAY_UNITY).to(torch.int64)


def quantize_decay(keep: torch.Tensor) -> torch.Tensor:
    """Fraction kept per step on the 1/4096 grid (STE)."""
    lost = torch.clamp(round_ste(DECAY_UNITY * (1.0 - keep)), 0, DECAY_UNITY)
    return 1.0 - lost / DECAY_UNITY


def quantize_threshold(theta: torch.Tensor, step: float) -> torch.Tensor:
    """Threshold on the weight grid (vThMant = theta / step, at least 1, at most 17 bits)."""
    return step * torch.clamp(round_ste(theta / step), 1, VTH_MAX)
