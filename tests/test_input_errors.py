"""Every input error is one line that names the setting (or file and row), exit code 2 from the
CLI, no traceback: every setting with a wrong type and a wrong value, every CLI flag, bad data
files of each format, held-out data that is training data, and verifiers that fail."""

import gzip
import inspect
import json
import math

import gymnasium as gym
import pytest

from sfpo_rllib import SFPOConfig
from sfpo_rllib.cli import main
from sfpo_rllib.model_cache import ensure_tiny_model
from sfpo_rllib.env_factory import check_held_out_data

# ----- settings -----------------------------------------------------------------------------

# RLlib settings this algorithm uses (beside those of our own setters).
RLLIB_SETTINGS = ["lr", "grad_clip", "grad_clip_by", "num_epochs", "minibatch_size", "train_batch_size_per_learner",
                  "num_learners", "num_env_runners", "num_cpus_per_learner", "num_cpus_per_env_runner", "seed",
                  "env_config"]
SETTERS = (SFPOConfig.training, SFPOConfig.generation, SFPOConfig.held_out_test, SFPOConfig.scaling)
OUR_SETTINGS = [name for setter in SETTERS
                for name in inspect.signature(setter).parameters if name not in ("self", "kwargs")]
DICT_SETTINGS = {"env_config", "test_env_config", "vllm_kwargs"}
WRONG_VALUE = {
    "fast_steps": -1, "reposition_alpha": 1.5, "entropy_window": 1, "entropy_z_threshold": 0,
    "entropy_trigger": "both", "fast_stage": "gpxo", "gxpo_virtual_steps": 1, "gxpo_delta": 0,
    "reuse_gate": "lm_head", "lm_head_grad_window": 1, "lm_head_grad_z_threshold": 0, "group_size": 1, "clip_param": 0, "kl_coeff": -1, "entropy_coeff": math.nan,
    "loss_agg": "seq-sum", "optimizer": "lion", "weight_decay": -1, "adam_betas": [0.9],
    "on_reward_error": "ignore", "model_name_or_path": "/no/such/model", "model_dtype": "int8",
    "gradient_checkpointing": 1, "max_new_tokens": 0, "max_prompt_tokens": 0, "temperature": 0, "top_p": 0,
    "top_k": -1, "chat_template": "yes", "rollout_engine": "sglang", "generation_batch_size": 0,
    "vllm_kwargs": None, "torch_threads_per_runner": 0, "test_interval": -1, "test_num_problems": 0,
    "test_samples_per_problem": 0, "test_env_config": {1: "test"}, "lr": -1e-3, "grad_clip": -1.0,
    "grad_clip_by": "l2", "num_epochs": 0, "minibatch_size": 6, "train_batch_size_per_learner": 18,
    "num_learners": -1, "num_env_runners": -1, "num_cpus_per_learner": 0, "num_cpus_per_env_runner": -1,
    "seed": 1.5, "env_config": {1: 2},
    "policy_loss": "grpo", "loss_agg_norm": 0, "advantage_estimator": "ppo", "advantage_std_norm": 1, "clip_param_low": 1.0,
    "clip_param_high": 0, "clip_ratio_c": 1.0, "kl_estimator": "k4", "tis_cap": 0, "rollout_lag": 2, "filter_groups": 1,
    "max_sampling_rounds": -1, "mask_truncated": 1, "overlong_buffer": 8, "overlong_penalty": -1,
    "lora_rank": -1, "lora_alpha": 0, "lora_target_modules": [], "lora_dropout": 1.0,
    "lora_modules_to_save": [],
    "max_tokens_per_micro_batch": 0, "micro_batch_size": 0, "logp_chunk_tokens": 0, "mixed_precision": "fp8",
    "learner_strategy": "zero3", "share_prompt_prefix": 1,
}
# Settings that are only checked where they apply: the others they need.
NEEDS = {"lora_alpha": {"lora_rank": 4}, "lora_target_modules": {"lora_rank": 4}, "lora_dropout": {"lora_rank": 4},
         "lora_modules_to_save": {"lora_rank": 4}}


def test_the_table_covers_every_setter_setting():
    assert set(OUR_SETTINGS) | set(RLLIB_SETTINGS) == set(WRONG_VALUE)


def small(**settings):
    config = (SFPOConfig().environment("sfpo/Arithmetic-v0")
              .training(group_size=4, train_batch_size_per_learner=16, minibatch_size=8))
    config.max_new_tokens = 8
    for name, value in settings.items():
        setattr(config, name, value)
    return config


@pytest.mark.parametrize("kind", ["type", "value"])
@pytest.mark.parametrize("name", sorted(WRONG_VALUE))
def test_every_setting_with_a_wrong_type_or_value_is_one_line_naming_it(name, kind):
    value = WRONG_VALUE[name] if kind == "value" else ("text" if name in DICT_SETTINGS else {"bad": 1})
    with pytest.raises(ValueError) as info:
        small(**NEEDS.get(name, {}), **{name: value}).validate()
    message = str(info.value).split("\nTo suppress all validation errors")[0]
    assert f"`{name}`" in message and "\n" not in message, message


@pytest.fixture(scope="module", autouse=True)
def tiny_model_built():
    # A CLI command that is the machine's first use of the embedded model prints a line about
    # building it before the error: build it first, so each test sees only the error line.
    ensure_tiny_model()


def cli_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


ENV = ["--env", "sfpo/Arithmetic-v0"]


@pytest.mark.parametrize("setting,value", [("grad_clip", "big"), ("adam_betas", [0.9]), ("env_config", 3),
                                           ("test_env_config", "test"), ("lr", None)])
def test_settings_through_the_cli(setting, value, capsys, tmp_path):
    err = cli_error(["train", *ENV, "--config", json.dumps({setting: value}), "--output", str(tmp_path / "o")], capsys)
    assert f"`{setting}`" in err


def test_a_micro_batch_budget_below_the_longest_possible_row_is_refused_before_training(tmp_path, capsys):
    """max_prompt_tokens + max_new_tokens bounds every row: a smaller budget is a config error."""
    settings = {"max_prompt_tokens": 64, "max_new_tokens": 8, "max_tokens_per_micro_batch": 70}
    err = cli_error(["train", *ENV, "--config", json.dumps(settings), "--output", str(tmp_path / "o")], capsys)
    assert "`max_tokens_per_micro_batch` (70) must hold the longest row (max_prompt_tokens 64 + max_new_tokens 8)" in err
    assert "Use at least 72" in err
    small(**dict(settings, max_tokens_per_micro_batch=72)).validate()  # exactly the longest row fits


def test_every_flag_with_a_bad_value(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "metrics.jsonl").write_text("{}\n")
    cases = [
        (["--algo", "PPO"], "--algo"),
        (["--env", ""], "--env is required"),
        (["--env", "nope/Nope-v0"], "is not a registered gymnasium environment"),
        (["--config", "[1]"], "--config must be a JSON object"),
        (["--config", "{bad"], "--config is not valid JSON"),
        (["--stop-iters", "0"], "--stop-iters (0) must be >= 1"),
        (["--stop-iters", "x"], "--stop-iters"),
        (["--seed", "x"], "--seed"),
        (["--checkpoint-every", "0"], "--checkpoint-every (0) must be >= 1"),
        (["--num-cpus", "0"], "--num-cpus (0) must be >= 1"),
        (["--output", str(a_file)], "is a file"),
        (["--output", str(a_file / "sub")], "is a file"),
        (["--output", str(tmp_path / "used")], "already holds files"),
        (["--output", str(tmp_path / "used"), "--resume", "--overwrite"], "contradict"),
        (["--allow-config-change"], "--allow-config-change only applies with --resume"),
        (["--no-such-flag"], "unrecognized arguments"),
    ]
    for extra, expected in cases:
        argv = ["train", *ENV, "--output", str(tmp_path / "new"), *extra]
        assert expected in cli_error(argv, capsys), extra


def test_bad_tuned_example_files(tmp_path, capsys):
    files = {
        "syntax.py": ("config = (\n", "line 1"),
        "raises.py": ("raise RuntimeError('boom')\n", "raised RuntimeError: boom"),
        "noconfig.py": ("x = 1\n", "defines no `config`"),
        "notconfig.py": ("config = 3\n", "not an SFPOConfig"),
        "stop.py": ("from sfpo_rllib import SFPOConfig\nconfig = SFPOConfig()\nstop_iters = 0\n", "`stop_iters` (0)"),
    }
    for name, (text, expected) in files.items():
        (tmp_path / name).write_text(text)
        assert expected in cli_error(["train", "file", str(tmp_path / name)], capsys), name
    assert "does not exist" in cli_error(["train", "file", str(tmp_path / "missing.py")], capsys)


# ----- data ---------------------------------------------------------------------------------

ROWS = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(40)]


def math_config(data, test=None, **env):
    return (SFPOConfig().environment("sfpo/Math-v0", env_config={"data": data, "num_workers": 1, **env})
            .held_out_test(test_env_config={"split": "test", **(test or {})}))


def write_jsonl(path, rows, opener=open):
    with opener(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def data_error(config):
    with pytest.raises(ValueError) as info:
        check_held_out_data(config)
    assert "\n" not in str(info.value), info.value
    return str(info.value)


def test_bad_data_files_of_each_format_name_the_file_and_row(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", ROWS)
    bad_row = write_jsonl(tmp_path / "bad_row.jsonl", ROWS[:3] + [{"question": "q?"}])
    giant = tmp_path / "giant.jsonl"
    giant.write_text(json.dumps(ROWS[0]) + '\n{"question": "big?", "answer": ' + "7" * 5000 + "}\n")
    gz = write_jsonl(tmp_path / "full.jsonl.gz", ROWS * 50, opener=gzip.open)
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(open(gz, "rb").read()[:300])
    (tmp_path / "bad.json").write_text("[{")
    (tmp_path / "dict.json").write_text('{"rows": 3}')
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    cases = [
        (bad_row, "bad_row.jsonl, row 4"),
        (str(giant), "giant.jsonl, row 2"),
        (str(tmp_path / "missing.jsonl.gz"), "missing.jsonl.gz"),
        (str(truncated), "truncated.jsonl.gz is truncated"),
        (str(tmp_path / "bad.json"), "bad.json is not valid JSON"),
        (str(tmp_path / "dict.json"), "dict.json holds a JSON dict"),
        (str(tmp_path / "bad.parquet"), "bad.parquet could not be read as parquet"),
    ]
    for data, expected in cases:
        message = data_error(math_config(good, test={"data": data}))
        assert expected in message and "`test_env_config`" in message, message
        message = data_error(math_config(data, test={"data": good}))
        assert expected in message and "`env_config`" in message, message


def test_one_file_for_both_splits_is_refused_and_split_fraction_carves_it(tmp_path):
    data = write_jsonl(tmp_path / "all.jsonl", ROWS)
    message = data_error(math_config(data))
    assert "are training problems" in message and "split_fraction" in message
    assert f"a single data file ({data!r}) is read whole" in message
    assert check_held_out_data(math_config(data, split_fraction=0.25)) == 0

    from sfpo_envs.datasets import load_examples

    train = load_examples(data, split="train", split_fraction=0.25)
    test = load_examples(data, split="test", split_fraction=0.25)
    again = load_examples(data, split="test", split_fraction=0.25)
    other_seed = load_examples(data, split="test", split_fraction=0.25, split_seed=1)
    assert len(train.examples) + len(test.examples) == len(ROWS) and 3 <= len(test.examples) <= 20
    assert [e["row"] for e in test.examples] == [e["row"] for e in again.examples]
    assert [e["row"] for e in test.examples] != [e["row"] for e in other_seed.examples]
    assert "`split_fraction` (1.5)" in data_error(math_config(data, split_fraction=1.5))

    # A partial overlap is counted (and reported in the test metrics), not refused.
    overlapping = write_jsonl(tmp_path / "test.jsonl", ROWS[:2] + [{"question": "new?", "answer": "1"}])
    assert check_held_out_data(math_config(data, test={"data": overlapping})) == 2


def test_an_environment_without_data_that_ignores_split_is_told_so():
    """A plug-in environment that returns the same examples for every split is refused with
    a message about what it has (keywords, not a data file), and one that holds out its own
    examples by `split` passes."""
    import gymnasium as gym

    from sfpo_envs import RewardFnEnv

    words = {"train": ["cat", "dog"], "test": ["owl"]}

    def make(split="train", same=False):
        chosen = words["train"] if same else words[split]
        return RewardFnEnv([{"prompt": w, "target": w[::-1]} for w in chosen], reward_fn=lambda c, ex: 0.0)

    gym.register(id="test/Reverse-v0", entry_point=make, disable_env_checker=True)
    try:
        config = SFPOConfig().environment("test/Reverse-v0", env_config={"same": True})
        message = data_error(config)
        assert "All 2 held-out problems of 'test/Reverse-v0' are training problems" in message
        assert "RewardFnEnv" in message and "does not choose its examples" in message
        assert "data file" not in message
        assert check_held_out_data(SFPOConfig().environment("test/Reverse-v0")) == 0
        # test_env_config replaces its default {"split": "test"}: a config that drops the split is told so.
        dropped = data_error(SFPOConfig().environment("test/Reverse-v0").held_out_test(test_env_config={"same": True}))
        assert "has no 'split'" in dropped and "test_env_config={'split': 'test', ...}" in dropped
    finally:
        gym.registry.pop("test/Reverse-v0", None)


# ----- verifiers that fail -------------------------------------------------------------------


def _flaky_env(split="train", **_):
    from sfpo_envs import RewardFnEnv

    def reward(completion, example):
        if example["n"] % 5 == 0:
            raise ZeroDivisionError("flaky verifier")
        return None if example["n"] % 5 == 1 else float(completion.strip() == example["answer"])

    offset = 0 if split == "train" else 1000
    rows = [{"prompt": f"{n}+{n}=", "answer": str(2 * n), "n": n} for n in range(offset, offset + 20)]
    return RewardFnEnv(rows, reward_fn=reward)


gym.register("sfpo_test/Flaky-v0", entry_point=_flaky_env, disable_env_checker=True)


def test_a_verifier_that_raises_or_returns_none_is_reported_or_scored_zero(ray_session):
    def build(mode):
        config = (SFPOConfig().environment("sfpo/Arithmetic-v0")
                  .training(group_size=4, train_batch_size_per_learner=16, minibatch_size=8, on_reward_error=mode)
                  .generation(max_new_tokens=6).held_out_test(test_interval=0).debugging(seed=1))
        config.env = "sfpo_test/Flaky-v0"
        return config.build_algo()

    algo = build("zero")
    try:
        expected = sum(int(i) % 5 in (0, 1) for i in algo._prompt_indices(1)) * 4
        assert expected > 0 and algo.train()["sfpo"]["reward_errors"] == expected
    finally:
        algo.stop()
    algo = build("raise")
    try:
        with pytest.raises(ValueError, match=r"'sfpo_test/Flaky-v0' failed on training example \d+ "
                                             r"\((ZeroDivisionError: flaky verifier|TypeError: `reward_fn` returned None)"):
            algo.train()
    finally:
        algo.stop()


def test_bad_data_through_the_cli_is_one_line_before_any_rollout(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", ROWS[:3] + [{"question": "q?"}])
    settings = {"env_config": {"data": bad, "num_workers": 1}, "group_size": 4, "train_batch_size_per_learner": 16,
                "minibatch_size": 8}
    err = cli_error(["train", "--env", "sfpo/Math-v0", "--config", json.dumps(settings), "--output",
                     str(tmp_path / "out"), "--num-cpus", "2", "--no-progress"], capsys)
    assert "`env_config` of 'sfpo/Math-v0'" in err and "bad.jsonl, row 4" in err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_hostile_inputs_get_one_line(tmp_path, capsys):
    """Inputs that once ended in a traceback or were accepted: each is exit 2 and one line."""
    bad_model = tmp_path / "bad_model"
    bad_model.mkdir()
    (bad_model / "config.json").write_text("{not json")
    short_model = tmp_path / "short_model"
    short_model.mkdir()
    (short_model / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
    cases = [
        ('{"lr": Infinity}', "`lr` (inf) must be a finite number"),
        ('{"lr": 1e308}', "`lr` (1e+308) must be in (0, 1]"),
        ('{"temperature": Infinity}', "`temperature` (inf) must be a finite number"),
        ('{"kl_coeff": Infinity}', "`kl_coeff` (inf) must be a finite number"),
        ('{"clip_param": NaN}', "`clip_param` (nan) must be a finite number"),
        ('{"max_new_tokens": 1000000000}', "`max_new_tokens` (1000000000) must be an int in [1, 1048576]"),
        (json.dumps({"model_name_or_path": str(bad_model)}), "config.json does not load (JSONDecodeError"),
        (json.dumps({"model_name_or_path": str(short_model), "max_new_tokens": 200}), "must fit the model's context of 128"),
        ('{"lerning_rate": 0.1}', "Did you mean 'lr'?"),
        ('{"learning_rate": 0.1}', "Did you mean 'lr'?"),
    ]
    for config, expected in cases:
        argv = ["train", *ENV, "--config", config, "--output", str(tmp_path / "new")]
        assert expected in cli_error(argv, capsys), config
    assert "must be None or an int in [0, 2**32)" in cli_error(
        ["train", *ENV, "--seed", "-1", "--output", str(tmp_path / "new")], capsys)
    assert "no folder can be made in '/proc'" in cli_error(["train", *ENV, "--output", "/proc/x"], capsys)
    assert not (tmp_path / "new").exists()
