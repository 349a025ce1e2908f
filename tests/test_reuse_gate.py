"""The reuse gates: the entropy trigger's "preceding" rule (GXPO's gate) and DGG's lm_head
gradient-norm gate (reuse_gate="lm_head_grad"): its statistic against a hand computation
(untied, tied, LoRA), and the default left exactly as it was."""

import copy

import pytest
import torch
from test_sfpo_learner import batch_for, learner_for, make_records, params_of, torch_minibatches

from sfpo_rllib import SFPOConfig
from sfpo_rllib.causal_lm_module import completion_logp_and_entropy, load_causal_lm
from sfpo_rllib.columns import ADVANTAGES, ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS, MB_NUM_SEQS, MB_NUM_TOKENS
from sfpo_rllib.entropy_trigger import EntropyTrigger, reuse_gate_of
from sfpo_rllib.losses import clipped_surrogate


# ----- the "preceding" rule ------------------------------------------------------------------
def test_a_value_is_scored_against_the_window_before_it_not_one_holding_it():
    # As the GXPO authors' test_scored_sample_is_excluded_from_its_own_baseline: inside its own
    # window of 30 an outlier scores at most sqrt(29) ~ 5.4; against the preceding one, hugely.
    gate = EntropyTrigger(window=30, z_threshold=1e9, rule="preceding")
    for s in range(1, 31):
        assert gate.observe(s, 1.0 + 1e-3 * (s % 2)) is None  # filling: nothing precedes 30 values yet
    assert gate.observe(31, 2.0) > 30.0
    own_window = EntropyTrigger(window=30, z_threshold=1e9, rule="rise")
    for s in range(1, 31):
        own_window.observe(s, 1.0 + 1e-3 * (s % 2))
    assert own_window.observe(31, 2.0) < 30**0.5


def test_preceding_rule_fires_upward_only_and_for_good():
    gate = EntropyTrigger(window=3, z_threshold=2.0, rule="preceding")
    for s, h in enumerate([1.0, 1.1, 0.9], start=1):
        gate.observe(s, h)
    assert gate.observe(4, 0.0) < -2.0 and gate.switch_off_iteration is None  # a fall is no instability
    gate.observe(5, 1.0)
    assert gate.observe(6, 5.0) >= 2.0 and gate.switch_off_iteration == 7
    assert gate.alpha(6, 0.8) == 0.8 and gate.alpha(7, 0.8) == 0.0
    gate.observe(7, 1.0)
    assert gate.alpha(40, 0.8) == 0.0 and gate.switch_off_iteration == 7


def test_preceding_rule_state_round_trips_mid_stream():
    values = [1.0, 1.2, 0.8, 1.1, 3.0, 1.0, 0.9]
    whole = EntropyTrigger(window=3, z_threshold=1.5, rule="preceding")
    zs = [whole.observe(s, h) for s, h in enumerate(values, start=1)]
    first = EntropyTrigger(window=3, z_threshold=1.5, rule="preceding")
    for s, h in enumerate(values[:4], start=1):
        first.observe(s, h)
    second = EntropyTrigger(window=3, z_threshold=1.5, rule="preceding")
    second.set_state(first.get_state())
    assert [second.observe(s, h) for s, h in enumerate(values[4:], start=5)] == zs[4:]
    assert second.get_state() == whole.get_state()


def test_reuse_gate_of_picks_the_statistic_and_its_settings():
    entropy = reuse_gate_of(SFPOConfig())
    assert (entropy.rule, entropy.window, entropy.z_threshold) == ("abs", 30, 1.0)
    dgg = reuse_gate_of(SFPOConfig().training(reuse_gate="lm_head_grad", lm_head_grad_window=7,
                                              lm_head_grad_z_threshold=2.5))
    assert (dgg.rule, dgg.window, dgg.z_threshold) == ("preceding", 7, 2.5)
    with pytest.raises(ValueError, match=r"`reuse_gate` \('lm_head'\) must be one of"):
        SFPOConfig().training(reuse_gate="lm_head").validate()


# ----- DGG's statistic -------------------------------------------------------------------------
def reference_lm_head_grad_norm(model_dir, batch):
    """‖∂L/∂W_lm_head‖ of the first minibatch's loss at θ⁰ (old log-probs = θ⁰'s), by hand."""
    model = load_causal_lm(str(model_dir))
    mb = torch_minibatches(batch)[0]
    logp = completion_logp_and_entropy(model, mb[INPUT_IDS], mb[ATTENTION_MASK], mb[COMPLETION_MASK].shape[1], 1.0)[0]
    loss, _ = clipped_surrogate(logp, logp.detach(), mb[ADVANTAGES], mb[COMPLETION_MASK], clip_param=0.2,
                                mode="token-mean", num_tokens=mb[MB_NUM_TOKENS][0], num_seqs=mb[MB_NUM_SEQS][0])
    weight = model.get_output_embeddings().weight
    (grad,) = torch.autograd.grad(loss, [weight])
    return float(grad.norm())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # untied lm_head; GPT-2's is tied to the embedding
def test_lm_head_grad_norm_is_the_first_steps_gradient_norm(random_model_factory, arch):
    model_dir = random_model_factory(arch)
    batch = batch_for(make_records())
    learner = learner_for(model_dir, reuse_gate="lm_head_grad", fast_steps=3)
    out = learner.update(batch=copy.deepcopy(batch), alpha=0.8, fast_steps=3)
    expected = reference_lm_head_grad_norm(model_dir, batch)
    assert expected > 0
    assert out["sfpo"].lm_head_grad_norm == pytest.approx(expected, rel=1e-5)


def test_with_lora_the_frozen_lm_head_is_measured_without_changing_the_update(random_llama):
    batch = batch_for(make_records(seed=2))
    lora = dict(lora_rank=4, lora_alpha=8.0, optimizer="adamw", lr=1e-2, fast_steps=3)
    gated = learner_for(random_llama, reuse_gate="lm_head_grad", **lora)
    plain = learner_for(random_llama, **lora)
    out = gated.update(batch=copy.deepcopy(batch), alpha=0.8, fast_steps=3)
    assert plain.update(batch=copy.deepcopy(batch), alpha=0.8, fast_steps=3)["sfpo"].lm_head_grad_norm is None
    a, b = params_of(gated), params_of(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the adapters moved identically
    head = gated._policy().lm.get_output_embeddings().weight
    assert not head.requires_grad and head.grad is None
    # LoRA's B starts at 0: at θ⁰ the policy is the base model, so the base's gradient is the reference.
    assert out["sfpo"].lm_head_grad_norm == pytest.approx(reference_lm_head_grad_norm(random_llama, batch), rel=1e-5)


def test_the_default_gate_measures_nothing(random_llama):
    learner = learner_for(random_llama)
    out = learner.update(batch=batch_for(make_records()), alpha=0.8, fast_steps=3)
    assert out["sfpo"].lm_head_grad_norm is None and learner._lm_head_probe is None
