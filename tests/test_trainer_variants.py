"""Settings users bring from TRL, verl, OpenRLHF and SkyRL, composed with SFPO: their
validation, truncated importance sampling in the learner, dynamic sampling and overlong
handling, and LoRA adapters (what is trained, snapshotted, repositioned and exported)."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from test_config_validation import valid
from test_sfpo_learner import batch_for, learner_for, make_records, params_of

from sfpo_rllib import SFPOConfig
from sfpo_envs import Verdict
from sfpo_rllib.batch import build_learner_batches
from sfpo_rllib.causal_lm_module import completion_logp_and_entropy, load_causal_lm
from sfpo_rllib.columns import ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS, MB_NUM_TOKENS, ROLLOUT_LOGP, Rollout
from sfpo_rllib.dynamic_sampling import collect_batch, extra_round_prompts, overlong_penalty, shape_rewards
from sfpo_rllib.lora import export, merged_state_dict


@pytest.mark.parametrize(
    "settings,pattern",
    [
        ({"loss_agg": "seq-sum"}, r"`loss_agg` \('seq-sum'\) must be one of \('token-mean', .*'token-sum'\)"),
        ({"loss_agg_norm": 0}, r"`loss_agg_norm` \(0\) must be None or > 0"),
        ({"advantage_estimator": "gae"}, r"`advantage_estimator` \('gae'\) must be one of \('grpo', 'rloo'\)"),
        ({"advantage_std_norm": "no"}, r"`advantage_std_norm` \('no'\) must be True or False"),
        ({"clip_param_low": 1.0}, r"`clip_param_low` \(1.0\) must be None or in \(0, 1\)"),
        ({"clip_param_high": -0.1}, r"`clip_param_high` \(-0.1\) must be None or > 0"),
        ({"clip_ratio_c": 1.0}, r"`clip_ratio_c` \(1.0\) must be None \(off\) or > 1\. verl uses 3.0"),
        ({"kl_estimator": "k4"}, r"`kl_estimator` \('k4'\) must be one of \('k1', 'k2', 'k3'\)"),
        ({"tis_cap": 0}, r"`tis_cap` \(0\) must be None \(off\) or > 0"),
        ({"filter_groups": 1}, r"`filter_groups` \(1\) must be True or False"),
        ({"max_sampling_rounds": -1}, r"`max_sampling_rounds` \(-1\) must be an int >= 0"),
        ({"mask_truncated": None}, r"`mask_truncated` \(None\) must be True or False"),
        ({"overlong_buffer": 8}, r"`overlong_buffer` \(8\) must be None \(off\) or an int in \[1, `max_new_tokens`\) "
                                 r"\(`max_new_tokens` is 8\)"),
        ({"overlong_penalty": -1.0}, r"`overlong_penalty` \(-1.0\) must be >= 0"),
        ({"lora_rank": -2}, r"`lora_rank` \(-2\) must be an int >= 0"),
        ({"lora_rank": 4, "lora_alpha": 0}, r"`lora_alpha` \(0\) must be > 0"),
        ({"lora_rank": 4, "lora_target_modules": []}, r"`lora_target_modules` \(\[\]\) must be 'all-linear' or a non-empty list"),
        ({"lora_rank": 4, "lora_dropout": 1.0}, r"`lora_dropout` \(1.0\) must be in \[0, 1\)"),
        ({"lora_rank": 4, "lora_modules_to_save": "model.norm"},
         r"`lora_modules_to_save` \('model.norm'\) must be None or a non-empty list of module names"),
    ],
)
def test_invalid_new_settings_are_named_with_value_and_rule(random_llama, settings, pattern):
    with pytest.raises(ValueError, match=pattern):
        valid(random_llama).training(**settings).validate()


def test_new_settings_are_settable_by_name_as_the_cli_does(random_llama):
    settings = {"loss_agg": "seq-mean-token-sum-norm", "advantage_std_norm": False, "clip_param_high": 0.28,
                "clip_ratio_c": 3.0, "kl_estimator": "k1", "tis_cap": 2.0, "filter_groups": True,
                "overlong_buffer": 4, "lora_rank": 4, "lora_target_modules": ["q_proj", "v_proj"]}
    config = valid(random_llama).update_from_dict(settings)
    config.validate()
    assert all(getattr(config, k) == v for k, v in settings.items())
    assert config.resolved_loss_agg_norm() == 8.0  # max_new_tokens, as Dr.GRPO
    again = SFPOConfig().update_from_dict(config.to_dict())  # Tune's round trip
    assert all(getattr(again, k) == v for k, v in settings.items())


# ----- truncated importance sampling in the learner ---------------------------------------
def with_rollout_logp(batch, model_dir, shift):
    """Add a rollout_logp column = (θ⁰'s log-probs) + shift, by hand, as another engine would."""
    shard = batch.policy_batches[DEFAULT_MODULE_ID]
    model = load_causal_lm(str(model_dir))
    with torch.no_grad():
        logp, _ = completion_logp_and_entropy(model, torch.from_numpy(shard[INPUT_IDS]),
                                              torch.from_numpy(shard[ATTENTION_MASK]), shard[COMPLETION_MASK].shape[1], 1.0)
    shard[ROLLOUT_LOGP] = (logp + shift).numpy().astype(np.float32)
    return batch


def test_tis_without_rollout_logp_is_an_error_naming_the_setting(random_llama):
    learner = learner_for(random_llama, tis_cap=2.0)
    with pytest.raises(ValueError, match=r"`tis_cap` \(2.0\) needs the rollout engine's log-probs .*'rollout_logp'"):
        learner.update(batch=batch_for(make_records()), alpha=0.0, fast_steps=0)


def test_tis_weights_scale_the_gradient_like_the_learning_rate(random_llama):
    # π_θ⁰ / π_rollout = 3 everywhere, capped at 2: every token's loss is doubled, so one
    # SGD pass equals a pass without TIS at twice the learning rate.
    batch = with_rollout_logp(batch_for(make_records(seed=6)), random_llama, shift=-float(np.log(3.0)))
    tis = learner_for(random_llama, tis_cap=2.0)
    plain = learner_for(random_llama, lr=1.0)  # LR is 0.5
    tis.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=0)
    plain.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=0)
    a, b, start = params_of(tis), params_of(plain), params_of(learner_for(random_llama))
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


# ----- dynamic sampling and overlong handling --------------------------------------------
class Settings:
    group_size = 2
    filter_groups = True
    max_sampling_rounds = 2
    overlong_buffer = None
    overlong_penalty = 1.0
    max_new_tokens = 8


def rounds_of(*rewards_per_round):
    """A fake sample_round: round r returns groups with the given rewards."""
    calls = []

    def sample_round(r):
        calls.append(r)
        return [Rollout([3], [5, 1], Verdict.from_reward(float(x)), prompt_index=r) for x in rewards_per_round[r]]

    return sample_round, calls


def test_filter_groups_keeps_informative_groups_and_samples_more_rounds():
    sample_round, calls = rounds_of([1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 0, 1])
    train, sampled, stats = collect_batch(sample_round, Settings(), num_groups=3)
    assert calls == [0, 1]
    groups = [[r.reward for r in train[i : i + 2]] for i in range(0, 6, 2)]
    assert groups == [[0, 1], [1, 0], [0, 1]]  # round 0's informative group first, in order
    assert stats == {"sampling_rounds": 2, "groups_sampled": 6, "groups_dropped": 3, "groups_repeated": 0,
                     "groups_uninformative": 0}
    assert len(sampled) == 12
    _, batch_stats = build_learner_batches(
        [dataclasses.replace(r, completion_ids=[4, 1]) for r in train],
        group_size=2, num_learners=0, minibatch_size_per_learner=6, pad_token_id=0,
    )
    assert batch_stats["groups_all_equal_reward"] == 0


def test_when_rounds_run_out_the_batch_is_filled_and_the_fill_is_reported():
    sample_round, calls = rounds_of([1, 1, 0, 1], [0, 0, 1, 1], [1, 1, 0, 0])
    train, _, stats = collect_batch(sample_round, Settings(), num_groups=2)
    assert calls == [0, 1, 2]  # 1 + max_sampling_rounds, no more
    assert [r.reward for r in train] == [0, 1, 0, 1]  # the one informative group, repeated
    assert stats["groups_repeated"] == 1 and stats["groups_uninformative"] == 0
    sample_round, _ = rounds_of([1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0])
    train, _, stats = collect_batch(sample_round, Settings(), num_groups=2)
    assert len(train) == 4 and stats["groups_uninformative"] == 2  # nothing informative at all


def test_without_filter_groups_one_round_keeps_everything():
    settings = Settings()
    settings.filter_groups = False
    sample_round, calls = rounds_of([1, 1, 0, 1])
    train, sampled, stats = collect_batch(sample_round, settings, num_groups=2)
    assert calls == [0] and len(train) == 4 and stats == {}


def test_extra_round_prompts_are_a_function_of_seed_iteration_and_round():
    a = extra_round_prompts(7, 3, 1, num_prompts=5, train_size=100)
    assert np.array_equal(a, extra_round_prompts(7, 3, 1, num_prompts=5, train_size=100))
    assert not np.array_equal(a, extra_round_prompts(7, 3, 2, num_prompts=5, train_size=100))
    assert not np.array_equal(a, extra_round_prompts(7, 4, 1, num_prompts=5, train_size=100))
    assert len(extra_round_prompts(7, 3, 1, num_prompts=5, train_size=3)) == 5  # smaller data set


def test_overlong_penalty_matches_dapo():
    settings = Settings()
    settings.overlong_buffer = 4
    records = [Rollout([3], [3] * n, Verdict.from_reward(1.0)) for n in (4, 5, 6, 8)]
    shape_rewards(records, settings)
    assert [r.reward for r in records] == [1.0, 0.75, 0.5, 0.0]  # linear over the last 4 tokens
    assert [r.verifier_reward for r in records] == [1.0] * 4
    assert overlong_penalty(8, max_new_tokens=8, buffer=4, penalty=0.5) == -0.5


def test_mask_truncated_leaves_cut_completions_out_of_the_loss():
    records = [Rollout([3], [4, 5, 1], Verdict.from_reward(float(i % 2)), stopped=True) for i in range(4)]
    records[1] = dataclasses.replace(records[1], completion_ids=[4, 5, 6, 7], stopped=False)
    (batch,), stats = build_learner_batches(records, group_size=2, num_learners=0, minibatch_size_per_learner=4,
                                            pad_token_id=0, mask_truncated=True)
    shard = batch.policy_batches[DEFAULT_MODULE_ID]
    assert shard[COMPLETION_MASK].sum(axis=1).tolist() == [3, 0, 3, 3]
    assert shard[MB_NUM_TOKENS][0] == 9
    assert stats["completion_length_mean"] == pytest.approx(13 / 4)  # lengths still count every token


# ----- LoRA ------------------------------------------------------------------------------
LORA = dict(lora_rank=4, lora_alpha=8.0, optimizer="adamw", lr=1e-2)


def named(learner, only_trainable=False):
    lm = learner.module[DEFAULT_MODULE_ID].lm
    return {k: v.detach().clone() for k, v in lm.named_parameters() if v.requires_grad or not only_trainable}


def test_lora_trains_snapshots_and_repositions_the_adapters_alone(random_llama):
    learner = learner_for(random_llama, **LORA)
    before = named(learner)
    adapters = named(learner, only_trainable=True)
    assert adapters and all(".lora_" in k for k in adapters)
    optimizer = learner.get_optimizer(DEFAULT_MODULE_ID)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(adapters)
    out = learner.update(batch=batch_for(make_records(seed=8)), alpha=0.8, fast_steps=3)
    after = named(learner)
    assert len(learner._theta0._theta0) == len(adapters)  # the θ⁰ snapshot holds adapters only
    assert out["sfpo"].reposition_distance > 0
    for k in after:
        assert torch.equal(after[k], before[k]) != (".lora_" in k), k  # adapters move, the base never


# The final norm trained in full beside the adapters (PEFT's modules_to_save): the embedded
# model's sharpening direction, which adapters on linear layers cannot reach.
SAVE_NORM = dict(lora_modules_to_save=["model.norm"])
WITH_AND_WITHOUT_SAVED_MODULES = pytest.mark.parametrize("saved", [{}, SAVE_NORM], ids=["adapters", "adapters+norm"])


@WITH_AND_WITHOUT_SAVED_MODULES
def test_lora_alpha_one_equals_k_plus_one_epochs_bit_for_bit(random_llama, saved):
    batch = batch_for(make_records(seed=3))
    sfpo = learner_for(random_llama, fast_steps=3, reposition_alpha=1.0, **LORA, **saved)
    grpo = learner_for(random_llama, fast_steps=0, num_epochs=4, **LORA, **saved)
    before = named(sfpo, True)
    sfpo.update(batch=copy.deepcopy(batch), alpha=1.0, fast_steps=3)
    grpo.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=0)
    a, b = named(sfpo, True), named(grpo, True)
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if ".lora_B" in k)
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved_copies = [k for k in a if ".modules_to_save." in k]
    assert len(saved_copies) == len(saved.get("lora_modules_to_save", []))
    assert all(not torch.equal(a[k], before[k]) for k in saved_copies)  # the saved norm trains too


def test_lora_modules_to_save_train_snapshot_and_reposition_with_the_adapters(random_llama):
    learner = learner_for(random_llama, **LORA, **SAVE_NORM)
    trainable = named(learner, only_trainable=True)
    assert [k for k in trainable if ".lora_" not in k] == ["base_model.model.model.norm.modules_to_save.default.weight"]
    before = named(learner)
    out = learner.update(batch=batch_for(make_records(seed=8)), alpha=0.8, fast_steps=3)
    after = named(learner)
    assert len(learner._theta0._theta0) == len(trainable)
    assert out["sfpo"].reposition_distance > 0
    for k in after:  # adapters and the norm's trained copy move; the base, its original norm included, never
        assert torch.equal(after[k], before[k]) != (k in trainable), k


def test_lora_modules_to_save_that_match_nothing_are_refused(random_llama):
    with pytest.raises(ValueError, match=r"`lora_modules_to_save` \(\['final_norm'\]\) names no module of "
                                         r"LlamaForCausalLM: a name must end a module path, such as \[.*'model.norm'"):
        learner_for(random_llama, **LORA, lora_modules_to_save=["final_norm"])


def mb_logp(model, shard):
    with torch.no_grad():
        return completion_logp_and_entropy(model, torch.from_numpy(shard[INPUT_IDS]), torch.from_numpy(shard[ATTENTION_MASK]),
                                           shard[COMPLETION_MASK].shape[1], 1.0)[0]


@WITH_AND_WITHOUT_SAVED_MODULES
def test_lora_kl_anchor_is_the_base_model_and_exports_match_the_policy(random_llama, tmp_path, saved):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    batch = batch_for(make_records(seed=9))
    learner = learner_for(random_llama, kl_coeff=0.1, **LORA, **saved)
    learner.update(batch=copy.deepcopy(batch), alpha=0.8, fast_steps=3)
    shard = batch.policy_batches[DEFAULT_MODULE_ID]
    policy = learner.module[DEFAULT_MODULE_ID].lm
    trained = mb_logp(policy, shard)
    base = mb_logp(load_causal_lm(random_llama), shard)
    assert float((trained - base).abs().max()) > 1e-3, "the adapters did not move the policy"
    with learner._reference.base() as anchor:  # the policy's weights, adapters off
        torch.testing.assert_close(mb_logp(anchor, shard), base, rtol=0, atol=1e-6)
    torch.testing.assert_close(mb_logp(policy, shard), trained, rtol=0, atol=0)  # adapters back on

    merged = load_causal_lm(random_llama)
    merged.load_state_dict(merged_state_dict(policy), strict=True)  # what vLLM would receive
    torch.testing.assert_close(mb_logp(merged, shard), trained, rtol=0, atol=1e-5)

    state = learner.module[DEFAULT_MODULE_ID].get_state()
    weights = {k[len("lm."):]: v for k, v in state.items() if k.startswith("lm.")}
    export(weights, random_llama, learner.config.lora_settings(), str(tmp_path / "model"), str(tmp_path / "adapter"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "model")  # plain transformers, no PEFT
    torch.testing.assert_close(mb_logp(plain, shard), trained, rtol=0, atol=1e-5)
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(random_llama), tmp_path / "adapter")
    torch.testing.assert_close(mb_logp(adapter, shard), trained, rtol=0, atol=1e-6)


def test_hf_engine_samples_from_the_adapted_distribution_the_loss_uses(random_llama):
    """With LoRA (the shared prompt prefix included), the engine's log-probs equal the training module's."""
    from sfpo_envs import TextSpace
    from sfpo_rllib.batch import pad_rows
    from sfpo_rllib.causal_lm_module import CausalLMRLModule
    from sfpo_rllib.columns import LOGP
    from sfpo_rllib.engines import SamplingParams
    from sfpo_rllib.engines.hf import HFGenerateEngine

    lora = {"r": 4, "lora_alpha": 8.0, "target_modules": "all-linear", "lora_dropout": 0.0, "seed": 0}
    module = CausalLMRLModule(observation_space=TextSpace(), action_space=TextSpace(),
                              model_config={"model_path": random_llama, "lora": lora})
    with torch.no_grad():  # trained-looking adapters (B starts at 0, which would prove nothing)
        for name, p in module.lm.named_parameters():
            if ".lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    engine = HFGenerateEngine(module.lm, pad_token_id=0, eos_token_id=1)
    params = SamplingParams(max_new_tokens=6)
    prompts = [[5, 6, 7, 8], [9]]
    completions = engine.generate(prompts, n=3, params=params, seed=0)
    rows = [Rollout(prompts[i // 3], list(c)) for i, c in enumerate(completions)]
    recomputed = module.forward_train({k: torch.from_numpy(v) for k, v in pad_rows(rows, 0).items()})[LOGP]
    base = load_causal_lm(random_llama)
    base_logp = mb_logp(base, pad_rows(rows, 0))
    assert float((recomputed - base_logp).abs().max()) > 1e-2, "the adapters do not change the distribution"
    for i, c in enumerate(completions):  # the engine's own log-probs: the adapted model's
        assert c.logprobs == pytest.approx(recomputed[i, : len(c)].tolist(), abs=2e-5)
