"""The Tune sweep at a tiny size: ASHA trials are selected on the validation split, the
chosen one is tested once on the test split, and the written tuned example loads."""

import json
import runpy

import pytest

from sfpo_envs.arithmetic import generate_problems, in_validation, split_of
from sfpo_rllib.tune_progress import TrialLines

TINY = {"group_size": 4, "train_batch_size_per_learner": 16, "minibatch_size": 8, "max_new_tokens": 12,
        "test_samples_per_problem": 2, "env_config": {"size": 300}}


def test_validation_split_is_part_of_train_and_disjoint_from_test():
    validation = generate_problems("validation", 300, num_operands=3, max_operand=20, seed=0)
    test = {p["question"] for p in generate_problems("test", 300, num_operands=3, max_operand=20, seed=0)}
    assert len({p["question"] for p in validation}) == 300
    assert all(split_of(p["question"]) == "train" and in_validation(p["question"]) for p in validation)
    assert not test & {p["question"] for p in validation}


class FakeTrial:
    evaluated_params = {"fast_steps": 3, "lr": 3.14159e-05}
    last_result = {"training_iteration": 4}

    def __str__(self):
        return "SFPO_abc_00001"


def test_trial_lines_print_one_line_per_event_and_only_tested_iterations(capsys):
    lines, trial = TrialLines(), FakeTrial()
    lines.on_trial_start(0, [], trial)
    lines.on_trial_result(0, [], trial, {"training_iteration": 1, "sfpo": {"test_accuracy": None}})
    lines.on_trial_result(0, [], trial, {"training_iteration": 2, "sfpo": {"test_accuracy": 0.4375}})
    lines.on_trial_complete(0, [], trial)
    assert capsys.readouterr().out.splitlines() == [
        "trial SFPO_abc_00001 started: fast_steps=3 lr=3.14e-05",
        "trial SFPO_abc_00001 iteration 2: sfpo/test_accuracy 0.438",
        "trial SFPO_abc_00001 finished after 4 iteration(s)",
    ]


@pytest.mark.slow
def test_sweep_selects_on_validation_tests_once_and_writes_a_runnable_example(tmp_path, capsys):
    sweep = runpy.run_path("tuned_examples/sweep_k_alpha_tau.py")
    out = tmp_path / "sweep"
    result = sweep["main"](["--trials", "2", "--iters", "1", "--grace", "1", "--test-problems", "8",
                            "--config", json.dumps(TINY), "--output", str(out)])
    assert len(result["rows"]) == 2 and all(r["error"] is None for r in result["rows"])
    printed = capsys.readouterr().out
    assert "started with configuration" not in printed and "train_batch_size_per_learner" not in printed
    assert printed.count(" started: ") == 2 and printed.count(" finished after 1 iteration(s)") == 2
    for row in result["rows"]:  # every trial measured on validation, never on test
        params = json.loads((next(p for p in (out / "tune").rglob("params.json") if row["checkpoint"].startswith(str(p.parent)))).read_text())
        assert params["test_env_config"] == {"split": "validation"}
    tested = json.loads((out / "best_test" / "results.json").read_text())
    assert tested["tasks"]["sfpo/Arithmetic-v0"]["env_config"]["split"] == "test"
    assert tested["models"][0]["model"] == result["best"]["checkpoint"]
    assert "measured once" in (out / "sweep_results.md").read_text()
    example = runpy.run_path(str(out / "best_config.py"))
    assert example["config"].fast_steps == result["best"]["fast_steps"] and example["stop_iters"] == 1
    assert example["config"].lr == result["best"]["lr"]
