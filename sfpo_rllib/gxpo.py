"""GXPO's extrapolation: from two fast steps to a virtual K-step point (arXiv 2605.06755).

GXPO (``fast_stage="gxpo"``) replaces SFPO's K fast passes by two. Per minibatch, at θ⁰:
step 1 with the gradient g₀ (θ⁰ → θ¹), step 2 with g₁ at θ¹ (θ¹ → θ²); then, per coordinate,
the retention ratio r = g₁ / g₀ says how much of the first step's gradient survived one
step, and if it kept shrinking (or growing) geometrically, K steps would have moved
S_K = 1 + r + … + r^{K−1} times the first step where two moved S₂ = 1 + r. So

    θ_K ≈ θ⁰ + (S_K / S₂) ⊙ (θ² − θ⁰)        (the virtual K-step point)
    θ̃  = θ⁰ + α (θ_K − θ⁰)                   (SFPO's reposition)

and one corrective step from θ̃ ends the minibatch.

Every choice below follows the authors' code, SwapniL-afk-now/final-gxpo at commit
7db2a1ee8afafcb218877c9a745fecfabb3bbbf6, file Code/SFPO/verl/workers/actor/gxpo_state.py,
function ``compute_gxpo_retention_scale`` (and ``geometric_sum_horner`` above it):

  * r uses the raw gradients, captured before gradient clipping (dp_actor.py,
    ``_gxpo_minibatch_step``: "Capture raw gradients for the retention ratio; clip only
    the optimizer step"; the production call passes no clip scales);
  * a coordinate is active where |g₀| > 1e-3 · RMS(g₀) of its own parameter tensor (or
    FSDP shard): "g0_rms = g0.float().square().mean().sqrt(); threshold = g0_rms * 1e-3";
  * active ratios are clamped to [−2, 3], NaN ratios become 1 ("candidate.clamp_(-2.0,
    3.0).nan_to_num_(nan=1.0)"); inactive coordinates get r = 1 and scale 1;
  * S_K and S₂ by Horner's rule; scale = S_K / S₂ where |S₂| > δ, else 1; non-finite
    scales become 1; the scale is clamped to [1, K/2 + 1];
  * K >= 2 ("GXPO K must be at least two").

One deliberate difference in arithmetic, not in mathematics: the authors write
θ ← θ⁰ + α·(scale·(θ² − θ⁰)) in one expression; here θ_K is formed with ``lerp`` (exact at
weight 0, i.e. where scale = 1) and the reposition is SFPO's own ``lerp``
(slow_fast.py). Where every scale is 1 (K = 2, or every coordinate inactive) GXPO's
reposition is therefore bit-identical to SFPO's, which tests/test_gxpo.py checks.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sfpo_rllib.sharding import local

RATIO_MIN, RATIO_MAX = -2.0, 3.0  # gxpo_state.py: "candidate.clamp_(-2.0, 3.0)"
ACTIVE_RMS_FRACTION = 1e-3  # gxpo_state.py: "threshold = g0_rms * 1e-3"
DEGENERATE_G0_NORM = 1e-8  # dp_actor.py: "or gn0 <= 1e-8: return fallback()"


def geometric_sum(r: torch.Tensor, n: int) -> torch.Tensor:
    """1 + r + … + r^{n−1} by Horner's rule (the authors' ``geometric_sum_horner``)."""
    out = torch.ones_like(r)
    for _ in range(1, n):
        out.mul_(r).add_(1.0)
    return out


def retention_scale(g0: torch.Tensor, g1: torch.Tensor, virtual_steps: int, delta: float) -> torch.Tensor:
    """Per-coordinate S_K / S₂ for one parameter tensor, in [1, K/2 + 1] (1 where g₀ ≈ 0)."""
    if virtual_steps < 2:
        raise ValueError(f"GXPO's virtual step count K must be at least 2, not {virtual_steps}.")
    one = torch.ones_like(g0)
    if g0.numel() == 0:
        return one
    active = g0.abs() > g0.float().square().mean().sqrt() * ACTIVE_RMS_FRACTION
    ratio = g1 / torch.where(active, g0, one)
    ratio = torch.where(active, ratio.clamp(RATIO_MIN, RATIO_MAX).nan_to_num(nan=1.0), one)
    s_k = geometric_sum(ratio, virtual_steps)
    s_2 = geometric_sum(ratio, 2)
    scale = torch.where(s_2.abs() > delta, s_k / s_2, one)
    scale = scale.nan_to_num(nan=1.0, posinf=1.0, neginf=1.0).clamp(1.0, virtual_steps / 2.0 + 1.0)
    return torch.where(active, scale, one)


@torch.no_grad()
def extrapolate(
    params: Sequence[torch.Tensor],
    theta0: Sequence[torch.Tensor],
    g0: Sequence[torch.Tensor],
    g1: Sequence[torch.Tensor],
    virtual_steps: int,
    delta: float,
) -> float:
    """θ ← θ⁰ + scale ⊙ (θ − θ⁰) in place (θ² → θ_K); returns the mean scale over coordinates.

    ``theta0``, ``g0`` and ``g1`` hold this learner's local shards (as ParameterSnapshot does).
    Written as ``θ.lerp_(θ⁰, 1 − scale)``: exact where scale = 1, and for scale >= 1.5 torch's
    lerp evaluates θ⁰ − (θ⁰ − θ)·scale, the authors' formula.
    """
    total, count = 0.0, 0
    for p, t0, a, b in zip(params, theta0, g0, g1, strict=True):
        scale = retention_scale(a, b, virtual_steps, delta)
        live = local(p)
        live.lerp_(t0, (1.0 - scale).to(live.dtype))
        total += float(scale.sum())
        count += scale.numel()
    return total / max(1, count)
