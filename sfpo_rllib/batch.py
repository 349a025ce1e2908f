"""Turn rollout records into one training batch per learner.

The driver fixes everything that must not depend on how many learners there are:
group advantages (over whole groups, before any sharding), the padded widths, and the
global minibatches (consecutive groups, in sampling order, the same for every pass and
epoch). Learner w then receives, from every global minibatch, its contiguous 1/W share
(whole groups), plus the minibatch's global token and sequence counts so its loss is
normalised over the whole minibatch. The sum of the learners' losses then equals the
single-learner loss, and num_learners=0 and num_learners=2 take the same steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

from sfpo_rllib.columns import (
    ADVANTAGES,
    COMPLETION_MASK,
    MB_INDEX,
    MB_NUM_SEQS,
    MB_NUM_TOKENS,
    Rollout,
)
from sfpo_rllib.losses import group_advantages
# The row layout and micro-batching are pure numpy/PyTorch (rows.py); imported from here too.
from sfpo_rllib.rows import RowTooLongError, cut_micro_batches, pad_rows, plan_micro_batches  # noqa: F401


def pad_token_of(tokenizer) -> int:
    """The id that pads rows: the tokenizer's pad token, else its eos (safe: masks come from
    lengths, never from comparing ids with the pad id)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@dataclass
class BatchStats:
    """The metrics of one iteration's training batch (before sharding)."""

    completion_tokens: float  # before mask_truncated
    completion_length_mean: float
    groups_all_equal_reward: int  # groups whose advantages are all 0 (no learning signal)


def build_learner_batches(
    records: Sequence[Rollout],
    *,
    group_size: int,
    num_learners: int,
    minibatch_size_per_learner: int,
    pad_token_id: int,
    advantage_estimator: str = "grpo",
    advantage_std_norm: bool = True,
    mask_truncated: bool = False,
) -> tuple[list[MultiAgentBatch], dict[str, Any]]:
    """Rollouts (groups of ``group_size`` consecutive completions) -> one batch per learner.

    ``mask_truncated`` zeroes the completion mask of completions that did not stop
    (``Rollout.stopped`` False): they leave the loss, its token counts and the entropy.
    Row lengths against ``max_tokens_per_micro_batch`` are checked where micro-batches are
    cut (rows.plan_micro_batches, on the learner, before its first forward).
    """
    n = len(records)
    world = max(1, num_learners)
    global_mb = minibatch_size_per_learner * world
    if n % global_mb or minibatch_size_per_learner % group_size:
        raise ValueError(
            f"Cannot cut {n} completions into minibatches of {minibatch_size_per_learner} per learner "
            f"x {world} learner(s) with whole groups of {group_size}; the config validation should "
            "have caught this (train_batch_size_per_learner and minibatch_size must be multiples "
            "of group_size, and the batch a multiple of the minibatch)."
        )
    rewards = np.array([r.reward for r in records], dtype=np.float64)
    columns = pad_rows(records, pad_token_id)
    columns[ADVANTAGES] = group_advantages(
        rewards, group_size, estimator=advantage_estimator, std_norm=advantage_std_norm
    )
    lengths = columns[COMPLETION_MASK].sum(axis=1)
    if mask_truncated:
        stopped = np.array([r.stopped for r in records], dtype=np.float32)
        columns[COMPLETION_MASK] *= stopped[:, None]
    tokens_per_row = columns[COMPLETION_MASK].sum(axis=1)

    mb_index = np.repeat(np.arange(n // global_mb), global_mb)
    # At least 1: a minibatch whose completions are all masked has loss 0, not 0/0.
    mb_tokens = np.repeat(np.maximum(tokens_per_row.reshape(-1, global_mb).sum(axis=1), 1.0), global_mb)
    columns[MB_INDEX] = mb_index.astype(np.int64)
    columns[MB_NUM_TOKENS] = mb_tokens.astype(np.float32)
    columns[MB_NUM_SEQS] = np.full(n, global_mb, dtype=np.float32)

    per_learner = minibatch_size_per_learner
    batches = []
    for w in range(world):
        # Learner w: rows [m*global_mb + w*per_learner, ... + per_learner) of every minibatch m.
        rows = np.concatenate(
            [np.arange(start + w * per_learner, start + (w + 1) * per_learner) for start in range(0, n, global_mb)]
        )
        shard = SampleBatch({k: v[rows] for k, v in columns.items()})
        batches.append(MultiAgentBatch({DEFAULT_MODULE_ID: shard}, env_steps=len(rows)))
    stats = BatchStats(
        completion_tokens=float(lengths.sum()),
        completion_length_mean=float(lengths.mean()),
        groups_all_equal_reward=int((rewards.reshape(-1, group_size).std(axis=1) == 0).sum()),
    )
    return batches, asdict(stats)
