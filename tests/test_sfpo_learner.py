"""SFPOTorchLearner against a hand-written Algorithm 1 on a toy causal LM.

The reference below is the poster's Algorithm 1 with plain SGD, written with nothing but
torch.autograd: K fast passes, θ̃ = θ⁰ + α(θᴷ − θ⁰), one slow pass, old log-probs of θ⁰.
"""

import copy

import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID

from sfpo_envs import TextSpace, Verdict
from sfpo_rllib import SFPOConfig
from sfpo_rllib.batch import build_learner_batches
from sfpo_rllib.causal_lm_module import completion_logp_and_entropy, load_causal_lm
from sfpo_rllib.columns import (ADVANTAGES, ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS, MB_INDEX, MB_NUM_SEQS,
                                MB_NUM_TOKENS, Rollout)
from sfpo_rllib.losses import clipped_surrogate

SPACES = {DEFAULT_MODULE_ID: (TextSpace(), TextSpace())}
LR = 0.5


def make_records(n=16, seed=0, vocab=40, eos=1):
    rng = np.random.default_rng(seed)
    return [
        Rollout(
            prompt_ids=rng.integers(3, vocab, size=rng.integers(2, 6)).tolist(),
            completion_ids=rng.integers(3, vocab, size=rng.integers(1, 6)).tolist() + [eos],
            verdict=Verdict.from_reward(float(rng.random())),
        )
        for _ in range(n)
    ]


SCALING = ("max_tokens_per_micro_batch", "micro_batch_size", "logp_chunk_tokens", "share_prompt_prefix",
           "mixed_precision", "learner_strategy")


def learner_for(model_dir, model_dtype="float32", **training):
    settings = dict(optimizer="sgd", weight_decay=0.0, lr=LR, grad_clip=None, group_size=4,
                    train_batch_size_per_learner=16, minibatch_size=8, clip_param=0.2)
    settings.update(training)
    scaling = {k: settings.pop(k) for k in SCALING if k in settings}
    config = (
        SFPOConfig()
        .environment("sfpo/Arithmetic-v0")
        .training(**settings)
        .scaling(**scaling)
        .generation(model_name_or_path=str(model_dir), model_dtype=model_dtype, max_new_tokens=24)
    )
    config.validate()
    return config.build_learner(spaces=SPACES)


def params_of(learner):
    return {k: v.detach().clone() for k, v in learner.module[DEFAULT_MODULE_ID].lm.named_parameters()}


def torch_minibatches(batch):
    shard = batch.policy_batches[DEFAULT_MODULE_ID]
    cols = {k: torch.from_numpy(np.asarray(shard[k])) for k in shard.keys()}
    return [{k: v[cols[MB_INDEX] == m] for k, v in cols.items()} for m in torch.unique(cols[MB_INDEX]).tolist()]


def reference_algorithm1(model_dir, batch, *, fast_steps, alpha, lr=LR):
    model = load_causal_lm(str(model_dir))
    params = list(model.parameters())
    mbs = torch_minibatches(batch)

    def logp_of(mb):
        return completion_logp_and_entropy(model, mb[INPUT_IDS], mb[ATTENTION_MASK], mb[COMPLETION_MASK].shape[1], 1.0)[0]

    with torch.no_grad():
        old = [logp_of(mb) for mb in mbs]  # π_old = θ⁰, fixed for all passes

    def sgd_pass():
        for mb, old_logp in zip(mbs, old):
            loss, _ = clipped_surrogate(logp_of(mb), old_logp, mb[ADVANTAGES], mb[COMPLETION_MASK], clip_param=0.2,
                                        mode="token-mean", num_tokens=mb[MB_NUM_TOKENS][0], num_seqs=mb[MB_NUM_SEQS][0])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    if g is not None:
                        p -= lr * g

    theta0 = [p.detach().clone() for p in params]
    if alpha > 0:
        for _ in range(fast_steps):  # Stage I
            sgd_pass()
        with torch.no_grad():  # Stage II
            for p, p0 in zip(params, theta0):
                p.copy_(p0 + alpha * (p - p0))
    sgd_pass()  # Stage III
    return dict(model.named_parameters())


def batch_for(records, **kw):
    (batch,), _ = build_learner_batches(records, group_size=4, num_learners=0, minibatch_size_per_learner=8, pad_token_id=0, **kw)
    return batch


@pytest.mark.parametrize("fast_steps,alpha", [(3, 0.8), (2, 0.5), (3, 0.0)])
def test_learner_matches_algorithm_1_with_plain_sgd(random_llama, fast_steps, alpha):
    batch = batch_for(make_records())
    learner = learner_for(random_llama)
    before = params_of(learner)
    out = learner.update(batch=copy.deepcopy(batch), alpha=alpha, fast_steps=fast_steps)
    after = params_of(learner)
    expected = reference_algorithm1(random_llama, batch, fast_steps=fast_steps, alpha=alpha)
    moved = sum(float((after[k] - before[k]).abs().max()) for k in after)
    assert moved > 1e-4, "the update did not move the parameters: the test would prove nothing"
    for name, value in after.items():
        torch.testing.assert_close(value, expected[name].detach(), rtol=1e-5, atol=1e-6, msg=name)
    passes = (fast_steps + 1) if alpha > 0 else 1
    assert out["sfpo"].optimizer_steps == passes * 2  # 2 minibatches per pass
    if alpha > 0:
        assert out["sfpo"].reposition_distance > 0
    else:
        assert out["sfpo"].reposition_distance == 0.0


def test_alpha_one_equals_k_plus_one_epochs_bit_for_bit_with_adamw(random_llama):
    batch = batch_for(make_records(seed=3))
    sfpo = learner_for(random_llama, optimizer="adamw", lr=1e-3, fast_steps=3, reposition_alpha=1.0)
    grpo = learner_for(random_llama, optimizer="adamw", lr=1e-3, fast_steps=0, num_epochs=4)
    sfpo.update(batch=copy.deepcopy(batch), alpha=1.0, fast_steps=3)
    grpo.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=0)
    a, b = params_of(sfpo), params_of(grpo)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adam_moments_are_carried_through_fast_steps_and_reposition(random_llama):
    batch = batch_for(make_records(seed=4))
    learner = learner_for(random_llama, optimizer="adamw", lr=1e-3)
    optim = learner.get_optimizer(DEFAULT_MODULE_ID)
    learner.update(batch=copy.deepcopy(batch), alpha=0.8, fast_steps=3)
    steps = {int(s["step"]) for s in optim.state.values()}
    assert steps == {4 * 2}  # (K + 1) passes x 2 minibatches, never reset
    exp_avg = [s["exp_avg"].clone() for s in optim.state.values()]
    learner.update(batch=copy.deepcopy(batch), alpha=0.8, fast_steps=3)
    assert {int(s["step"]) for s in optim.state.values()} == {16}
    assert any(not torch.equal(e, s["exp_avg"]) for e, s in zip(exp_avg, optim.state.values()))


def test_lr_schedule_is_evaluated_once_per_iteration(random_llama):
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

    batch = batch_for(make_records(seed=5))
    learner = learner_for(random_llama, optimizer="adamw", lr=[[0, 1e-3], [100, 1e-4]])
    optim = learner.get_optimizer(DEFAULT_MODULE_ID)
    lrs = []
    original_step = optim.step

    def recording_step(*args, **kwargs):
        lrs.append(optim.param_groups[0]["lr"])
        return original_step(*args, **kwargs)

    optim.step = recording_step
    learner.update(batch=copy.deepcopy(batch), alpha=0.8, fast_steps=3, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 50})
    assert len(lrs) == 8 and len(set(lrs)) == 1  # the same lr for all K+1 passes
    assert lrs[0] == pytest.approx(1e-3 + 0.5 * (1e-4 - 1e-3))


@pytest.mark.parametrize("minibatch_size", [16, 8])
def test_theta0_statistics_equal_a_separate_no_grad_pass_and_the_first_minibatch_costs_no_extra_forward(
        random_llama, minibatch_size):
    """The first minibatch's θ⁰ log-probs and entropies come from the first optimizer step's own
    forward: the entropy sum and the rollout gap equal those of a plain no-grad pass at θ⁰, and
    with one minibatch each micro-batch runs exactly one forward per optimizer step."""
    records = make_records(seed=5)
    for r in records:
        r.rollout_logp = [-1.0] * len(r.completion_ids)
    (batch,), _ = build_learner_batches(records, group_size=4, num_learners=0, minibatch_size_per_learner=minibatch_size,
                                        pad_token_id=0)
    learner = learner_for(random_llama, minibatch_size=minibatch_size, max_tokens_per_micro_batch=30)
    theta0 = load_causal_lm(str(random_llama))
    forwards = []
    learner._policy().lm.model.register_forward_hook(lambda *_: forwards.append(1))
    out = learner.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=0)["sfpo"]

    entropy_sum, gap_sum, tokens = 0.0, 0.0, 0.0
    with torch.no_grad():
        for mb in torch_minibatches(batch):
            mask = mb[COMPLETION_MASK]
            logp, entropy = completion_logp_and_entropy(theta0, mb[INPUT_IDS], mb[ATTENTION_MASK], mask.shape[1], 1.0,
                                                        completion_mask=mask)
            entropy_sum += float((entropy * mask).sum())
            gap_sum += float(((logp - mb["rollout_logp"]).abs() * mask).sum())
            tokens += float(mask.sum())
    assert out.num_tokens == tokens
    assert out.entropy == pytest.approx(entropy_sum, rel=1e-5)
    assert out.rollout_logp_diff == pytest.approx(gap_sum, rel=1e-5)
    minibatches = 16 // minibatch_size
    per_pass = out.micro_batches
    # One forward per micro-batch per step, plus the θ⁰ forward of every minibatch but the first.
    first = per_pass // minibatches
    assert len(forwards) == per_pass + (per_pass - first)
