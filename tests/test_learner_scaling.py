"""Real-size learner machinery on toy models: chunked log-probs, micro-batches with exact
gradient accumulation, padding efficiency, mixed precision, and the settings' checks."""

import copy
import sys

import numpy as np
import pytest
import ray
import torch
from ray.rllib.core import DEFAULT_MODULE_ID

from sfpo_envs import Verdict
from sfpo_rllib import SFPOConfig
from sfpo_rllib.batch import build_learner_batches, pad_rows, plan_micro_batches
from sfpo_rllib.causal_lm_module import completion_logp_and_entropy, load_causal_lm
from sfpo_rllib.logprobs import _prompt_shared_hidden
from sfpo_rllib.columns import ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS, LOGP, OLD_LOGP, Rollout
from sfpo_rllib.rllib_compat import grad_scaler
from test_sfpo_learner import SPACES, learner_for, make_records, params_of


def uneven_records(n=16, seed=0):
    """Completion lengths from 1 to 24 tokens: padding to the longest wastes most compute."""
    rng = np.random.default_rng(seed)
    return [
        Rollout(
            prompt_ids=rng.integers(3, 40, size=rng.integers(2, 8)).tolist(),
            completion_ids=rng.integers(3, 40, size=int(rng.choice([1, 2, 3, 20]))).tolist() + [1],
            verdict=Verdict.from_reward(float(rng.random())),
        )
        for _ in range(n)
    ]


def batches_for(records, num_learners=0):
    per_learner = 8 // max(1, num_learners)
    batches, _ = build_learner_batches(records, group_size=4, num_learners=num_learners,
                                       minibatch_size_per_learner=per_learner, pad_token_id=0)
    return batches


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ----- chunked log-probs ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: tied input/output embeddings
def test_chunked_logp_and_entropy_equal_the_full_vocabulary_computation(random_model_factory, arch):
    lm = load_causal_lm(random_model_factory(arch))
    cols = {k: torch.from_numpy(v) for k, v in pad_rows(uneven_records(6), pad_token_id=0).items()}
    mask = cols[COMPLETION_MASK]
    results = {}
    for chunk in (None, 5):  # None: the (tokens, vocab) tensor at once, as before
        lm.zero_grad()
        logp, entropy = completion_logp_and_entropy(lm, cols[INPUT_IDS], cols[ATTENTION_MASK], mask.shape[1], 0.7,
                                                    entropy_grad=True, completion_mask=mask, chunk_tokens=chunk)
        ((logp.exp() * mask).sum() + 0.3 * (logp * mask).sum() + 0.1 * (entropy * mask).sum()).backward()
        results[chunk] = logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}
    (lp_full, ent_full, g_full), (lp, ent, g) = results[None], results[5]
    assert int(mask.sum()) > 5 * 4, "several chunks must be exercised"
    torch.testing.assert_close(lp, lp_full, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ent_full, rtol=0, atol=1e-5)
    assert max(float(g_full[n].abs().max()) for n in g_full) > 1e-3
    for name in g_full:
        torch.testing.assert_close(g[name], g_full[name], rtol=1e-5, atol=1e-5, msg=name)


# ----- one prompt pass per group ------------------------------------------------------------
def grouped_records(groups=4, group_size=4, seed=0):
    """GRPO batches: G completions of uneven length per prompt, prompts of uneven length."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(groups):
        prompt = rng.integers(3, 40, size=rng.integers(2, 9)).tolist()
        records += [Rollout(prompt_ids=prompt, completion_ids=rng.integers(3, 40, size=int(rng.choice([1, 3, 9]))).tolist() + [1],
                            verdict=Verdict.from_reward(float(rng.random()))) for _ in range(group_size)]
    return records


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_shared_prompt_prefix_equals_full_rows(random_model_factory, arch):
    lm = load_causal_lm(random_model_factory(arch))
    cols = {k: torch.from_numpy(v) for k, v in pad_rows(grouped_records(), pad_token_id=0).items()}
    order = torch.from_numpy(np.random.default_rng(1).permutation(16))  # micro-batches are packed by length
    cols = {k: v[order] for k, v in cols.items()}
    mask = cols[COMPLETION_MASK]
    width = mask.shape[1]
    position_ids = (cols[ATTENTION_MASK].cumsum(-1) - 1).clamp(min=0)
    shared = _prompt_shared_hidden(lm.model, cols[INPUT_IDS], cols[ATTENTION_MASK], position_ids, width)
    assert shared is not None and shared.shape[:2] == (16, width), "the shared path must really run"
    results = {}
    for share in (False, True):
        lm.zero_grad()
        logp, entropy = completion_logp_and_entropy(lm, cols[INPUT_IDS], cols[ATTENTION_MASK], width, 0.7,
                                                    entropy_grad=True, completion_mask=mask, share_prompt_prefix=share)
        ((logp.exp() * mask).sum() + 0.3 * (logp * mask).sum() + 0.1 * (entropy * mask).sum()).backward()
        results[share] = logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}
    (lp_full, ent_full, g_full), (lp, ent, g) = results[False], results[True]
    torch.testing.assert_close(lp, lp_full, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ent_full, rtol=0, atol=1e-5)
    assert max(float(g_full[n].abs().max()) for n in g_full) > 1e-3
    for name in g_full:  # the prompt pass's gradient sums over every row of its group
        torch.testing.assert_close(g[name], g_full[name], rtol=1e-5, atol=1e-5, msg=name)


def test_shared_prompt_prefix_falls_back_when_every_prompt_differs(random_llama):
    lm = load_causal_lm(random_llama)
    cols = {k: torch.from_numpy(v) for k, v in pad_rows(uneven_records(6, seed=3), pad_token_id=0).items()}
    position_ids = (cols[ATTENTION_MASK].cumsum(-1) - 1).clamp(min=0)
    assert _prompt_shared_hidden(lm.model, cols[INPUT_IDS], cols[ATTENTION_MASK], position_ids,
                                 cols[COMPLETION_MASK].shape[1]) is None


def test_sfpo_update_with_shared_prompt_prefix_matches_full_rows(random_llama):
    batches, _ = build_learner_batches(grouped_records(), group_size=4, num_learners=0,
                                       minibatch_size_per_learner=8, pad_token_id=0)
    settings = dict(optimizer="adamw", lr=1e-3, grad_clip=0.5, max_tokens_per_micro_batch=60)
    full = learner_for(random_llama, **settings)
    shared = learner_for(random_llama, **settings, share_prompt_prefix=True)
    full.update(batch=copy.deepcopy(batches[0]), alpha=0.8, fast_steps=2)
    shared.update(batch=copy.deepcopy(batches[0]), alpha=0.8, fast_steps=2)
    assert max_diff(params_of(full), params_of(learner_for(random_llama))) > 1e-4
    assert max_diff(params_of(full), params_of(shared)) < 1e-5


# ----- micro-batches ------------------------------------------------------------------------
def test_plan_packs_sorted_rows_within_the_budget_and_names_a_row_that_cannot_fit():
    prompts, completions = [3, 2, 5, 1, 4, 2], [10, 1, 2, 30, 1, 3]
    groups = plan_micro_batches(prompts, completions, max_tokens=40)
    assert sorted(np.concatenate(groups).tolist()) == list(range(6))
    for rows in groups:
        assert len(rows) * (max(prompts[r] for r in rows) + max(completions[r] for r in rows)) <= 40
    assert groups[0].tolist() == [3]  # the longest row first, alone (31 tokens)
    assert [len(g) for g in plan_micro_batches(prompts, completions, max_rows=4)] == [4, 2]
    assert [g.tolist() for g in plan_micro_batches(prompts, completions)] == [list(range(6))]  # off: as before
    with pytest.raises(ValueError, match=r"`max_tokens_per_micro_batch` \(20\).*row 3 .*31 tokens.*at least 31"):
        plan_micro_batches(prompts, completions, max_tokens=20)


@pytest.mark.parametrize("limits", [dict(max_tokens_per_micro_batch=40), dict(micro_batch_size=3)])
def test_micro_batched_update_equals_one_forward_per_minibatch(random_llama, limits):
    batch = batches_for(uneven_records(seed=1))[0]
    settings = dict(optimizer="adamw", lr=1e-3, grad_clip=0.5, kl_coeff=0.05)
    whole = learner_for(random_llama, **settings)
    micro = learner_for(random_llama, **settings, **limits)
    out_whole = whole.update(batch=copy.deepcopy(batch), alpha=0.8, fast_steps=2)
    out_micro = micro.update(batch=copy.deepcopy(batch), alpha=0.8, fast_steps=2)
    a, b = params_of(whole), params_of(micro)
    before = params_of(learner_for(random_llama))
    assert max_diff(a, before) > 1e-4
    assert max_diff(a, b) < 1e-5
    s_whole, s_micro = out_whole["sfpo"], out_micro["sfpo"]
    assert s_micro.micro_batches >= 4 and s_whole.micro_batches == 2
    assert s_micro.optimizer_steps == s_whole.optimizer_steps == 3 * 2  # accumulation: one step per minibatch
    assert s_micro.entropy == pytest.approx(s_whole.entropy, rel=1e-5)  # sums over tokens
    assert s_micro.real_tokens == s_whole.real_tokens
    assert s_micro.real_tokens / s_micro.computed_tokens > s_whole.real_tokens / s_whole.computed_tokens  # sorted rows, own widths
    # Each optimizer step's diagnostics cover its whole minibatch, not its last micro-batch.
    for stage in ("fast", "slow"):
        d_whole, d_micro = ({k.removeprefix(f"{stage}_"): v for k, v in s.diagnostics.items() if k.startswith(f"{stage}_")}
                            for s in (s_whole, s_micro))
        assert set(d_whole) == set(d_micro) >= {"policy_loss", "clipfrac", "approx_kl", "kl", "grad_norm"}
        assert d_whole["approx_kl"] > 0 and d_whole["kl"] > 0
        for name in d_whole:
            assert d_micro[name] == pytest.approx(d_whole[name], rel=1e-5, abs=1e-6), (stage, name)


def test_gradient_clipping_applies_once_to_the_accumulated_gradient(random_llama):
    """With a tiny clip every step's update has the clipped norm: per-micro clipping would not."""
    batch = batches_for(uneven_records(seed=2))[0]
    whole = learner_for(random_llama, lr=1.0, grad_clip=1e-3)
    micro = learner_for(random_llama, lr=1.0, grad_clip=1e-3, max_tokens_per_micro_batch=30)
    whole.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=0)
    micro.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=0)
    assert max_diff(params_of(whole), params_of(micro)) < 1e-7


def local_numel(learner):
    from sfpo_rllib.sharding import local

    params = learner._trainable()
    return {
        "params": sum(local(p).numel() for p in params),
        "full": sum(p.numel() for p in params),
        "theta0": sum(t.numel() for t in learner._theta0._require()),
        "adam": sum(s["exp_avg"].numel() for s in learner.get_optimizer(DEFAULT_MODULE_ID).state.values()
                    if hasattr(s["exp_avg"], "numel") and not hasattr(s["exp_avg"], "to_local"))
                + sum(s["exp_avg"].to_local().numel() for s in learner.get_optimizer(DEFAULT_MODULE_ID).state.values()
                      if hasattr(s["exp_avg"], "to_local")),
    }


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
@pytest.mark.slow
def test_two_learners_with_micro_batches_match_a_local_unbatched_learner(random_llama, ray_session, strategy):
    """Two iterations, with a checkpoint round trip (full model and AdamW state) before each."""
    records, later = uneven_records(seed=3), uneven_records(seed=6)
    local = learner_for(random_llama, optimizer="adamw", lr=1e-3, grad_clip=0.5)
    local.update(batch=batches_for(records)[0], alpha=0.8, fast_steps=2)
    local.update(batch=batches_for(later)[0], alpha=0.8, fast_steps=2)
    config = (
        SFPOConfig()
        .environment("sfpo/Arithmetic-v0")
        .training(optimizer="adamw", weight_decay=0.0, lr=1e-3, grad_clip=0.5, group_size=4,
                  train_batch_size_per_learner=8, minibatch_size=4, clip_param=0.2)
        .scaling(max_tokens_per_micro_batch=30, learner_strategy=strategy)
        .generation(model_name_or_path=str(random_llama), max_new_tokens=24)
        .learners(num_learners=2, num_cpus_per_learner=0.5)
    )
    config.validate()
    group = config.build_learner_group(spaces=SPACES)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ship local_numel to the learners
    try:
        group.set_state(group.get_state())  # a fresh optimizer: no moments, no steps
        results = group.update(batches=batches_for(records, num_learners=2), alpha=0.8, fast_steps=2)
        counts = [r["sfpo"].micro_batches for r in results]
        assert min(counts) > 2
        sizes = group.foreach_learner(local_numel)
        group.set_state(group.get_state())  # the gathered full state, loaded back into the shards
        group.update(batches=batches_for(later, num_learners=2), alpha=0.8, fast_steps=2)
        state = group.get_weights()[DEFAULT_MODULE_ID]
    finally:
        group.shutdown()
    shared = {k[len("lm."):]: v for k, v in state.items()}
    assert max_diff(params_of(local), shared) < 1e-5
    for size in (s.get() if hasattr(s, "get") else s for s in sizes):
        if strategy == "fsdp2":  # 1/W of parameters, θ⁰ and Adam moments on each learner
            assert size["params"] == size["theta0"] == size["adam"] <= size["full"] // 2 + 1000
        else:
            assert size["params"] == size["theta0"] == size["adam"] == size["full"]


# ----- mixed precision ----------------------------------------------------------------------
def fraction_changed(before, after):
    changed = sum(int((before[k].float() != after[k].float()).sum()) for k in before)
    return changed / sum(v.numel() for v in before.values())


def test_mixed_precision_learns_at_lr_1e_6_where_bf16_parameters_do_not(random_llama):
    batch = batches_for(uneven_records(seed=4))[0]
    kw = dict(optimizer="adamw", lr=1e-6, weight_decay=0.0)
    mixed = learner_for(random_llama, mixed_precision="bf16", **kw)
    pure = learner_for(random_llama, model_dtype="bfloat16", **kw)
    before_mixed, before_pure = params_of(mixed), params_of(pure)
    out = mixed.update(batch=copy.deepcopy(batch), alpha=0.5, fast_steps=2)
    pure.update(batch=copy.deepcopy(batch), alpha=0.5, fast_steps=2)
    after_mixed = params_of(mixed)
    assert all(v.dtype == torch.float32 for v in after_mixed.values())  # fp32 master weights
    optim_state = mixed.get_optimizer(DEFAULT_MODULE_ID).state.values()
    assert all(s["exp_avg"].dtype == torch.float32 for s in optim_state)
    assert all(t.dtype == torch.float32 for t in mixed._theta0._require())  # θ⁰ snapshot in fp32
    assert 0 < out["sfpo"].reposition_distance < 1e-3  # reposition saw the 1e-6-sized moves
    assert fraction_changed(before_mixed, after_mixed) > 0.9
    assert fraction_changed(before_pure, params_of(pure)) < 0.1  # bf16 rounds the updates away


def test_mixed_precision_really_computes_in_bf16(random_llama):
    """The log-probs under autocast differ from fp32 ones by bf16 rounding, not by more."""
    batch = batches_for(uneven_records(seed=5))[0]
    fp32 = learner_for(random_llama)
    bf16 = learner_for(random_llama, mixed_precision="bf16")
    mbs32, _ = fp32._to_minibatches(batch.policy_batches[DEFAULT_MODULE_ID])
    mbs16, _ = bf16._to_minibatches(batch.policy_batches[DEFAULT_MODULE_ID])
    logps = []
    for learner, micro in ((fp32, mbs32[0][0]), (bf16, mbs16[0][0])):
        with torch.no_grad(), learner._autocast():  # as the θ⁰ pass and every step compute them
            logps.append(learner._policy()(micro)[LOGP])
    diff = float((logps[0] - logps[1]).abs().max())
    assert 1e-6 < diff < 0.1


def test_fp16_mixed_precision_scales_the_loss_and_still_steps_like_fp32(random_llama):
    batch = batches_for(uneven_records(seed=4))[0]
    fp16 = learner_for(random_llama, optimizer="sgd", lr=0.5, mixed_precision="fp16", grad_clip=1.0)
    fp32 = learner_for(random_llama, optimizer="sgd", lr=0.5, grad_clip=1.0)
    before = params_of(fp32)
    fp16.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=0)
    fp32.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=0)
    assert grad_scaler(fp16, DEFAULT_MODULE_ID).get_scale() > 1.0  # the loss really was scaled
    step16 = {k: v - before[k] for k, v in params_of(fp16).items()}
    step32 = {k: v - before[k] for k, v in params_of(fp32).items()}
    assert max_diff(step32, {k: 0 * v for k, v in step32.items()}) > 1e-3
    assert max_diff(step16, step32) < 0.05 * max(float(v.abs().max()) for v in step32.values())  # unscaled, clipped once


# ----- settings -----------------------------------------------------------------------------
@pytest.mark.parametrize("settings,message", [
    (dict(max_tokens_per_micro_batch=100), r"`max_tokens_per_micro_batch` \(100\) must hold the longest row"),
    (dict(max_tokens_per_micro_batch=0), r"`max_tokens_per_micro_batch` \(0\) must be None or an int >= 1"),
    (dict(micro_batch_size=0), r"`micro_batch_size` \(0\)"),
    (dict(logp_chunk_tokens=-1), r"`logp_chunk_tokens` \(-1\)"),
    (dict(mixed_precision="bf17"), r"`mixed_precision` \('bf17'\) must be one of"),
    (dict(learner_strategy="zero3"), r"`learner_strategy` \('zero3'\) must be one of"),
    (dict(share_prompt_prefix=1), r"`share_prompt_prefix` \(1\) must be True or False"),
    (dict(share_prompt_prefix=True, learner_strategy="fsdp2"), r"`share_prompt_prefix` \(True\) needs learner_strategy='ddp'"),
    (dict(share_prompt_prefix=True, logp_chunk_tokens=None), r"`share_prompt_prefix` \(True\) needs the chunked log-probs"),
])
def test_scaling_settings_are_checked(settings, message):
    config = SFPOConfig().environment("sfpo/Arithmetic-v0").generation(max_new_tokens=128).scaling(**settings)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_fsdp2_clips_by_global_norm_only():
    config = (SFPOConfig().environment("sfpo/Arithmetic-v0").training(grad_clip=1.0, grad_clip_by="value")
              .scaling(learner_strategy="fsdp2"))
    with pytest.raises(ValueError, match=r"`grad_clip_by` \('value'\) must be 'global_norm' with learner_strategy='fsdp2'"):
        config.validate()


def test_mixed_precision_needs_fp32_master_weights():
    config = (SFPOConfig().environment("sfpo/Arithmetic-v0").generation(model_dtype="bfloat16")
              .scaling(mixed_precision="bf16"))
    with pytest.raises(ValueError, match=r"`model_dtype` \('bfloat16'\) must be 'float32' with mixed_precision='bf16'"):
        config.validate()


def test_shared_prompt_prefix_refuses_gradient_checkpointing():
    config = (SFPOConfig().environment("sfpo/Arithmetic-v0").generation(gradient_checkpointing=True)
              .scaling(share_prompt_prefix=True))
    with pytest.raises(ValueError, match=r"`share_prompt_prefix` \(True\) cannot be combined with gradient_checkpointing"):
        config.validate()
