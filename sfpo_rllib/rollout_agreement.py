"""How far the rollout engine's log-probs are from the learner's, per iteration.

The engine reports log π(token) for every token it sampled (batch column
``rollout_logp``); the learner's θ⁰ pass recomputes the same quantity (``old_logp``)
with the very weights the engine should have been given. Their gap is what verl logs as
the rollout/actor probability difference: about 1e-6 when both run the same weights in
fp32, around 1e-2 with bf16 kernels, and far larger when the engine samples from stale
weights (a broken weight sync) or a different distribution (a temperature mismatch).
"""

from __future__ import annotations

import torch

from sfpo_rllib.losses import truncated_is_weights


def rollout_logp_gap(
    old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor
) -> tuple[float, float]:
    """(sum, max) of |old_logp - rollout_logp| over the completion tokens of one minibatch.

    Sums, not means, so learners and minibatches combine exactly: the driver divides the
    total by the number of completion tokens.
    """
    gap = (old_logp.float() - rollout_logp.float()).abs() * mask
    if not bool(mask.any()):
        return 0.0, 0.0
    return float(gap.sum()), float(gap.max())


def minibatches_gap(batches, old_key: str, rollout_key: str, mask_key: str) -> tuple[float | None, float | None]:
    """The learner's gap fields (results.LearnerResult) over all (micro-)batches of its shard:
    (sum, max) (the sum is TOKEN_MEAN: the driver divides by all learners' tokens)."""
    total, worst = 0.0, 0.0
    for mb in batches:
        if rollout_key not in mb:  # the engine reported no log-probs: nothing to compare
            return None, None
        s, m = rollout_logp_gap(mb[old_key], mb[rollout_key], mb[mask_key])
        total, worst = total + s, max(worst, m)
    return total, worst


def behaviour_weight_sums(batches, old_key: str, rollout_key: str, mask_key: str, cap: float | None) -> tuple:
    """The learner's behaviour-weight fields (results.LearnerResult) over its shard: (the sum of
    min(π_θ⁰ / π_rollout, cap), the number of tokens where the cap binds) (None without a cap
    or without engine log-probs). Sums (TOKEN_MEAN), so learners combine exactly."""
    if cap is None or any(rollout_key not in mb for mb in batches):
        return None, None
    total, truncated = 0.0, 0.0
    for mb in batches:
        mask = mb[mask_key]
        raw = torch.exp(mb[old_key].float() - mb[rollout_key].float())
        total += float((truncated_is_weights(mb[old_key], mb[rollout_key], cap) * mask).sum())
        truncated += float(((raw > cap).float() * mask).sum())
    return total, truncated
