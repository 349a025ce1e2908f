"""Batch building: padding layout, eos kept where pad == eos, learner-count-invariant minibatches."""

import numpy as np
import pytest
from ray.rllib.core import DEFAULT_MODULE_ID

from sfpo_envs import Verdict
from sfpo_rllib.batch import build_learner_batches, pad_rows
from sfpo_rllib.columns import (ADVANTAGES, ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS, MB_INDEX, MB_NUM_SEQS,
                                MB_NUM_TOKENS, Rollout)

EOS = PAD = 7  # Qwen-style: the pad token is the eos token


def records(n, group_size=2, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        completion = list(rng.integers(10, 20, size=rng.integers(1, 5))) + [EOS]
        out.append(Rollout(list(rng.integers(10, 20, size=rng.integers(2, 6))), completion,
                           Verdict.from_reward(float(rng.integers(0, 2)))))
    return out


def test_layout_is_left_padded_prompt_then_completion_and_mask_keeps_eos():
    rows = [Rollout([11, 12], [13, EOS]), Rollout([14], [EOS])]
    cols = pad_rows(rows, PAD)
    assert cols[INPUT_IDS].tolist() == [[11, 12, 13, EOS], [PAD, 14, EOS, PAD]]
    assert cols[ATTENTION_MASK].tolist() == [[1, 1, 1, 1], [0, 1, 1, 0]]
    assert cols[COMPLETION_MASK].tolist() == [[1.0, 1.0], [1.0, 0.0]]  # the eos counts


def test_two_learners_get_whole_groups_and_the_same_global_minibatches():
    recs = records(16)
    (single,), _ = build_learner_batches(recs, group_size=2, num_learners=0, minibatch_size_per_learner=8, pad_token_id=PAD)
    shards, _ = build_learner_batches(recs, group_size=2, num_learners=2, minibatch_size_per_learner=4, pad_token_id=PAD)
    one = single.policy_batches[DEFAULT_MODULE_ID]
    a, b = (s.policy_batches[DEFAULT_MODULE_ID] for s in shards)
    assert len(a) == len(b) == 8
    for m in (0, 1):
        whole = one[INPUT_IDS][one[MB_INDEX] == m]
        split = np.concatenate([a[INPUT_IDS][a[MB_INDEX] == m], b[INPUT_IDS][b[MB_INDEX] == m]])
        np.testing.assert_array_equal(whole, split)
        tokens = one[COMPLETION_MASK][one[MB_INDEX] == m].sum()
        assert set(a[MB_NUM_TOKENS][a[MB_INDEX] == m]) == {tokens} == set(b[MB_NUM_TOKENS][b[MB_INDEX] == m])
        assert set(a[MB_NUM_SEQS]) == {8.0}
    np.testing.assert_array_equal(np.sort(np.concatenate([a[ADVANTAGES], b[ADVANTAGES]])), np.sort(one[ADVANTAGES]))


def test_advantages_are_computed_before_sharding(monkeypatch):
    """Once, over the whole batch's rewards (not per learner's shard), and every row, whichever
    learner gets it, carries its own group's advantage as computed by hand."""
    from sfpo_rllib import batch as batch_module
    from sfpo_rllib.losses import group_advantages

    seen = []

    def recording(rewards, group_size, **kw):
        seen.append(len(rewards))
        return group_advantages(rewards, group_size, **kw)

    monkeypatch.setattr(batch_module, "group_advantages", recording)
    recs = records(16, seed=3)
    for i, r in enumerate(recs):  # unique prompts identify rows; groups with unequal rewards
        r.prompt_ids[:] = [100 + i]
        r.verdict = Verdict.from_reward(float(i % 4 in (0, 3) if i < 8 else i % 2))
    shards, _ = build_learner_batches(recs, group_size=4, num_learners=2, minibatch_size_per_learner=4, pad_token_id=PAD)
    assert seen == [16]
    rewards = np.array([r.reward for r in recs]).reshape(-1, 4)
    by_hand = ((rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, keepdims=True) + 1e-6)).reshape(-1)
    for shard in shards:
        rows = shard.policy_batches[DEFAULT_MODULE_ID]
        for ids, advantage in zip(rows[INPUT_IDS], rows[ADVANTAGES]):
            index = next(int(t) for t in ids if t >= 100) - 100
            assert advantage == pytest.approx(by_hand[index], abs=1e-6), index


def test_row_lengths_are_checked_once_where_micro_batches_are_cut():
    """Not on the driver too (it was checked by the config, the driver and the learner): the
    driver builds the batch whatever the budget; the learner's micro-batch planner refuses a
    row no micro-batch can hold, before its first forward."""
    import inspect

    from sfpo_rllib.rows import RowTooLongError, plan_micro_batches

    assert "max_tokens_per_micro_batch" not in inspect.signature(build_learner_batches).parameters
    with pytest.raises(RowTooLongError, match=r"`max_tokens_per_micro_batch` \(9\) is smaller than row 1"):
        plan_micro_batches([3, 6], [4, 4], max_tokens=9)


def test_minibatch_that_splits_a_group_is_refused():
    with pytest.raises(ValueError, match="whole groups"):
        build_learner_batches(records(8), group_size=4, num_learners=0, minibatch_size_per_learner=2, pad_token_id=PAD)
