"""The command-line tool: a real run's outputs, GRPO vs SFPO(α=0) exactness, same-seed
repeatability, and bad input answered with a clear error instead of a traceback."""

import json
import time
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from sfpo_rllib.cli import main
from sfpo_rllib.run_logger import read_metrics, without_timings

SMALL = {
    "group_size": 4, "train_batch_size_per_learner": 16, "minibatch_size": 8, "lr": 3e-4,
    "max_new_tokens": 12, "test_interval": 2, "test_num_problems": 8, "test_samples_per_problem": 2,
    "env_config": {"size": 500},
}


def cli_train(tmp_path, name, *extra, config=None):
    out = tmp_path / name
    settings = dict(SMALL, **(config or {}))
    main(["train", "--env", "sfpo/Arithmetic-v0", "--config", json.dumps(settings), "--stop-iters", "2",
          "--seed", "3", "--output", str(out), "--num-cpus", "2", "--no-progress", *extra])
    return out


def test_run_writes_metrics_tensorboard_checkpoint_and_a_loadable_final_model(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # a relative --output, as users type it
    main(["train", "--algo", "SFPO", "--env", "sfpo/Arithmetic-v0", "--config", json.dumps(SMALL), "--stop-iters", "2",
          "--seed", "3", "--output", "sfpo", "--num-cpus", "2", "--no-progress"])
    # A quiet first screen: none of Ray's known notices, no per-load bars from transformers.
    from sfpo_rllib.quiet import KNOWN_NOTICES

    screen = "".join(capfd.readouterr())
    for noise in ["Loading weights", "Writing model shards", *(fragment for _, fragment in KNOWN_NOTICES)]:
        assert noise not in screen, noise
    assert "done:" in screen
    out = tmp_path / "sfpo"
    rows = read_metrics(str(out / "metrics.jsonl"))
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for key in ("rollouts", "reward_mean", "alpha", "entropy", "reposition_distance", "time_generate_s", "time_update_s"):
        assert key in rows[1], key
    assert rows[2]["rollouts"] == 32 and "test_accuracy" in rows[0] and "test_accuracy" in rows[2]
    # Every row has every field, null where undefined (docs/design.md, "The metrics contract").
    from sfpo_rllib.sfpo import METRIC_FIELDS

    assert all(set(row) == set(METRIC_FIELDS) for row in rows), [set(METRIC_FIELDS) ^ set(row) for row in rows]
    assert rows[1]["entropy_z"] is None and rows[0]["reward_mean"] is None and rows[1]["test_accuracy"] is None
    assert rows[0]["test_accuracy"] is not None and rows[2]["test_accuracy"] is not None
    for stage in ("fast", "slow"):  # SFPO's default K=3: both stages ran, and their loss diagnostics are logged
        for name in ("policy_loss", "clipfrac", "approx_kl", "grad_norm"):
            assert isinstance(rows[1][f"{stage}_{name}"], float), (stage, name)
        assert rows[1][f"{stage}_kl"] is None  # kl_coeff = 0: no KL term
    assert rows[1]["fast_approx_kl"] > 0 and rows[1]["slow_grad_norm"] > 0
    for name in ("time_rollout_s", "time_generate_s", "time_verify_s", "time_update_s", "time_sync_s", "time_iteration_s"):
        assert rows[1][name] >= 0, name
    assert rows[1]["time_generate_s"] <= rows[1]["time_rollout_s"] <= rows[1]["time_iteration_s"]
    assert rows[2]["time_test_s"] > 0 and rows[1]["time_test_s"] is None
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    assert (out / "checkpoints" / "iteration_000002" / "rllib_checkpoint.json").exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "final_model")
    tokenizer = AutoTokenizer.from_pretrained(out / "final_model")
    assert model.config.vocab_size >= len(tokenizer)


@pytest.mark.slow
def test_grpo_and_sfpo_with_alpha_zero_are_bit_identical_and_seeds_repeat(tmp_path):
    grpo = cli_train(tmp_path, "grpo", "--algo", "GRPO")
    sfpo = cli_train(tmp_path, "sfpo0", "--algo", "SFPO", config={"reposition_alpha": 0.0})
    a = load_file(str(grpo / "final_model" / "model.safetensors"))
    b = load_file(str(sfpo / "final_model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = cli_train(tmp_path, "grpo_again", "--algo", "GRPO")
    first = without_timings(read_metrics(str(grpo / "metrics.jsonl")))
    assert first == without_timings(read_metrics(str(again / "metrics.jsonl")))
    assert first[1]["reward_mean"] > 0  # a learning signal existed, so equality means something


@pytest.mark.parametrize(
    "args,message",
    [
        (["--env", "sfpo/DoesNotExist-v0"], "is not a registered gymnasium environment"),
        (["--env", "sfpo/Arithmetic-v0", "--config", '{"model_name_or_path": "/no/such/model"}'], "is not an existing folder"),
        (["--env", "sfpo/Arithmetic-v0", "--config", '{"reposition_alpha": 1.5}'], "`reposition_alpha` (1.5) must be in [0, 1]"),
        (["--env", "sfpo/Arithmetic-v0", "--config", '{"fast_steps": -1}'], "`fast_steps` (-1) must be an int >= 0"),
        (["--env", "sfpo/Arithmetic-v0", "--config", '{"group_size": 1}'], "`group_size` (1) must be an int >= 2"),
        (["--env", "sfpo/Arithmetic-v0", "--config", '{"group_size": 8, "train_batch_size_per_learner": 20}'],
         "`train_batch_size_per_learner` (20) must be a positive multiple of `group_size` (8)"),
        (["--env", "sfpo/Arithmetic-v0", "--config", '{"fast_step": 2}'], "unknown setting 'fast_step'. Did you mean 'fast_steps'?"),
        (["--env", "sfpo/Arithmetic-v0", "--config", "{not json"], "--config is not valid JSON"),
        (["file", "tuned_examples/missing.py"], "does not exist"),
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_input_from_the_shell_prints_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "sfpo_rllib.cli", "train", "--env", "sfpo/Arithmetic-v0", "--config", '{"group_size": 1}'],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "`group_size` (1) must be an int >= 2" in proc.stderr and "Traceback" not in proc.stderr


def test_a_row_longer_than_the_micro_batch_budget_is_one_line(tmp_path, capsys):
    """Without max_prompt_tokens the config cannot know the rows' lengths: the (remote)
    learner finds the row where it cuts micro-batches, before its first forward, and the CLI
    reports one line, exit code 2."""
    settings = dict(SMALL, max_new_tokens=8, max_tokens_per_micro_batch=9, test_interval=0, num_learners=1)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--env", "sfpo/Arithmetic-v0", "--config", json.dumps(settings), "--stop-iters", "1",
              "--output", str(tmp_path / "o"), "--num-cpus", "2", "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert exit_info.value.code == 2
    assert len(errors) == 1 and "Traceback" not in err and "RowTooLongError" not in err, err
    assert errors[0].startswith("sfpo-rllib: error: `max_tokens_per_micro_batch` (9) is smaller than row"), errors
    assert "of minibatch 0" in errors[0] and "at least" in errors[0], errors


def test_a_user_error_raised_in_a_remote_learner_is_unwrapped_for_the_one_line_report():
    from ray.exceptions import RayTaskError

    from sfpo_rllib.batch import RowTooLongError
    from sfpo_rllib.cli import _user_error

    cause = RowTooLongError(3, 20, 12, 30, "minibatch 1")
    wrapped = RayTaskError("update", "Traceback (most recent call last): ...", cause).as_instanceof_cause()
    assert isinstance(wrapped, RowTooLongError)  # what makes unwrapping necessary
    assert str(_user_error(wrapped)) == str(cause) and "Traceback" not in str(_user_error(wrapped))
    try:
        raise RuntimeError("RLlib's wrapper") from wrapped
    except RuntimeError as nested:
        assert str(_user_error(nested)) == str(cause)
    assert _user_error(RayTaskError("f", "tb", KeyError("bug")).as_instanceof_cause()) is None  # a bug keeps its traceback
    assert "row 3 of minibatch 1" in str(cause) and "32 tokens" in str(cause)


def tensorboard_scalars(folder) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag.removeprefix("sfpo/"): {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_every_computed_diagnostic_and_field_reaches_metrics_and_tensorboard(tmp_path):
    """With every loss option on (dual clip, TIS, KL, SFPO's fast stage) each diagnostic the
    learner computes is a number in metrics.jsonl and a TensorBoard scalar; the row has its
    wall-clock time, and the iteration's time leaves the held-out test out."""
    from sfpo_rllib.results import DIAGNOSTIC_FIELDS

    out = cli_train(tmp_path, "all", "--stop-iters", "1",
                    config={"clip_ratio_c": 3.0, "tis_cap": 2.0, "kl_coeff": 0.01, "test_interval": 1})
    rows = read_metrics(str(out / "metrics.jsonl"))
    row = rows[1]
    missing = [name for name in DIAGNOSTIC_FIELDS if not isinstance(row[name], float)]
    assert not missing, missing
    scalars = tensorboard_scalars(out / "tensorboard")
    numbers = [name for name, value in row.items()
               if name != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool)]
    assert [name for name in numbers if 1 not in scalars.get(name, {})] == []
    # time_unix: a wall clock, increasing over rows; time_iteration_s without the held-out test.
    assert rows[0]["time_unix"] <= row["time_unix"] and abs(row["time_unix"] - time.time()) < 3600
    assert row["time_test_s"] > 0
    assert row["time_iteration_s"] < row["time_rollout_s"] + row["time_update_s"] + row["time_sync_s"] + row["time_test_s"]
    # run_config.json: the real values, under the names users set.
    settings = json.loads((out / "run_config.json").read_text())["settings"]
    assert settings["train_batch_size_per_learner"] == 16
    assert "_train_batch_size_per_learner" not in settings and "train_batch_size" not in settings
