"""sfpo-rllib compare at a tiny size: the report, results and plots are written, every run
of every arm is there, finished runs are kept on a second invocation, and a
finished run is never mixed with other settings."""

import json

import pytest

from sfpo_rllib.cli import main
from sfpo_rllib.compare import summarise
from sfpo_rllib.run_logger import read_metrics

TINY = {"group_size": 4, "train_batch_size_per_learner": 16, "minibatch_size": 8, "lr": 3e-4, "max_new_tokens": 12,
        "test_interval": 1, "test_num_problems": 8, "test_samples_per_problem": 2, "env_config": {"size": 500}}


def curve(*points):
    """Test points (rollouts, seconds, accuracy), iterations 0, 10, 20, ..."""
    return [{"iteration": 10 * i, "rollouts": r, "seconds": t, "accuracy": a, "pass_at_k": None}
            for i, (r, t, a) in enumerate(points)]


def test_summary_over_seeds_on_hand_made_curves():
    curves = {
        "GRPO": {0: curve((0, 0, 0.20), (100, 10, 0.24), (200, 20, 0.30)),
                 1: curve((0, 0, 0.22), (100, 12, 0.26), (200, 24, 0.26))},
        "SFPO": {0: curve((0, 0, 0.20), (100, 40, 0.30), (200, 80, 0.34)),
                 1: curve((0, 0, 0.22), (100, 44, 0.26), (200, 88, 0.30))},
    }
    s = summarise(curves, baseline="GRPO")
    assert s["target"] == pytest.approx(0.28)  # the best point of GRPO's mean curve (iteration 20)
    grpo, sfpo = s["arms"]["GRPO"], s["arms"]["SFPO"]
    assert grpo["mean_curve_to_target"]["rollouts"] == 200 and sfpo["mean_curve_to_target"]["rollouts"] == 100
    assert sfpo["rollout_ratio_vs_baseline"] == pytest.approx(2.0)
    assert sfpo["seconds_ratio_vs_baseline"] == pytest.approx(22 / 42)  # fewer rollouts, but slower
    assert grpo["seeds_reaching_target"] == 1 and sfpo["seeds_reaching_target"] == 2
    assert sfpo["gain"]["mean"] == pytest.approx(0.11) and sfpo["gain"]["min"] == pytest.approx(0.08)
    assert grpo["final"]["sd"] == pytest.approx(0.02828, abs=1e-4)
    assert summarise(curves, baseline="GRPO", target=0.5)["arms"]["SFPO"]["mean_curve_to_target"] is None


def compare(out, *arms):
    main(["compare", "--env", "sfpo/Arithmetic-v0", "--config", json.dumps(TINY), *arms, "--seeds", "0",
          "--iters", "1", "--output", str(out), "--num-cpus", "2", "--no-progress"])


@pytest.mark.slow
def test_compare_writes_report_plots_and_keeps_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    arms = ["--arm", 'GRPO={"algo": "GRPO"}', "--arm", 'SFPO K=2={"algo": "SFPO", "fast_steps": 2}']
    compare(out, *arms)
    for name in ("report.md", "results.json", "accuracy_vs_rollouts.png", "accuracy_vs_seconds.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert list(results["arms"]) == ["GRPO", "SFPO K=2"] and results["baseline"] == "GRPO"
    for arm, folder in (("GRPO", "GRPO"), ("SFPO K=2", "SFPO_K_2")):
        for seed in (0,):
            rows = read_metrics(str(out / "runs" / folder / f"seed_{seed}" / "metrics.jsonl"))
            assert [r["iteration"] for r in rows] == [0, 1]
            assert results["runs"][arm][str(seed)][-1]["accuracy"] == rows[-1]["test_accuracy"]
    # Arms with the same seed start from the same model on the same problems.
    assert results["runs"]["GRPO"]["0"][0] == results["runs"]["SFPO K=2"]["0"][0]
    grpo_steps = read_metrics(str(out / "runs" / "GRPO" / "seed_0" / "metrics.jsonl"))[1]["optimizer_steps"]
    sfpo_steps = read_metrics(str(out / "runs" / "SFPO_K_2" / "seed_0" / "metrics.jsonl"))[1]["optimizer_steps"]
    assert (grpo_steps, sfpo_steps) == (2, 6)
    target = results["target"]
    assert target == max(p["accuracy"] for p in results["mean_curves"]["GRPO"])
    assert "| GRPO |" in (out / "report.md").read_text()

    capsys.readouterr()
    metrics = out / "runs" / "GRPO" / "seed_0" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    compare(out, *arms)  # everything finished: nothing re-runs
    assert capsys.readouterr().out.count("finished earlier, kept") == 2
    assert metrics.stat().st_mtime_ns == before

    with pytest.raises(SystemExit) as exit_info:  # same arm name, other settings: refused
        compare(out, "--arm", 'GRPO={"algo": "GRPO", "lr": 1e-3}')
    assert exit_info.value.code == 2
    assert "holds a finished run with other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--arm", 'X={"fast_step": 2}'], "arm 'X': unknown setting 'fast_step'. Did you mean 'fast_steps'?"),
        (["--arm", "X={oops"], "the settings are not valid JSON"),
        (["--arm", "X"], "must be NAME="),
        (["--arm", 'X={"algo": "PPO"}'], "`algo` ('PPO') must be one of"),
        (["--arm", 'X={"reposition_alpha": 2}'], "`reposition_alpha` (2) must be in [0, 1]"),
        ([], "No arms"),
        (["--arm", 'X={}', "--seeds", "0,0"], "--seeds ('0,0') must list at least one seed, each once"),
    ],
)
def test_bad_compare_input_is_one_clear_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--env", "sfpo/Arithmetic-v0", *args, "--output", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_gspo_and_cispo_train_through_the_cli_as_compare_arms(tmp_path):
    """Each registered policy loss trains the embedded model from the command line and is an
    arm of a comparison like any other setting."""
    out = tmp_path / "losses"
    compare(out, "--arm", 'PPO={}', "--arm", 'GSPO={"policy_loss": "gspo", "loss_agg": "seq-mean-token-mean"}',
            "--arm", 'CISPO={"policy_loss": "cispo"}')
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    for arm in ("PPO", "GSPO", "CISPO"):
        assert f"| {arm} |" in report
        row = read_metrics(str(out / "runs" / arm / "seed_0" / "metrics.jsonl"))[1]
        assert row["optimizer_steps"] == 2 * 4  # SFPO's K = 3 fast passes + the slow one, 2 minibatches each
        assert row["fast_approx_kl"] > 0 and row["slow_grad_norm"] > 0  # the policy moved
        assert isinstance(row["slow_clipfrac"], float) and row["test_accuracy"] is not None
        assert results["runs"][arm]["0"][-1]["accuracy"] == row["test_accuracy"]
    config = json.loads((out / "runs" / "GSPO" / "seed_0" / "run_config.json").read_text())["settings"]
    assert config["policy_loss"] == "gspo"
