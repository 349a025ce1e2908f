"""GRPO's advantages and clipped surrogate loss, and the variants users bring from other
trainers, as pure functions.

SFPO leaves the policy objective alone (docs/design.md): only how often and from where it
is applied changes, which is the learner's business. So every variant here composes with
the fast – reposition – slow update. Names follow the PPO/GRPO papers and CleanRL
(``ratio``, ``pg_loss1``, ``pg_loss2``, ``clipfrac``, ``approx_kl``); the variants sit in
registries, verl-style, so a new one is one decorated function and a bad name lists the
valid ones:

  AGGREGATIONS          how per-token values become one loss (``loss_agg``)
  ADVANTAGE_ESTIMATORS  how a group's rewards become advantages (``advantage_estimator``)
  KL_ESTIMATORS         per-token estimates of KL(θ || θ_ref) (``kl_estimator``)
  POLICY_LOSSES         the policy objective: PPO's token ratio, GSPO's sequence ratio,
                        CISPO's clipped IS weight (``policy_loss``; docs/policy_losses.md)

Validation reads these dicts live, so a variant registered by a user is accepted by name.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

AGGREGATIONS: dict[str, Callable] = {}
ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
KL_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}
# Every diagnostic a policy loss may return (each logged per stage: fast_*, slow_*).
POLICY_LOSS_DIAGNOSTICS = ("clipfrac", "clipfrac_dual", "approx_kl", "tis_weight_mean")


def _register(registry: dict[str, Callable], name: str) -> Callable:
    def decorate(fn: Callable) -> Callable:
        if name in registry:
            raise ValueError(f"{name!r} is registered twice.")
        registry[name] = fn
        return fn

    return decorate


def register_aggregation(name: str) -> Callable:
    return _register(AGGREGATIONS, name)


def register_advantage_estimator(name: str) -> Callable:
    return _register(ADVANTAGE_ESTIMATORS, name)


def register_kl_estimator(name: str) -> Callable:
    return _register(KL_ESTIMATORS, name)


def register_policy_loss(name: str, *, dual_clip: bool = False) -> Callable:
    """Register ``fn(logp, old_logp, advantages, mask, *, clip_param, mode, num_tokens, num_seqs,
    clip_param_low, clip_param_high, clip_ratio_c, tis_weights, norm) -> (loss, diagnostics)``;
    ``dual_clip``: it implements ``clip_ratio_c`` (validation refuses the setting otherwise).
    Its diagnostics must be named in ``POLICY_LOSS_DIAGNOSTICS``."""

    def decorate(fn: Callable) -> Callable:
        fn.supports_dual_clip = dual_clip
        return _register(POLICY_LOSSES, name)(fn)

    return decorate


def lookup(registry: dict[str, Callable], name: str, what: str) -> Callable:
    """``registry[name]``, or a ValueError that lists the valid names."""
    if name not in registry:
        raise ValueError(f"Unknown {what} {name!r}; valid: {', '.join(registry)}.")
    return registry[name]


# ----- advantages ------------------------------------------------------------------------
@register_advantage_estimator("grpo")
def grpo_centred(groups: np.ndarray) -> np.ndarray:
    """r − mean of the group (GRPO; divided by the std when ``advantage_std_norm``)."""
    return groups - groups.mean(axis=1, keepdims=True)


@register_advantage_estimator("rloo")
def rloo_centred(groups: np.ndarray) -> np.ndarray:
    """r − mean of the *other* G−1 rewards (RLOO, Ahmadian et al. 2024) = G/(G−1) (r − mean)."""
    g = groups.shape[1]
    return (groups * g - groups.sum(axis=1, keepdims=True)) / (g - 1)


def group_advantages(
    rewards: np.ndarray, group_size: int, eps: float = 1e-6, *, estimator: str = "grpo", std_norm: bool = True
) -> np.ndarray:
    """Advantages of groups of ``group_size`` consecutive rows.

    Default (GRPO): A = (r − mean_group) / (std_group + eps). ``std_norm=False`` drops
    the division by the std (Dr.GRPO, which finds that it up-weights too easy and too hard
    prompts). A group whose rewards are all equal gets advantage 0 (not NaN): it carries
    no learning signal. std is the population std (ddof=0); verl's GRPO uses torch.std
    (ddof=1) -- the two differ by a constant factor per group size, absorbed by the lr.

    >>> group_advantages(np.array([1.0, 0.0, 1.0, 1.0]), group_size=2).round(3).tolist()
    [1.0, -1.0, 0.0, 0.0]
    >>> group_advantages(np.array([1.0, 0.0, 0.0, 0.0]), group_size=4, std_norm=False).tolist()
    [0.75, -0.25, -0.25, -0.25]
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 1 or len(rewards) % group_size:
        raise ValueError(
            f"group_advantages needs a flat reward array whose length ({rewards.shape}) is a "
            f"multiple of group_size ({group_size})."
        )
    groups = rewards.reshape(-1, group_size)  # (num_prompts, G)
    centred = lookup(ADVANTAGE_ESTIMATORS, estimator, "advantage estimator")(groups)
    if std_norm:
        centred = centred / (groups.std(axis=1, keepdims=True) + eps)
    return centred.reshape(-1).astype(np.float32)


# ----- aggregation -------------------------------------------------------------------
# Each takes the masked per-token values and the *global* minibatch's counts, so that a
# learner's shard contributes its exact share and the sum over learners equals the
# single-learner loss (DDP then averages: the caller multiplies by the world size).
@register_aggregation("token-mean")
def _token_mean(masked, mask, *, num_tokens, num_seqs, norm):
    """Σ tokens / tokens in the minibatch (DAPO, verl's default): long answers weigh more."""
    return masked.sum() / num_tokens


@register_aggregation("seq-mean-token-mean")
def _seq_mean_token_mean(masked, mask, *, num_tokens, num_seqs, norm):
    """Mean over sequences of each sequence's token mean (the original GRPO)."""
    seq_lengths = mask.sum(dim=1).clamp(min=1.0)  # (B,)
    return (masked.sum(dim=1) / seq_lengths).sum() / num_seqs


@register_aggregation("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(masked, mask, *, num_tokens, num_seqs, norm):
    """Σ tokens / (sequences × a constant, ``loss_agg_norm``) (Dr.GRPO): no length bias."""
    return masked.sum() / (num_seqs * norm)


@register_aggregation("seq-mean-token-sum")
def _seq_mean_token_sum(masked, mask, *, num_tokens, num_seqs, norm):
    """Mean over sequences of each sequence's token sum (verl)."""
    return masked.sum() / num_seqs


@register_aggregation("token-sum")
def _token_sum(masked, mask, *, num_tokens, num_seqs, norm):
    """Σ over every token of the minibatch, unnormalised: the loss grows with the minibatch."""
    return masked.sum()


def aggregate(
    per_token: torch.Tensor,  # (B, T)
    mask: torch.Tensor,  # (B, T), 1.0 on completion tokens
    *,
    mode: str,
    num_tokens: float,
    num_seqs: float,
    norm: float = 1.0,
) -> torch.Tensor:
    """Reduce per-token values with denominators of the *global* minibatch (see AGGREGATIONS).

    ``norm`` is the constant of "seq-mean-token-sum-norm" (``loss_agg_norm``).
    """
    fn = lookup(AGGREGATIONS, mode, "loss aggregation (`loss_agg`)")
    return fn(per_token * mask, mask, num_tokens=num_tokens, num_seqs=num_seqs, norm=norm)


# ----- the policy loss -----------------------------------------------------------------
def _shared_diagnostics(log_ratio, mask, n, tis_weights) -> dict[str, torch.Tensor]:
    """What every policy loss reports besides its clipping: Schulman's k3 estimate of
    KL(θ⁰ || θ) per token, and the mean truncated IS weight when there is one."""
    out = {"approx_kl": (((torch.exp(log_ratio) - 1.0) - log_ratio) * mask).sum() / n}
    if tis_weights is not None:
        out["tis_weight_mean"] = (tis_weights * mask).sum() / n
    return out


@register_policy_loss("ppo", dual_clip=True)
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
    clip_param_low: float | None = None,
    clip_param_high: float | None = None,
    clip_ratio_c: float | None = None,
    tis_weights: torch.Tensor | None = None,  # (B, T), detached
    norm: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's token-level clipped surrogate with group advantages (GRPO's policy loss; the
    default, ``policy_loss="ppo"``). Schulman et al. 2017, arXiv 1707.06347; Shao et al.
    2024 (GRPO), arXiv 2402.03300.

    Variants (all off by default, which is GRPO's loss unchanged):
      clip_param_low / clip_param_high: ratio clipped to [1 − low, 1 + high] (DAPO's
          clip-higher); each defaults to ``clip_param``.
      clip_ratio_c: dual clip (Ye et al. 2020): for A < 0 the loss is at most −A·c, so a
          huge ratio on a bad token cannot blow up the step.
      tis_weights: truncated importance weights min(π_θ⁰ / π_rollout, cap) per token, to
          correct for the rollout engine's distribution differing from the trainer's.
    """
    low = clip_param if clip_param_low is None else clip_param_low
    high = clip_param if clip_param_high is None else clip_param_high
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)  # (B, T)
    adv = advantages.unsqueeze(1)  # (B, 1)
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    pg_loss = torch.maximum(pg_loss1, pg_loss2)
    if clip_ratio_c is not None:
        pg_loss3 = -adv * clip_ratio_c
        dual = (adv < 0) & (pg_loss > pg_loss3)  # (B, T): where the dual clip binds
        pg_loss = torch.where(adv < 0, torch.minimum(pg_loss, pg_loss3), pg_loss)
    if tis_weights is not None:
        pg_loss = pg_loss * tis_weights
    loss = aggregate(pg_loss, mask, mode=mode, num_tokens=num_tokens, num_seqs=num_seqs, norm=norm)
    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        metrics = {
            "clipfrac": (((ratio < 1.0 - low) | (ratio > 1.0 + high)).float() * mask).sum() / n,
            **_shared_diagnostics(log_ratio, mask, n, tis_weights),
        }
        if clip_ratio_c is not None:
            metrics["clipfrac_dual"] = (dual.float() * mask).sum() / n
    return loss, metrics


# Bound on log-ratios before exp(), as verl does (GSPO: max 10; CISPO: ±20): a stale token
# with a huge ratio cannot overflow; far outside any clip range, so the loss is unchanged.
_GSPO_MAX_LOG_RATIO = 10.0
_CISPO_MAX_LOG_RATIO = 20.0


def _no_dual_clip(name: str, clip_ratio_c: float | None) -> None:
    if clip_ratio_c is not None:
        raise ValueError(f"`clip_ratio_c` ({clip_ratio_c!r}) is PPO's dual clip; policy_loss={name!r} has none. "
                         "Set clip_ratio_c=None.")


@register_policy_loss("gspo")
def gspo_surrogate(
    logp: torch.Tensor,  # (B, T)
    old_logp: torch.Tensor,  # (B, T)
    advantages: torch.Tensor,  # (B,)
    mask: torch.Tensor,  # (B, T)
    *,
    clip_param: float,
    mode: str,
    num_tokens: float,
    num_seqs: float,
    clip_param_low: float | None = None,
    clip_param_high: float | None = None,
    clip_ratio_c: float | None = None,
    tis_weights: torch.Tensor | None = None,
    norm: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Group Sequence Policy Optimization; Zheng et al., Qwen team 2025, arXiv 2507.18071).

    The importance ratio is the sequence's, length-normalised: s_i = exp(mean_t log(π_θ/π_θ⁰)),
    clipped to [1 − low, 1 + high] per sequence, so one sequence is clipped whole. Written in
    the paper's GSPO-token form, s_i,t = sg[s_i] · π_θ(y_t) / sg[π_θ(y_t)] (same value as s_i;
    its gradient is s_i ∇log π_θ(y_t)): with our per-sequence advantages and
    ``loss_agg="seq-mean-token-mean"`` this is GSPO's objective and gradient exactly (the
    paper's and verl's aggregation; other ``loss_agg`` weigh sequences by their length).
    The paper's clip range is tiny (low 3e-4, high 4e-4): sequence ratios stay near 1.
    ``clipfrac`` is the fraction of completion tokens whose sequence is clipped.
    """
    _no_dual_clip("gspo", clip_ratio_c)
    low = clip_param if clip_param_low is None else clip_param_low
    high = clip_param if clip_param_high is None else clip_param_high
    log_ratio = logp - old_logp
    seq_lengths = mask.sum(dim=1).clamp(min=1.0)  # (B,)
    seq_log_ratio = (log_ratio * mask).sum(dim=1) / seq_lengths  # (B,)
    log_s = logp - logp.detach() + seq_log_ratio.detach().unsqueeze(1)  # (B, T)
    s = torch.exp(torch.clamp(log_s, max=_GSPO_MAX_LOG_RATIO))
    adv = advantages.unsqueeze(1)
    pg_loss = torch.maximum(-adv * s, -adv * torch.clamp(s, 1.0 - low, 1.0 + high))
    if tis_weights is not None:
        pg_loss = pg_loss * tis_weights
    loss = aggregate(pg_loss, mask, mode=mode, num_tokens=num_tokens, num_seqs=num_seqs, norm=norm)
    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        clipped = ((s < 1.0 - low) | (s > 1.0 + high)).float()
        metrics = {"clipfrac": (clipped * mask).sum() / n, **_shared_diagnostics(log_ratio, mask, n, tis_weights)}
    return loss, metrics


@register_policy_loss("cispo")
def cispo_surrogate(
    logp: torch.Tensor,  # (B, T)
    old_logp: torch.Tensor,  # (B, T)
    advantages: torch.Tensor,  # (B,)
    mask: torch.Tensor,  # (B, T)
    *,
    clip_param: float,
    mode: str,
    num_tokens: float,
    num_seqs: float,
    clip_param_low: float | None = None,
    clip_param_high: float | None = None,
    clip_ratio_c: float | None = None,
    tis_weights: torch.Tensor | None = None,
    norm: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (Clipped IS-weight Policy Optimization; MiniMax-M1, MiniMax 2025, arXiv 2506.13585).

    Loss per token: −sg[clip(r_t, 1 − low, 1 + high)] · A · log π_θ(y_t), with r_t = π_θ/π_θ⁰.
    The IS weight is clipped and detached instead of the update: every token keeps a
    gradient (PPO drops clipped tokens' gradients, which silences rare "fork" tokens). The
    paper sets no lower bound in effect (a large ε_low) and tunes ε_high; here
    ``clip_param_low``/``clip_param_high`` bound it as in verl (``clip_param_low=0.99``
    leaves the lower side almost open). The loss's value holds log π, not a ratio.
    ``clipfrac`` is the fraction of tokens whose weight is clipped.
    """
    _no_dual_clip("cispo", clip_ratio_c)
    low = clip_param if clip_param_low is None else clip_param_low
    high = clip_param if clip_param_high is None else clip_param_high
    log_ratio = torch.clamp(logp - old_logp, min=-_CISPO_MAX_LOG_RATIO, max=_CISPO_MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, 1.0 - low, 1.0 + high).detach()
    pg_loss = -weight * advantages.unsqueeze(1) * logp
    if tis_weights is not None:
        pg_loss = pg_loss * tis_weights
    loss = aggregate(pg_loss, mask, mode=mode, num_tokens=num_tokens, num_seqs=num_seqs, norm=norm)
    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        metrics = {
            "clipfrac": ((ratio != weight).float() * mask).sum() / n,
            **_shared_diagnostics(log_ratio, mask, n, tis_weights),
        }
    return loss, metrics


def policy_loss(name: str) -> Callable:
    """The registered policy loss ``name`` (``policy_loss``)."""
    return lookup(POLICY_LOSSES, name, "policy loss (`policy_loss`)")


def truncated_is_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """min(π_θ⁰ / π_rollout, cap) per token, detached (TIS, as in verl and TRL)."""
    with torch.no_grad():
        return torch.exp(old_logp - rollout_logp).clamp(max=cap)


# ----- KL to the reference model ---------------------------------------------------------
# Schulman's estimators of KL(θ || θ_ref) from samples of θ, with log_ratio = log θ_ref − log θ.
@register_kl_estimator("k1")
def _kl_k1(logp, ref_logp):
    """log θ − log θ_ref: unbiased, high variance, can be negative."""
    return logp - ref_logp


@register_kl_estimator("k2")
def _kl_k2(logp, ref_logp):
    """½ (log θ − log θ_ref)²: biased, low variance, >= 0 (verl 'mse')."""
    return 0.5 * (logp - ref_logp).square()


@register_kl_estimator("k3")
def _kl_k3(logp, ref_logp):
    """exp(r) − r − 1 with r = log θ_ref − log θ: unbiased, >= 0 (GRPO, verl 'low_var_kl')."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(θ || θ_ref) (default k3, as in GRPO)."""
    return lookup(KL_ESTIMATORS, estimator, "KL estimator (`kl_estimator`)")(logp, ref_logp)
