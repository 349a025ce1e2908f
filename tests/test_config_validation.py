"""Every invalid setting is refused by validate() with the setting, the value, the rule and a fix."""

import math

import pytest

from sfpo_rllib import GRPOConfig, SFPOConfig


def valid(model_dir):
    return (
        SFPOConfig()
        .environment("sfpo/Arithmetic-v0")
        .training(group_size=4, train_batch_size_per_learner=16, minibatch_size=8)
        .generation(model_name_or_path=model_dir, max_new_tokens=8)
    )


def test_a_valid_config_passes(random_llama):
    valid(random_llama).validate()


@pytest.mark.parametrize(
    "setter,settings,pattern",
    [
        ("training", {"reposition_alpha": 1.5}, r"`reposition_alpha` \(1.5\) must be in \[0, 1\]"),
        ("training", {"reposition_alpha": -0.1}, r"`reposition_alpha` \(-0.1\)"),
        ("training", {"fast_steps": -1}, r"`fast_steps` \(-1\) must be an int >= 0"),
        ("training", {"fast_steps": 2.5}, r"`fast_steps` \(2.5\)"),
        ("training", {"group_size": 1}, r"`group_size` \(1\) must be an int >= 2"),
        ("training", {"train_batch_size_per_learner": 18}, r"`train_batch_size_per_learner` \(18\) must be a positive multiple of `group_size` \(4\)"),
        ("training", {"minibatch_size": 6}, r"`minibatch_size` \(6\) must be a positive multiple of `group_size`"),
        ("training", {"minibatch_size": 12}, r"`minibatch_size` \(12\) must divide `train_batch_size_per_learner` \(16\)"),
        ("training", {"entropy_window": 1}, r"`entropy_window` \(1\) must be an int >= 2"),
        ("training", {"entropy_z_threshold": 0}, r"`entropy_z_threshold` \(0\) must be > 0"),
        ("training", {"entropy_trigger": "both"}, r"`entropy_trigger` \('both'\) must be one of"),
        ("training", {"loss_agg": "seq-sum"}, r"`loss_agg` \('seq-sum'\) must be one of"),
        ("training", {"optimizer": "lion"}, r"`optimizer` \('lion'\)"),
        ("training", {"clip_param": 0}, r"`clip_param` \(0\) must be > 0"),
        ("training", {"kl_coeff": -1.0}, r"`kl_coeff` \(-1.0\) must be >= 0"),
        ("training", {"lr": -1e-3}, r"`lr` \(-0.001\) must be in \(0, 1\]"),
        ("training", {"num_epochs": 0}, r"`num_epochs` \(0\)"),
        ("generation", {"temperature": 0.0}, r"`temperature` \(0.0\) must be > 0"),
        ("generation", {"top_p": 1.5}, r"`top_p` \(1.5\) must be in \(0, 1\]"),
        ("generation", {"top_k": -1}, r"`top_k` \(-1\)"),
        ("generation", {"max_new_tokens": 0}, r"`max_new_tokens` \(0\)"),
        ("generation", {"rollout_engine": "sglang"}, r"`rollout_engine` \('sglang'\) must be one of"),
        ("generation", {"chat_template": "yes"}, r"`chat_template` \('yes'\)"),
        ("generation", {"model_dtype": "int8"}, r"`model_dtype` \('int8'\)"),
        ("held_out_test", {"test_samples_per_problem": 0}, r"`test_samples_per_problem` \(0\)"),
    ],
)
def test_invalid_settings_are_named_with_value_and_rule(random_llama, setter, settings, pattern):
    config = getattr(valid(random_llama), setter)(**settings)
    with pytest.raises(ValueError, match=pattern):
        config.validate()


def test_unknown_env_id_lists_the_built_in_ones(random_llama):
    config = valid(random_llama).environment("sfpo/Nope-v0")
    with pytest.raises(ValueError, match=r"`env` \('sfpo/Nope-v0'\) is not a registered gymnasium environment.*sfpo/Arithmetic-v0"):
        config.validate()


def test_env_module_that_does_not_import_is_named(random_llama):
    config = valid(random_llama).environment("no_such_pkg:Thing-v0")
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg'"):
        config.validate()


def test_missing_model_path_is_refused(random_llama, tmp_path):
    config = valid(random_llama).generation(model_name_or_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"`model_name_or_path` \('.*missing'\) is not an existing folder"):
        config.validate()
    (tmp_path / "empty").mkdir()
    config = valid(random_llama).generation(model_name_or_path=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="without config.json"):
        config.validate()
    config = valid(random_llama).generation(model_name_or_path="some-org/not-downloaded-model")
    with pytest.raises(ValueError, match="never downloads at run time"):
        config.validate()


def test_grpo_is_sfpo_with_the_fast_stage_off(random_llama):
    grpo = GRPOConfig()
    assert grpo.fast_steps == 0
    assert {k: v for k, v in vars(grpo).items() if k not in ("fast_steps", "algo_class")} == {
        k: v for k, v in vars(SFPOConfig()).items() if k not in ("fast_steps", "algo_class")
    }


def test_paper_defaults():
    c = SFPOConfig()
    assert (c.fast_steps, c.reposition_alpha, c.entropy_window, c.entropy_z_threshold) == (3, 0.8, 30, 1.0)
    assert (c.lr, c.clip_param, c.kl_coeff, c.optimizer, c.group_size) == (1e-6, 0.2, 0.0, "adamw", 8)
    assert c.entropy_z_threshold < math.inf


def test_settings_survive_tune_round_trip(random_llama):
    config = valid(random_llama).training(fast_steps=2, reposition_alpha=0.5, entropy_trigger="rise")
    again = SFPOConfig().update_from_dict(config.to_dict())
    assert (again.fast_steps, again.reposition_alpha, again.entropy_trigger) == (2, 0.5, "rise")
    assert again.model_name_or_path == random_llama


def test_config_of_converts_settings_and_grpo_keeps_k_zero():
    from sfpo_rllib import config_of

    sfpo = SFPOConfig().training(fast_steps=3, lr=1e-4)
    grpo = config_of("GRPO", sfpo.to_dict())
    assert type(grpo) is GRPOConfig and grpo.fast_steps == 0 and grpo.lr == 1e-4
    back = config_of("SFPO", sfpo.to_dict())
    assert type(back) is SFPOConfig and back.fast_steps == 3 and back.lr == 1e-4
