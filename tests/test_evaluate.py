"""sfpo-rllib evaluate: the pass@k estimator on hand-made counts, and a trained run's final
model re-measured under the run's own protocol (it must agree within sampling error)."""

import itertools
import json
import math

import pytest

from sfpo_rllib.cli import main
from sfpo_rllib.evaluate import ks_for, pass_at_k, score_counts
from sfpo_rllib.run_logger import read_metrics


def brute_force_pass_at_k(n, c, k):
    """The fraction of all k-subsets of n samples (c of them correct) holding a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 4, 5, 8])
def test_pass_at_k_is_the_unbiased_estimator(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert math.isclose(pass_at_k(n, c, k), brute_force_pass_at_k(n, c, k), abs_tol=1e-12), (n, c, k)
    assert pass_at_k(4, 1, 2) == 0.5  # 1 - C(3,2)/C(4,2) = 1 - 3/6


def test_score_counts_on_hand_made_counts():
    scores = score_counts([0, 1, 4, 2], n=4)
    assert scores["avg@4"] == pytest.approx(7 / 16)
    assert scores["pass@1"] == pytest.approx(7 / 16)  # pass@1 is avg@n
    assert scores["pass@2"] == pytest.approx((0 + 0.5 + 1 + (1 - 1 / 6)) / 4)
    assert scores["pass@4"] == pytest.approx(3 / 4)  # problems with any correct sample
    assert ks_for(4) == [1, 2, 4] and ks_for(6) == [1, 2, 4, 6] and ks_for(1) == [1]
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


@pytest.mark.slow
def test_evaluate_on_a_final_model_reproduces_the_runs_test_accuracy(tmp_path):
    settings = {"group_size": 4, "train_batch_size_per_learner": 16, "minibatch_size": 8, "lr": 3e-4,
                "max_new_tokens": 12, "test_interval": 2, "test_num_problems": 64, "test_samples_per_problem": 4,
                "env_config": {"size": 500}}
    run = tmp_path / "run"
    main(["train", "--env", "sfpo/Arithmetic-v0", "--config", json.dumps(settings), "--stop-iters", "2", "--seed", "5",
          "--output", str(run), "--num-cpus", "2", "--no-progress"])
    last = read_metrics(str(run / "metrics.jsonl"))[-1]["test_accuracy"]

    out = tmp_path / "eval"
    main(["evaluate", "--model", str(run / "final_model"), "--env", "sfpo/Arithmetic-v0", "--env-config",
          '{"size": 500}', "--n", "4", "--temperature", "1.0", "--top-p", "1.0", "--max-new-tokens", "12",
          "--num-problems", "64", "--seed", "11", "--output", str(out), "--no-progress"])
    result = json.loads((out / "results.json").read_text())
    bench = result["models"][0]["benchmarks"]["sfpo/Arithmetic-v0"]
    assert result["protocol"]["top_p"] == 1.0 and result["protocol"]["n"] == 4 and bench["problems"] == 64
    per_problem = [c / 4 for c in bench["correct_counts"]]
    mean = sum(per_problem) / len(per_problem)
    se = math.sqrt(sum((x - mean) ** 2 for x in per_problem) / (len(per_problem) - 1) / len(per_problem))
    assert bench["avg@4"] == pytest.approx(mean)
    assert 0.0 < mean < 1.0
    assert abs(bench["avg@4"] - last) <= 3 * math.sqrt(2) * se, (bench["avg@4"], last, se)
    assert (out / "results.csv").read_text().startswith("model,benchmark,problems,avg@4,pass@1,pass@2,pass@4")
    assert "| sfpo/Arithmetic-v0 | 64 |" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "/no/such/dir", "--env", "sfpo/Arithmetic-v0"], "is not a folder"),
        (["--model", "sfpo-tiny-arithmetic", "--benchmarks", "math501", "--benchmarks-dir", "."], "unknown name(s) ['math501']"),
        (["--model", "sfpo-tiny-arithmetic", "--benchmarks", "math500", "--benchmarks-dir", "/no/dir"], "--benchmarks-dir"),
        (["--model", "sfpo-tiny-arithmetic"], "Say what to evaluate on"),
        (["--checkpoint", "/tmp"], "is neither an RLlib checkpoint"),
        (["--model", "sfpo-tiny-arithmetic", "--env", "sfpo/Arithmetic-v0", "--top-p", "0"], "--top-p (0.0) must be in (0, 1]"),
        (["--model", "sfpo-tiny-arithmetic", "--env", "sfpo/Arithmetic-v0", "--env-config", "[1]"], "must be a JSON object"),
    ],
)
def test_bad_evaluate_input_is_one_clear_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
