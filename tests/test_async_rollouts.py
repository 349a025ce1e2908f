"""One-step-off rollouts (rollout_lag=1): a function of the seeds, resumable bit-identically
after kill -9, its metrics in every row, and its settings checked."""

import os
import subprocess
import sys

import pytest
import torch

from sfpo_rllib import SFPOConfig
from sfpo_rllib.run_logger import read_metrics, without_timings
from sfpo_rllib.sfpo import ASYNC_FIELDS
from sfpo_rllib.train_run import CRASH_ENV

from test_runs import same_weights, train_args, weights
from test_training_e2e import tiny_config, train


@pytest.mark.parametrize("settings, message", [
    ({"rollout_lag": 2}, r"`rollout_lag` \(2\) must be 0 or 1"),
    ({"rollout_lag": 1}, r"`tis_cap` \(None\) must be set with rollout_lag=1 .* Set tis_cap, e.g. 2.0"),
])
def test_bad_rollout_lag_settings_are_one_line_errors(settings, message):
    config = SFPOConfig().environment("sfpo/Arithmetic-v0").training(**settings)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_lag_one_is_a_function_of_its_seeds_and_reports_its_lag(ray_session):
    config = tiny_config(runners=1, rollout_lag=1, tis_cap=2.0)
    first, rows = train(config, iterations=3)
    second, rows_again = train(config, iterations=3)
    on_policy, on_policy_rows = train(tiny_config(runners=1, tis_cap=2.0), iterations=3)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert without_timings(rows) == without_timings(rows_again)
    assert not all(torch.equal(first[k], on_policy[k]) for k in first)  # the lag changes the run
    # Iteration 1 trains on rollouts of the starting model; later ones on one-update-old ones.
    assert [r["policy_lag"] for r in rows] == [0, 1, 1]
    assert abs(rows[0]["behaviour_weight_mean"] - 1.0) < 1e-4  # same weights: π_θ⁰ = π_behaviour
    assert any(abs(r["behaviour_weight_mean"] - 1.0) > 1e-4 for r in rows[1:])
    assert all(0.0 <= r["behaviour_weight_truncated_fraction"] <= 1.0 for r in rows)
    assert all(r["time_overlap_s"] > 0.0 for r in rows)
    assert all(r[name] is None for r in on_policy_rows for name in ASYNC_FIELDS)


@pytest.mark.slow
def test_kill_then_resume_with_lag_one_is_bit_identical(tmp_path):
    lag = {"rollout_lag": 1, "tis_cap": 2.0, "num_env_runners": 1}

    def cli(out, *extra, crash=None):
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        env.update({CRASH_ENV: crash} if crash else {})
        return subprocess.run([sys.executable, "-m", "sfpo_rllib.cli", *train_args(out, *extra, config=lag)],
                              env=env, capture_output=True, text=True, timeout=400)

    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert cli(straight).returncode == 0
    # Killed right after checkpoint 2: the batch generated for iteration 3 is in that checkpoint.
    assert cli(crashed, crash="after_checkpoint:2").returncode == 137
    proc = cli(crashed, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert same_weights(weights(crashed), weights(straight))
    rows = read_metrics(str(straight / "metrics.jsonl"))
    assert without_timings(read_metrics(str(crashed / "metrics.jsonl"))) == without_timings(rows)
    assert [r["policy_lag"] for r in rows[1:]] == [0, 1, 1]
