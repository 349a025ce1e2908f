"""sfpo-rllib compare at a tiny size: the report, results and plots are written, every run
of every arm and seed is there, finished runs are kept on a second invocation, and a
finished run is never mixed with other settings."""

import json

import pytest

from sfpo_rllib.cli import main
from sfpo_rllib.run_logger import read_metrics

TINY = {"group_size": 4, "train_batch_size_per_learner": 16, "minibatch_size": 8, "lr": 3e-4, "max_new_tokens": 12,
        "test_interval": 1, "test_num_problems": 8, "test_samples_per_problem": 2, "env_config": {"size": 500}}


def compare(out, *arms):
    main(["compare", "--env", "sfpo/Arithmetic-v0", "--config", json.dumps(TINY), *arms, "--seeds", "0,1",
          "--iters", "1", "--output", str(out), "--num-cpus", "2", "--no-progress"])


def test_compare_writes_report_plots_and_keeps_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    arms = ["--arm", 'GRPO={"algo": "GRPO"}', "--arm", 'SFPO K=2={"algo": "SFPO", "fast_steps": 2}']
    compare(out, *arms)
    for name in ("report.md", "results.json", "accuracy_vs_rollouts.png", "accuracy_vs_seconds.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert list(results["arms"]) == ["GRPO", "SFPO K=2"] and results["baseline"] == "GRPO"
    for arm, folder in (("GRPO", "GRPO"), ("SFPO K=2", "SFPO_K_2")):
        for seed in (0, 1):
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
    assert capsys.readouterr().out.count("finished earlier, kept") == 4
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
