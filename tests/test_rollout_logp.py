"""The engine's own log-probs: from the `hf` engine, into the `rollout_logp` batch column, and
compared with θ⁰ by the learner (`rollout_logp_diff`). The vLLM side: test_vllm_engine.py."""

import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID

from sfpo_envs import TextSpace, Verdict
from sfpo_rllib import SFPOConfig
from sfpo_rllib.batch import build_learner_batches, pad_rows
from sfpo_rllib.causal_lm_module import completion_logp_and_entropy, load_causal_lm
from sfpo_rllib.columns import ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS, ROLLOUT_LOGP, Rollout
from sfpo_rllib.engines import Completion, SamplingParams
from sfpo_rllib.engines.hf import HFGenerateEngine
from sfpo_rllib.rollout_agreement import rollout_logp_gap

PROMPTS = [[5, 6, 7, 8], [9], [10, 11]]


def recompute(lm, rows, temperature):
    cols = pad_rows(rows, pad_token_id=0)
    with torch.no_grad():
        logp, _ = completion_logp_and_entropy(
            lm, torch.from_numpy(cols[INPUT_IDS]), torch.from_numpy(cols[ATTENTION_MASK]),
            cols[COMPLETION_MASK].shape[1], temperature,
        )
    return cols, logp


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_hf_engine_logprobs_are_the_learners_at_the_temperature(random_model_factory, temperature):
    lm = load_causal_lm(random_model_factory("llama"))
    with torch.no_grad():
        lm.lm_head.weight.mul_(10.0)  # a peaked distribution: temperature matters
    engine = HFGenerateEngine(lm, pad_token_id=0, eos_token_id=1, max_batch_size=5)  # 3 generate calls
    completions = engine.generate(PROMPTS, 4, SamplingParams(max_new_tokens=7, temperature=temperature), seed=0)
    assert all(isinstance(c, Completion) and len(c.logprobs) == len(c) for c in completions)
    rows = [Rollout(PROMPTS[i // 4], list(c), rollout_logp=c.logprobs) for i, c in enumerate(completions)]
    cols, logp = recompute(lm, rows, temperature)
    mask = torch.from_numpy(cols[COMPLETION_MASK])
    rollout = torch.from_numpy(cols[ROLLOUT_LOGP])
    assert rollout.dtype == torch.float32 and rollout.shape == mask.shape
    assert float(((rollout - logp).abs() * mask).max()) < 2e-5
    assert float((rollout * (1 - mask)).abs().max()) == 0.0  # padding stays 0
    # ...and not at another temperature: the check can fail.
    _, other = recompute(lm, rows, 1.7 * temperature)
    assert float(((rollout - other).abs() * mask).max()) > 1e-2


def test_gap_is_masked_sum_and_max():
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 9.0]])
    rollout = torch.tensor([[-1.1, -2.0, 0.0], [-0.5, -0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    total, worst = rollout_logp_gap(old, rollout, mask)
    assert total == pytest.approx(0.4) and worst == pytest.approx(0.3)
    assert rollout_logp_gap(old, rollout, torch.zeros_like(mask)) == (0.0, 0.0)


def test_learner_reports_the_gap_to_theta0(random_model_factory):
    """With the engine's log-probs equal to θ⁰'s, the gap is ~0; shifted by 0.25, it is 0.25."""
    path = random_model_factory("llama")
    lm = load_causal_lm(path)
    rng = np.random.default_rng(0)
    records = []
    for i in range(16):
        prompt = rng.integers(3, 40, size=rng.integers(2, 6)).tolist()
        completion = rng.integers(3, 40, size=rng.integers(1, 6)).tolist() + [1]
        records.append(Rollout(prompt, completion, Verdict.from_reward(float(i % 3))))
    _, logp = recompute(lm, records, 1.0)
    for shift in (0.0, 0.25):
        for i, r in enumerate(records):
            r.rollout_logp = (logp[i, : len(r.completion_ids)] + shift).tolist()
        config = (SFPOConfig().environment("sfpo/Arithmetic-v0")
                  .training(group_size=4, train_batch_size_per_learner=16, minibatch_size=8, lr=1e-3)
                  .generation(model_name_or_path=path, max_new_tokens=8))  # the random model has 64 positions
        config.validate()
        learner = config.build_learner(spaces={DEFAULT_MODULE_ID: (TextSpace(), TextSpace())})
        batches, stats = build_learner_batches(records, group_size=4, num_learners=0, minibatch_size_per_learner=8,
                                               pad_token_id=0)
        out = learner.update(batch=batches[0], alpha=0.0, fast_steps=0)["sfpo"]
        mean = out.rollout_logp_diff / out.num_tokens  # a sum over tokens
        assert mean == pytest.approx(shift, abs=1e-5)
        assert out.rollout_logp_diff_max == pytest.approx(shift, abs=1e-5)
