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

from typing import Any, Sequence

import numpy as np
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

from sfpo_rllib.causal_lm_module import ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS
from sfpo_rllib.losses import group_advantages

ADVANTAGES = "advantages"  # (B,) float32
MB_INDEX = "mb_index"  # (B,) int64: the global minibatch this row belongs to
MB_NUM_TOKENS = "mb_num_tokens"  # (B,) float32: completion tokens in that whole minibatch
MB_NUM_SEQS = "mb_num_seqs"  # (B,) float32: completions in that whole minibatch
# (B, C) float32, aligned with the completion mask (0 on padding): log π of each sampled
# token as the rollout engine computed it (temperature-scaled; see engines/base.py). The
# learner compares it with θ⁰'s recompute (rollout_logp_diff); a truncated-importance-
# sampling loss can weight by exp(old_logp - rollout_logp).
ROLLOUT_LOGP = "rollout_logp"


def pad_rows(records: Sequence[dict], pad_token_id: int) -> dict[str, np.ndarray]:
    """[left-padded prompt | right-padded completion] rows, as the module expects."""
    prompt_width = max(len(r["prompt_ids"]) for r in records)
    completion_width = max(1, max(len(r["completion_ids"]) for r in records))
    n = len(records)
    input_ids = np.full((n, prompt_width + completion_width), pad_token_id, dtype=np.int64)
    attention = np.zeros((n, prompt_width + completion_width), dtype=np.int64)
    completion_mask = np.zeros((n, completion_width), dtype=np.float32)
    rollout_logp = np.zeros((n, completion_width), dtype=np.float32)
    for i, r in enumerate(records):
        p, c = r["prompt_ids"], r["completion_ids"]
        input_ids[i, prompt_width - len(p) : prompt_width] = p
        input_ids[i, prompt_width : prompt_width + len(c)] = c
        attention[i, prompt_width - len(p) : prompt_width + len(c)] = 1
        # The mask comes from lengths, never from `ids != pad`: where pad == eos (Qwen)
        # that would drop the eos and the model would never learn to stop.
        completion_mask[i, : len(c)] = 1.0
        if "rollout_logp" in r:
            rollout_logp[i, : len(c)] = r["rollout_logp"]
    return {INPUT_IDS: input_ids, ATTENTION_MASK: attention, COMPLETION_MASK: completion_mask, ROLLOUT_LOGP: rollout_logp}


def build_learner_batches(
    records: Sequence[dict],
    *,
    group_size: int,
    num_learners: int,
    minibatch_size_per_learner: int,
    pad_token_id: int,
) -> tuple[list[MultiAgentBatch], dict[str, Any]]:
    """Records (groups of ``group_size`` consecutive completions) -> one batch per learner."""
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
    rewards = np.array([r["reward"] for r in records], dtype=np.float64)
    columns = pad_rows(records, pad_token_id)
    columns[ADVANTAGES] = group_advantages(rewards, group_size)
    tokens_per_row = columns[COMPLETION_MASK].sum(axis=1)

    mb_index = np.repeat(np.arange(n // global_mb), global_mb)
    mb_tokens = np.repeat(tokens_per_row.reshape(-1, global_mb).sum(axis=1), global_mb)
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
    stats = {
        "completion_tokens": float(tokens_per_row.sum()),
        "completion_length_mean": float(tokens_per_row.mean()),
        "groups_all_equal_reward": int(
            (rewards.reshape(-1, group_size).std(axis=1) == 0).sum()
        ),
    }
    return batches, stats
