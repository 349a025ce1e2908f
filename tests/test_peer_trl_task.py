"""The shared task of benchmarks/peer_trl.py: split, reward, prompt-order log, TRL-venv import."""

import json
import subprocess
import sys

sys.path.insert(0, "benchmarks")

import peer_trl_task  # noqa: E402


def test_held_out_and_training_problems_never_overlap_and_oversized_requests_fail():
    test, train = peer_trl_task.problems("test", 64), peer_trl_task.problems("train", 336)
    assert len(test) == 64 and len(train) == 336
    assert not {e["prompt"] for e in test} & {e["prompt"] for e in train}
    try:
        peer_trl_task.problems("train", 337)
    except ValueError as err:
        assert "337" in str(err) and "336" in str(err)
    else:
        raise AssertionError("337 training problems of 336 did not fail")


def test_reward_is_the_last_integer_against_the_sum():
    example = {"target": 19}
    assert peer_trl_task.reward("7 + 12 = 19", example) == 1.0
    assert peer_trl_task.reward("19? No: 7 + 12 = 20", example) == 0.0
    assert peer_trl_task.reward("nineteen", example) == 0.0


def test_the_env_logs_each_prompt_it_is_reset_to_in_order(tmp_path):
    order = tmp_path / "order.jsonl"
    env = peer_trl_task.make_env("train", count=8, order_file=str(order))
    for index in (5, 2, 7):
        env.reset(options={"index": index})
    assert [json.loads(line) for line in order.read_text().splitlines()] == [5, 2, 7]
    assert env.step("the answer is " + str(env.examples[7]["target"]))[1] == 1.0


def test_the_task_imports_where_gymnasium_is_missing():
    code = "import sys; sys.modules['gymnasium'] = None; sys.path.insert(0, 'benchmarks'); import peer_trl_task; print(len(peer_trl_task.problems('test', 4)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "4", out.stderr[-1000:]
