"""sfpo/Code-v0: code extraction, rewards, every HumanEval/MBPP reference, hostile completions."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import gymnasium as gym
import pytest

import sfpo_envs  # noqa: F401  (registers the ids)
from sfpo_envs.code_env import CodeEnv, build_program, extract_code

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"
HUMANEVAL = BENCH / "humaneval.jsonl.gz"
MBPP = BENCH / "mbpp_sanitized_test.jsonl"
needs_bench = pytest.mark.skipif(not BENCH.is_dir(), reason=f"benchmark files not found at {BENCH}")

# The slowest reference (MBPP amicable_numbers_sum) needs about 4 CPU-seconds; on a busy
# 2-core machine that can take 10 s of wall clock.
REFERENCE_TIMEOUT_S = 30


def _namespaces_possible() -> bool:
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount", "--ipc", "--uts", "true"], capture_output=True
    )
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_possible(),
    reason="Linux namespaces are not available here: hostile code is never run without the jail.",
)

TOY = [{"question": "Write add(a, b).", "test_code": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"}]


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\nIt adds the numbers."


# ----- extraction -------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, code, where",
    [
        ("```python\nx = 1\n```\ntext\n```python\nx = 2\n```", "x = 2\n", "python_block"),
        ("```python\nx = 1\n```\n```\nx = 2\n```", "x = 1\n", "python_block"),
        ("```py\nx = 3\n```", "x = 3\n", "python_block"),
        ("```\nx = 1\n```\nand\n```text\nx = 2\n```", "x = 2\n", "block"),
        ("I think\n```python\ndef f():\n    return 1", "def f():\n    return 1", "unclosed_block"),
        ("def f():\n    return 1\n", "def f():\n    return 1\n", "raw"),
        ("   \n", None, None),
        ("```python\n\n```", None, None),
    ],
)
def test_extract_code(completion, code, where):
    assert extract_code(completion) == (code, where)


def test_program_is_setup_then_code_then_tests():
    example = {"setup_code": "import math\n", "test_code": "assert f() == 1\n"}
    program = build_program("def f():\n    return 1", example, token="abc")
    assert program.index("import math") < program.index("def f") < program.index("assert f()")
    assert program.rstrip().endswith("_sfpo_sys.stdout.flush()") and "sfpo-tests-done-abc" in program


# ----- rewards and info -------------------------------------------------------------


def test_rewards_and_step_info():
    env = gym.make("sfpo/Code-v0", data=TOY, split="test", timeout_s=10, format_score=0.2)
    prompt, info = env.reset(options={"index": 0})
    assert "Write add(a, b)." in prompt and "```python" in prompt
    assert info["messages"] == [{"role": "user", "content": prompt}]

    _, reward, terminated, truncated, info = env.step(fenced("def add(a, b):\n    return a + b"))
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["correct"] and info["passed"] and info["extracted"] == "python_block"
    assert info["error"] is None and not info["timed_out"] and info["isolation"]

    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step(fenced("def add(a, b):\n    return a - b"))
    assert reward == 0.2 and not info["correct"] and info["error"] == "AssertionError"

    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step("def add(a, b):\n    return a - b")  # no fence: no format credit
    assert reward == 0.0 and info["extracted"] == "raw" and info["error"] == "AssertionError"

    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step(fenced("def plus(a, b):\n    return a + b"))
    assert reward == 0.2 and info["error"] == "NameError: name 'add' is not defined"

    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step("")
    assert reward == 0.0 and info["extracted"] is None and info["error"] == "no code in the completion"


def test_custom_template_and_bad_settings():
    env = CodeEnv(data=TOY, prompt_template="Task: {question}\nAnswer in Python.")
    assert env.prompt(0) == "Task: Write add(a, b).\nAnswer in Python."
    with pytest.raises(ValueError, match="prompt_template"):
        CodeEnv(data=TOY, prompt_template="no placeholder")
    with pytest.raises(ValueError, match="needs `data=`"):
        CodeEnv()
    with pytest.raises(ValueError, match="`timeout_s`"):
        CodeEnv(data=TOY, timeout_s=-1)
    with pytest.raises(ValueError, match="`format_score`"):
        CodeEnv(data=TOY, format_score=1.0)


@needs_bench
def test_math_data_is_rejected_with_a_pointer():
    with pytest.raises(ValueError, match="sfpo/Math-v0"):
        CodeEnv(data=BENCH / "gsm8k_test.jsonl", split="test")


# ----- benchmarks: every reference passes, broken solutions fail ---------------------


def _failures(env, verdicts) -> list[str]:
    failed = []
    for ex, v in zip(env.examples, verdicts):
        if v.reward != 1.0:
            name = ex["meta"].get("task_id", f"row {ex['row']}")
            failed.append(f"{name} ({ex['entry_point']}): {v.info['error']}")
    return failed


@needs_bench
@pytest.mark.parametrize("path, size", [(HUMANEVAL, 164), (MBPP, 257)], ids=["humaneval", "mbpp"])
def test_every_reference_solution_passes(path, size):
    env = gym.make(
        "sfpo/Code-v0", data=str(path), split="test", prompt_template="code", layout="auto",
        on_bad_row="error", timeout_s=REFERENCE_TIMEOUT_S, max_workers=2, format_score=0.0,
    ).unwrapped
    assert len(env) == size
    start = time.monotonic()
    verdicts = env.score([fenced(ex["reference"]) for ex in env.examples], range(len(env)))
    elapsed = time.monotonic() - start
    failures = _failures(env, verdicts)
    assert not failures, f"{len(failures)} of {size} references failed: {failures}"
    print(f"{path.name}: {size} references in {elapsed:.1f}s ({size / elapsed:.1f}/s, pool of 2)")


@needs_bench
@pytest.mark.parametrize("path", [HUMANEVAL, MBPP], ids=["humaneval", "mbpp"])
def test_broken_solutions_fail(path):
    env = CodeEnv(data=str(path), split="test", timeout_s=REFERENCE_TIMEOUT_S, format_score=0.1)
    indices = list(range(0, len(env), 4))
    completions = []
    for i in indices:
        ex = env.examples[i]
        if path == HUMANEVAL:  # the prompt's signature and docstring, body `return None`
            completions.append(fenced(ex["question"] + "    return None\n"))
        else:
            completions.append(fenced(f"def {ex['entry_point']}(*args, **kwargs):\n    return None"))
    verdicts = env.score(completions, indices)
    wrongly_passed = [env.examples[i]["entry_point"] for i, v in zip(indices, verdicts) if v.correct]
    assert not wrongly_passed, f"`return None` passed the tests of: {wrongly_passed}"
    assert all(v.reward == 0.1 and v.info["error"] for v in verdicts)


# ----- hostile completions get 0 and end in time ------------------------------------


@needs_namespaces
def test_hostile_completions_score_zero_and_end_in_time():
    env = CodeEnv(data=TOY, timeout_s=2, isolation="namespaces", max_workers=4)
    attacks = {
        "infinite loop": "def add(a, b):\n    while True:\n        pass",
        "sleep": "import time\ntime.sleep(10**6)",
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "memory bomb": "x = bytearray(10**11)",
        "huge output": "while True:\n    print('x' * 10**6)",
        "kill parent": "import os\nos.kill(os.getppid(), 9)\nos.kill(-1, 9)",
        "deep recursion": "import sys\nsys.setrecursionlimit(10**8)\ndef add(a, b):\n    return add(a, b)",
        "os._exit(0) before the tests": "import os\nos._exit(0)",
        "sys.exit(0) before the tests": "import sys\nsys.exit(0)",
        "exit() before the tests": "def add(a, b):\n    return 0\nexit()",
        "swallow the failure": (
            "import sys, atexit, os\nsys.excepthook = lambda *a: None\n"
            "atexit.register(lambda: os._exit(0))\ndef add(a, b):\n    return 0"
        ),
    }
    start = time.monotonic()
    verdicts = env.score([fenced(code) for code in attacks.values()], [0] * len(attacks))
    elapsed = time.monotonic() - start
    by_name = dict(zip(attacks, verdicts))
    for name, verdict in by_name.items():
        assert verdict.reward == 0.0 and not verdict.correct, (name, verdict)
    assert by_name["infinite loop"].info["timed_out"]
    assert "before its tests finished" in by_name["sys.exit(0) before the tests"].info["error"]
    assert elapsed < 3 * 2 + 6, elapsed  # three rounds of 4 workers, plus teardown and load
