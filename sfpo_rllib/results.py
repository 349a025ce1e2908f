"""What env runners and learners send back each iteration, and how the driver combines it.

Each result is a dataclass whose fields declare their reduction over workers, so a new
metric is one field here: the driver's combination (``combine``) and the metrics row's
field list (``row_fields``, behind ``sfpo.METRIC_FIELDS``) are derived from the fields.

  SUM         added over workers (counts)
  MAX         the largest (times of parallel workers, worst gaps)
  MEAN        the plain mean over the workers that report it (per-learner diagnostics)
  FIRST       the first worker's (values every worker shares, e.g. DDP's replicated step count)
  TOKEN_MEAN  each worker sends its *sum* over its completion tokens; the row gets the sum
              over workers divided by all workers' tokens (``num_tokens``), so learners
              combine exactly, whatever their shares
  CONCAT      lists joined in worker order (the rollouts)

A field reported as None by any worker (not measured this run, e.g. no engine log-probs)
is None in the row. Fields with ``logged=False`` travel but are not row fields.

No Ray: the learner, the runner and the driver import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from sfpo_rllib.losses import POLICY_LOSS_DIAGNOSTICS

SUM, MAX, MEAN, FIRST, TOKEN_MEAN, CONCAT = "sum", "max", "mean", "first", "token_mean", "concat"
TOKEN_COUNT = "num_tokens"  # the field TOKEN_MEAN divides by
STAGES = ("fast", "slow")  # the learner's per-stage diagnostics: fast_* (K fast passes), slow_* (the slow pass)
# Loss diagnostics logged per optimizer step and averaged per stage. The policy loss's own
# (losses.POLICY_LOSS_DIAGNOSTICS) plus the total's KL term and the gradient norm.

PASS_DIAGNOSTICS = ("policy_loss", *POLICY_LOSS_DIAGNOSTICS, "kl", "grad_norm")
DIAGNOSTIC_FIELDS = tuple(f"{stage}_{name}" for stage in STAGES for name in PASS_DIAGNOSTICS)


def metric(reduce: str, *, logged: bool = True, names: Sequence[str] | None = None, default: Any = None):
    """A result field reduced by ``reduce``; ``names``: the row fields a dict-valued field expands to."""
    meta = {"reduce": reduce, "logged": logged, "names": tuple(names) if names is not None else None}
    if isinstance(default, (list, dict)):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunnerResult:
    """``SFPOEnvRunner.sample``: one round of rollouts from one runner."""

    records: list = metric(CONCAT, logged=False, default=[])  # one columns.Rollout per completion
    time_generate_s: float = metric(MAX, default=0.0)  # runners run in parallel: the slowest
    time_verify_s: float = metric(MAX, default=0.0)
    time_weight_sync_s: float = metric(MAX, default=0.0)  # the load of the weights these rollouts were sampled with


@dataclass
class LearnerResult:
    """``SFPOTorchLearner.update``'s SFPO part: one iteration on one learner's shard."""

    num_tokens: float = metric(SUM, logged=False, default=0.0)  # completion tokens in the loss
    entropy: float = metric(TOKEN_MEAN, default=0.0)  # H_s, the entropy trigger's input
    reposition_distance: float = metric(FIRST, default=0.0)  # ||θᴷ − θ⁰||; 0 without a fast stage
    optimizer_steps: int = metric(FIRST, default=0)
    gxpo_scale_mean: float | None = metric(FIRST)  # GXPO's extrapolation scale (fast_stage="gxpo"; null otherwise)
    lm_head_grad_norm: float | None = metric(FIRST)  # DGG's gate input, the same on every learner (reuse_gate="lm_head_grad")
    micro_batches: int = metric(SUM, logged=False, default=0)
    real_tokens: float = metric(SUM, logged=False, default=0.0)  # prompt + completion tokens
    computed_tokens: float = metric(SUM, logged=False, default=0.0)  # the same with micro-batch padding
    # The engine's log π vs the learner's θ⁰ recompute, |difference| over completion tokens.
    rollout_logp_diff: float | None = metric(TOKEN_MEAN)
    rollout_logp_diff_max: float | None = metric(MAX)
    # The decoupled loss's behaviour weights min(π_θ⁰/π_behaviour, tis_cap) (rollout_lag=1 only).
    behaviour_weight_mean: float | None = metric(TOKEN_MEAN)
    behaviour_weight_truncated_fraction: float | None = metric(TOKEN_MEAN)
    # "{stage}_{name}" -> mean over the stage's optimizer steps (absent: not computed).
    diagnostics: dict = metric(MEAN, names=DIAGNOSTIC_FIELDS, default={})


def row_fields(cls) -> tuple[str, ...]:
    """The metrics-row fields a result class (or any dataclass: every field) contributes."""
    out: list[str] = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("logged", True):
            out.extend(f.metadata.get("names") or (f.name,))
    return tuple(out)


def _reduce(how: str, values: list, tokens: list[float]):
    if how == CONCAT:
        return [x for value in values for x in value]
    if any(v is None for v in values):
        return None
    if how == SUM:
        return sum(values)
    if how == MAX:
        return max(values)
    if how == FIRST:
        return values[0]
    if how == MEAN:
        return sum(values) / len(values)
    if how == TOKEN_MEAN:
        return sum(values) / max(1.0, sum(tokens))
    raise ValueError(f"Unknown reduction {how!r}.")


def combine(results: Sequence) -> dict[str, Any]:
    """All workers' results of one class -> one value per field (dict fields expanded per key,
    a key averaged over the workers that report it, absent keys None)."""
    cls = type(results[0])
    tokens = [getattr(r, TOKEN_COUNT) for r in results] if hasattr(results[0], TOKEN_COUNT) else []
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        how, names = f.metadata["reduce"], f.metadata["names"]
        values = [getattr(r, f.name) for r in results]
        if names is None:
            out[f.name] = _reduce(how, values, tokens)
            continue
        for name in names:
            reported = [v[name] for v in values if v.get(name) is not None]
            out[name] = _reduce(how, reported, tokens) if reported else None
    return out


def logged(combined: dict[str, Any], cls) -> dict[str, Any]:
    """The row fields of ``combine``'s output."""
    return {name: combined[name] for name in row_fields(cls)}
