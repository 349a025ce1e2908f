"""sfpo/Math-v0 through gymnasium.make, its prompts, rewards, info and templates."""

from __future__ import annotations

import json
import os
import threading

import gymnasium as gym
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sfpo_envs  # noqa: F401  (registers sfpo/Math-v0)
from sfpo_envs.math_env import MathEnv
from sfpo_envs.templates import TEMPLATES, render, resolve_template

from conftest import BENCHMARKS as BENCH, needs_bench
HANG = "\\boxed{9^{9^{9^{9^{9}}}}}"
ROWS = [
    {"question": "What is 1/2 + 1/4?", "answer": "\\frac{3}{4}"},
    {"question": "Name the interval of x with 2 <= x < 5.", "answer": "[2,5)"},
]


@pytest.fixture(scope="module")
def env():
    env = gym.make("sfpo/Math-v0", data=ROWS, split="test", timeout_s=1.0, num_workers=1, format_score=0.1)
    yield env
    env.close()


def test_reset_step_reward_and_info(env):
    prompt, info = env.reset(options={"index": 0})
    assert prompt == "What is 1/2 + 1/4?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert info["messages"] == [{"role": "user", "content": prompt}]
    _, reward, terminated, truncated, info = env.step("1/2 + 1/4 = 3/4, so \\boxed{0.75}.")
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info == {"index": 0, "correct": True, "extracted": "0.75", "gold": "\\frac{3}{4}", "timed_out": False}

    env.reset(options={"index": 1})
    _, reward, *_, info = env.step("So the answer is \\boxed{(2, 5)}.")  # wrong but well formed
    assert reward == pytest.approx(0.1) and info["correct"] is False and info["extracted"] == "(2, 5)"
    env.reset(options={"index": 1})
    _, reward, *_, info = env.step("I do not know.")
    assert reward == 0.0 and info["extracted"] is None


def test_score_batches_and_timeouts_off_the_main_thread(env):
    base = env.unwrapped
    out = {}

    def run():
        out["verdicts"] = base.score(["\\boxed{3/4}", HANG, "\\boxed{[2,5)}"], [0, 0, 1])

    before = base.verifier.stats["timed_out"]
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    rewards = [v.reward for v in out["verdicts"]]
    assert rewards == [1.0, 0.0, 1.0]
    assert out["verdicts"][1].info["timed_out"] is True
    assert base.verifier.stats["timed_out"] == before + 1


@needs_bench
def test_benchmark_file_through_gymnasium_make():
    env = gym.make("sfpo/Math-v0", data=str(BENCH / "amc23_test.jsonl"), split="test", num_workers=1)
    try:
        base = env.unwrapped
        assert len(base) == 40 and base.layout == "amc" and base.num_skipped == 0
        prompt, info = env.reset(options={"index": 0})
        assert prompt.startswith("Cities $A$ and $B$ are $45$ miles apart.")
        _, reward, *_, info = env.step("They meet after 1.5 hours, at \\boxed{27} miles.")
        assert reward == 1.0 and info["gold"] == "27"
    finally:
        env.close()


def test_verl_data_keeps_its_chat_prompt(tmp_path):
    rows = [{
        "data_source": "gsm8k",
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "6*7? Put the final answer in \\boxed{}."},
        ],
        "ability": "math",
        "reward_model": {"ground_truth": "42", "style": "rule"},
        "extra_info": {"index": 0},
    }]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    env = MathEnv(data=tmp_path, split="test", num_workers=1)
    try:
        prompt, info = env.reset(options={"index": 0})
        assert prompt == "6*7? Put the final answer in \\boxed{}."  # already a full prompt: 'plain'
        assert info["messages"] == rows[0]["prompt"]
        assert env.step("\\boxed{42}")[1] == 1.0
    finally:
        env.close()
    env = MathEnv(data=tmp_path, split="test", prompt_template="Q: {question}")
    assert env.reset(options={"index": 0})[1]["messages"][1]["content"] == "Q: 6*7? Put the final answer in \\boxed{}."
    env.close()


def test_skipped_rows_are_exposed(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{oops\n" + json.dumps({"question": "no answer"}) + "\n")
    env = MathEnv(data=path, on_bad_row="skip")
    assert len(env) == 1 and env.num_skipped == 2
    assert [(s.row, s.reason.split(" (")[0]) for s in env.skipped_rows] == [
        (2, "line is not valid JSON"),
        (3, "field 'answer'"),
    ]
    with pytest.raises(ValueError, match=r"mixed.jsonl, row 2: line is not valid JSON"):
        MathEnv(data=path)
    env.close()


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="sfpo/Math-v0 needs `data=`"):
        MathEnv()
    code = [{"question": "Write f.", "test_code": "assert f() == 1"}]
    with pytest.raises(ValueError, match="holds code problems"):
        MathEnv(data=code)
    with pytest.raises(ValueError, match=r"`timeout_s` \(-1\) must be a positive number"):
        MathEnv(data=ROWS, timeout_s=-1)
    with pytest.raises(ValueError, match="`prompt_template` \\('mathh'\\) is neither a template name \\(valid: math, code, plain\\)"):
        MathEnv(data=ROWS, prompt_template="mathh")
    path = tmp_path / "all_bad.jsonl"
    path.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match="got no examples"):
        MathEnv(data=path, layout="math", on_bad_row="skip")


def test_close_stops_the_workers():
    env = MathEnv(data=ROWS, num_workers=1)
    env.score(["\\boxed{3/4}"], [0])
    pids = env.verifier.worker_pids
    env.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_templates():
    assert set(TEMPLATES) == {"math", "code", "plain"}
    assert render("math", "1+1?") == "1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert render("plain", "1+1?") == "1+1?"
    assert "```python" in render("code", "Write f.") and render("code", "Write f.").startswith("Write f.")
    # Only {question} is filled in: other braces (LaTeX) stay as written.
    assert render("Solve {question} in \\boxed{} {x}", "1+1") == "Solve 1+1 in \\boxed{} {x}"
    with pytest.raises(ValueError, match=r"valid: math, code, plain"):
        resolve_template("no placeholder")
    with pytest.raises(TypeError, match="must be a template name"):
        resolve_template(None)
