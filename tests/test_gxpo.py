"""GXPO (fast_stage="gxpo"): the retention scale by hand, the learner against a hand-written
per-minibatch reference, and bit-exact where it reduces to SFPO (K = 2, one minibatch) or to
GRPO (α = 0)."""

import copy
import dataclasses
import math

import pytest
import torch
from sfpo_envs import Verdict
from test_sfpo_learner import (LR, batch_for, learner_for, make_records, params_of, torch_minibatches)

from sfpo_rllib import gxpo
from sfpo_rllib.batch import build_learner_batches
from sfpo_rllib.causal_lm_module import completion_logp_and_entropy, load_causal_lm
from sfpo_rllib.columns import ADVANTAGES, ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS, MB_NUM_SEQS, MB_NUM_TOKENS
from sfpo_rllib.losses import clipped_surrogate


def test_retention_scale_by_hand():
    # Coordinates: r = 0.5; r = -3 clamped to -2; r = 4 clamped to 3; r = -1 (S2 = 0); inactive g0.
    g0 = torch.tensor([1.0, 1.0, 1.0, 1.0, 1e-9])
    g1 = torch.tensor([0.5, -3.0, 4.0, -1.0, 5.0])
    scale = gxpo.retention_scale(g0, g1, virtual_steps=5, delta=1e-8)
    s5 = lambda r: sum(r**i for i in range(5))  # noqa: E731
    expected = [
        s5(0.5) / 1.5,  # 1.9375 / 1.5
        1.0,  # S5(-2) / S2(-2) = 11 / -1 < 1: clamped up to 1
        min(s5(3.0) / 4.0, 5 / 2 + 1),  # 30.25 clamped to K/2 + 1 = 3.5
        1.0,  # |S2| <= delta
        1.0,  # |g0| below 1e-3 of the tensor's RMS: inactive
    ]
    torch.testing.assert_close(scale, torch.tensor(expected))


def test_two_virtual_steps_is_scale_one_and_leaves_theta_two_untouched():
    torch.manual_seed(0)
    g0, g1 = torch.randn(500), torch.randn(500)
    assert torch.equal(gxpo.retention_scale(g0, g1, 2, 1e-8), torch.ones(500))
    theta0 = [torch.randn(500)]
    theta2 = theta0[0] + 1e-3 * torch.randn(500)
    p = [theta2.clone()]
    assert gxpo.extrapolate(p, theta0, [g0], [g1], 2, 1e-8) == 1.0
    assert torch.equal(p[0], theta2)


def test_extrapolation_moves_to_theta0_plus_scale_times_the_two_step_displacement():
    torch.manual_seed(1)
    g0, g1 = torch.randn(300), 0.7 * torch.randn(300)
    theta0 = torch.randn(300)
    theta2 = theta0 + 1e-2 * torch.randn(300)
    p = [theta2.clone()]
    gxpo.extrapolate(p, [theta0], [g0], [g1], 5, 1e-8)
    scale = gxpo.retention_scale(g0, g1, 5, 1e-8)
    assert float(scale.max()) > 1.5  # the test exercises real extrapolation
    torch.testing.assert_close(p[0], theta0 + scale * (theta2 - theta0), rtol=1e-6, atol=1e-7)


def test_k_below_two_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        gxpo.retention_scale(torch.ones(2), torch.ones(2), 1, 1e-8)


def reference_gxpo(model_dir, batch, *, alpha, virtual_steps, lr=LR):
    """GXPO per minibatch with plain SGD and torch.autograd only (old log-probs: θ⁰ of the iteration)."""
    model = load_causal_lm(str(model_dir))
    params = list(model.parameters())
    mbs = torch_minibatches(batch)

    def logp_of(mb):
        return completion_logp_and_entropy(model, mb[INPUT_IDS], mb[ATTENTION_MASK], mb[COMPLETION_MASK].shape[1], 1.0)[0]

    with torch.no_grad():
        old = [logp_of(mb) for mb in mbs]

    def grads(mb, old_logp):
        loss, _ = clipped_surrogate(logp_of(mb), old_logp, mb[ADVANTAGES], mb[COMPLETION_MASK], clip_param=0.2,
                                    mode="token-mean", num_tokens=mb[MB_NUM_TOKENS][0], num_seqs=mb[MB_NUM_SEQS][0])
        found = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found)]

    def sgd(g):
        with torch.no_grad():
            for p, gi in zip(params, g):
                p -= lr * gi

    for mb, old_logp in zip(mbs, old):
        theta0 = [p.detach().clone() for p in params]
        g0 = grads(mb, old_logp)
        sgd(g0)
        g1 = grads(mb, old_logp)
        sgd(g1)
        with torch.no_grad():
            for p, t0, a, b in zip(params, theta0, g0, g1):
                p.copy_(t0 + alpha * gxpo.retention_scale(a, b, virtual_steps, 1e-8) * (p - t0))
        sgd(grads(mb, old_logp))  # the corrective step
    return dict(model.named_parameters())


def test_learner_matches_the_per_minibatch_reference_with_plain_sgd(random_llama):
    batch = batch_for(make_records())
    learner = learner_for(random_llama, fast_stage="gxpo", fast_steps=2, gxpo_virtual_steps=5)
    before = params_of(learner)
    out = learner.update(batch=copy.deepcopy(batch), alpha=0.5, fast_steps=2)
    after = params_of(learner)
    expected = reference_gxpo(random_llama, batch, alpha=0.5, virtual_steps=5)
    assert sum(float((after[k] - before[k]).abs().max()) for k in after) > 1e-4
    for name, value in after.items():
        torch.testing.assert_close(value, expected[name].detach(), rtol=1e-5, atol=1e-6, msg=name)
    assert out["sfpo"].optimizer_steps == 3 * 2  # three steps on each of 2 minibatches
    assert out["sfpo"].gxpo_scale_mean > 1.0  # it extrapolated somewhere
    assert out["sfpo"].reposition_distance > 0


def test_two_virtual_steps_on_one_minibatch_is_sfpo_with_two_fast_steps_bit_for_bit(random_llama):
    (batch,), _ = build_learner_batches(make_records(seed=3), group_size=4, num_learners=0,
                                        minibatch_size_per_learner=16, pad_token_id=0)
    common = dict(optimizer="adamw", lr=1e-3, grad_clip=1.0, minibatch_size=16, fast_steps=2, reposition_alpha=0.6)
    sfpo = learner_for(random_llama, **common)
    gx = learner_for(random_llama, fast_stage="gxpo", gxpo_virtual_steps=2, **common)
    for _ in range(2):  # two iterations: the carried Adam moments agree too
        sfpo.update(batch=copy.deepcopy(batch), alpha=0.6, fast_steps=2)
        gx.update(batch=copy.deepcopy(batch), alpha=0.6, fast_steps=2)
    a, b = params_of(sfpo), params_of(gx)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_alpha_zero_is_grpo_bit_for_bit(random_llama):
    batch = batch_for(make_records(seed=4))
    grpo = learner_for(random_llama, optimizer="adamw", lr=1e-3, fast_steps=0)
    gx = learner_for(random_llama, optimizer="adamw", lr=1e-3, fast_stage="gxpo", fast_steps=2)
    grpo.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=0)
    out = gx.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=2)
    a, b = params_of(grpo), params_of(gx)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert out["sfpo"].optimizer_steps == 2 and out["sfpo"].gxpo_scale_mean is None


def test_a_minibatch_without_gradient_takes_one_step_as_the_authors_fallback(random_llama):
    # Every group's rewards equal: zero advantages, zero gradient, nothing to extrapolate.
    records = [dataclasses.replace(r, verdict=Verdict.from_reward(1.0), reward=None) for r in make_records(seed=5)]
    batch = batch_for(records)
    learner = learner_for(random_llama, fast_stage="gxpo", fast_steps=2)
    out = learner.update(batch=copy.deepcopy(batch), alpha=0.5, fast_steps=2)
    assert out["sfpo"].optimizer_steps == 2  # one step per minibatch, GRPO's
    assert out["sfpo"].gxpo_scale_mean is None


def test_gxpo_needs_two_fast_steps():
    from sfpo_rllib import SFPOConfig

    with pytest.raises(ValueError, match=r"`fast_steps` \(3\) must be 2 \(or 0"):
        SFPOConfig().training(fast_stage="gxpo").validate()
    with pytest.raises(ValueError, match=r"`fast_stage` \('gpxo'\) must be one of"):
        SFPOConfig().training(fast_stage="gpxo").validate()
    with pytest.raises(ValueError, match=r"`gxpo_virtual_steps` \(1\) must be an int >= 2"):
        SFPOConfig().training(fast_stage="gxpo", fast_steps=2, gxpo_virtual_steps=1).validate()
    assert math.isfinite(SFPOConfig().gxpo_delta)
