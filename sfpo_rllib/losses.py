"""GRPO's group advantages and clipped surrogate loss, as pure functions.

SFPO leaves the GRPO objective unchanged (SFPO_NOTES.md); only how often and from where
it is applied changes, which is the learner's business. Names follow the PPO/GRPO papers
and CleanRL: ``ratio``, ``pg_loss1``, ``pg_loss2``, ``clipfrac``, ``approx_kl``.
"""

from __future__ import annotations

import numpy as np
import torch

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean")


def group_advantages(rewards: np.ndarray, group_size: int, eps: float = 1e-6) -> np.ndarray:
    """A = (r - mean_group) / (std_group + eps), groups of ``group_size`` consecutive rows.

    A group whose rewards are all equal gets advantage 0 (not NaN): it carries no
    learning signal. std is the population std (ddof=0); verl's GRPO uses torch.std
    (ddof=1) -- the two differ by a constant factor per group size, absorbed by the lr.

    >>> group_advantages(np.array([1.0, 0.0, 1.0, 1.0]), group_size=2).round(3).tolist()
    [1.0, -1.0, 0.0, 0.0]
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 1 or len(rewards) % group_size:
        raise ValueError(
            f"group_advantages needs a flat reward array whose length ({rewards.shape}) is a "
            f"multiple of group_size ({group_size})."
        )
    groups = rewards.reshape(-1, group_size)  # (num_prompts, G)
    mean = groups.mean(axis=1, keepdims=True)
    std = groups.std(axis=1, keepdims=True)
    return ((groups - mean) / (std + eps)).reshape(-1).astype(np.float32)


def aggregate(
    per_token: torch.Tensor,  # (B, T)
    mask: torch.Tensor,  # (B, T), 1.0 on completion tokens
    *,
    mode: str,
    num_tokens: float,
    num_seqs: float,
) -> torch.Tensor:
    """Reduce per-token values with denominators of the *global* minibatch.

    ``num_tokens`` / ``num_seqs`` count the whole minibatch over all learners, so that a
    learner's shard contributes its exact share and the sum over learners equals the
    single-learner loss (DDP then averages: the caller multiplies by the world size).
      token-mean:           sum(all tokens) / num_tokens       (DAPO, verl default)
      seq-mean-token-mean:  sum_seq(mean over seq's tokens) / num_seqs   (original GRPO)
    """
    if mode == "token-mean":
        return (per_token * mask).sum() / num_tokens
    if mode == "seq-mean-token-mean":
        seq_lengths = mask.sum(dim=1).clamp(min=1.0)  # (B,)
        return ((per_token * mask).sum(dim=1) / seq_lengths).sum() / num_seqs
    raise ValueError(f"Unknown loss aggregation {mode!r}; valid: {', '.join(LOSS_AGGREGATIONS)}.")


def clipped_surrogate(
    logp: torch.Tensor,  # (B, T) log-probs of the sampled tokens under θ
    old_logp: torch.Tensor,  # (B, T) under the rollout policy θ⁰
    advantages: torch.Tensor,  # (B,)
    mask: torch.Tensor,  # (B, T)
    *,
    clip_param: float,
    mode: str,
    num_tokens: float,
    num_seqs: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's token-level clipped surrogate with group advantages (GRPO's policy loss)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)  # (B, T)
    adv = advantages.unsqueeze(1)  # (B, 1)
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1.0 - clip_param, 1.0 + clip_param)
    pg_loss = torch.maximum(pg_loss1, pg_loss2)
    loss = aggregate(pg_loss, mask, mode=mode, num_tokens=num_tokens, num_seqs=num_seqs)
    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        metrics = {
            "clipfrac": (((ratio - 1.0).abs() > clip_param).float() * mask).sum() / n,
            # Schulman's k3 estimator of KL(θ⁰ || θ), per token.
            "approx_kl": (((ratio - 1.0) - log_ratio) * mask).sum() / n,
        }
    return loss, metrics


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(θ || θ_ref), always >= 0 (as in GRPO, verl 'low_var_kl')."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0
