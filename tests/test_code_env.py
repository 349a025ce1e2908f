"""sfpo/Code-v0: code extraction, rewards, every HumanEval/MBPP reference, hostile completions."""

from __future__ import annotations

import time

import gymnasium as gym
import pytest

import sfpo_envs  # noqa: F401  (registers the ids)
from sfpo_envs.code_env import CodeEnv, build_run, continuation, defines, extract_code

from conftest import BENCHMARKS as BENCH, needs_bench, needs_namespaces
HUMANEVAL = BENCH / "humaneval.jsonl.gz"
MBPP = BENCH / "mbpp_sanitized_test.jsonl"

# The slowest reference (MBPP amicable_numbers_sum) needs about 4 CPU-seconds; on a busy
# 2-core machine that can take 10 s of wall clock.
REFERENCE_TIMEOUT_S = 30


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


def test_program_and_tests_are_separate_and_both_get_the_setup():
    example = {"setup_code": "import math\n", "test_code": "assert f() == 1\n"}
    program, tests = build_run("def f():\n    return 1", example)
    assert program.index("import math") < program.index("def f") and "assert" not in program
    assert tests.index("import math") < tests.index("assert f()") and "def f" not in tests


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
@pytest.mark.slow
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


# ----- forged rewards: a wrong `add` plus a trick must still score 0 -------------------
# Each attack defines a wrong add() and then tries to make the run look passed. Against
# the old design (tests and a per-run success token in the program's own process) the
# token readers, the trace-function jump and the frame/gc scans scored 1.0; see
# tests/test_sandbox.py for the same tricks against the judge process directly.

WRONG_ADD = "def add(a, b):\n    return 0\n"
# Claims success every way the program can reach: stdout, stderr, every fd it holds,
# any "done" token it found, then exit 0 at once.
_CLAIM = r'''
def _claim(found=()):
    import os, sys
    lines = [*found, '{"passed": true, "error": null}', "sfpo-tests-done-" + "0" * 32]
    data = ("\n" + "\n".join(lines) + "\n").encode()
    for fd in range(1024):
        try:
            os.write(fd, data)
        except OSError:
            pass
    os._exit(0)
'''
_TOKEN = r"sfpo-tests-done-[0-9a-f]{8,}"

FORGERIES = {
    "token read from open(__file__)": f"import re\n_claim(re.findall(r'{_TOKEN}', open(__file__).read()))",
    "token from the module's co_consts": (
        "import sys, re\nconsts = [c for c in sys._getframe().f_code.co_consts if isinstance(c, str)]\n"
        f"_claim([m for c in consts for m in re.findall(r'{_TOKEN}', c)])"
    ),
    "exec of the program's tail": (
        "src = open(__file__).read()\nat = src.rfind('import sys as _sfpo_sys')\n"
        "if at >= 0:\n    exec(src[at:])\n    import os; os._exit(0)\n_claim()"
    ),
    "inspect.getsource of __main__": (
        "import inspect, sys, re\n"
        f"_claim(re.findall(r'{_TOKEN}', inspect.getsource(sys.modules['__main__'])))"
    ),
    "sys._getframe walk": (
        "import sys, re\nfound, f = [], sys._getframe()\nwhile f is not None:\n"
        "    for v in [*f.f_code.co_consts, *f.f_globals.values(), *f.f_locals.values()]:\n"
        f"        found += re.findall(r'{_TOKEN}', str(v))\n    f = f.f_back\n_claim(found)"
    ),
    "gc.get_objects scan": (
        "import gc, re\nfound = []\nfor o in gc.get_objects():\n"
        "    if hasattr(o, '__code__'):\n        o = o.__code__.co_consts\n"
        "    for v in (o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()):\n"
        f"        if isinstance(v, str):\n            found += re.findall(r'{_TOKEN}', v)\n_claim(found)"
    ),
    "/proc/self/cmdline, fd and mem": (
        "import os, re\nfound = re.findall(r'sfpo-tests-done-[0-9a-f]+', open('/proc/self/cmdline', 'rb').read().decode('latin-1'))\n"
        "for fd in os.listdir('/proc/self/fd'):\n    try:\n        found += re.findall(r'sfpo-tests-done-[0-9a-f]+', open('/proc/self/fd/' + fd, 'rb').read(1 << 20).decode('latin-1'))\n"
        "    except OSError:\n        pass\n"
        "with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:\n"
        "    for line in maps:\n        lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
        "        if 'rw' not in line.split()[1] or hi - lo > 1 << 26:\n            continue\n"
        "        try:\n            mem.seek(lo)\n            chunk = mem.read(hi - lo).decode('latin-1')\n"
        "        except (OSError, ValueError, OverflowError):\n            continue\n"
        "        found += [m for m in re.findall(r'sfpo-tests-done-[0-9a-f]{32}', chunk) if m != 'sfpo-tests-done-' + '0' * 32]\n"
        "_claim(found)"
    ),
    "stdin": "import sys\n_claim([sys.stdin.read()])",
    "every process's cmdline, fds and tests": (
        "import os\nfound = []\nfor pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    for path in ('cmdline', 'environ'):\n        try:\n            found.append(open(f'/proc/{pid}/{path}', 'rb').read().decode('latin-1')[-200:])\n"
        "        except OSError:\n            pass\n    try:\n        fds = os.listdir(f'/proc/{pid}/fd')\n    except OSError:\n        fds = []\n"
        "    for fd in fds:\n        try:\n            with open(f'/proc/{pid}/fd/{fd}', 'w') as f:\n"
        "                f.write('{\"passed\": true, \"error\": null}\\n')\n        except OSError:\n            pass\n"
        "for path in ('/.sfpo/tests.py', '/.sfpo/calls', '/.sfpo/replies'):\n    try:\n        open(path, 'r+b')\n"
        "    except OSError:\n        pass\n_claim()"
    ),
    "thread racing the tests": (
        "import re, threading\nsteal = lambda: _claim(re.findall(r'" + _TOKEN + "', open(__file__).read()))\n"
        "threading.Thread(target=steal, daemon=True).start()\nimport time\ntime.sleep(0.05)"
    ),
    "settrace jump over the asserts": (
        "import sys, os\nlines = open(__file__).read().splitlines()\n"
        "end = next((i + 1 for i, l in enumerate(lines) if l.startswith('import sys as _sfpo')), None)\n"
        "def tracer(frame, event, arg):\n    if event == 'line' and end and frame.f_code.co_filename == __file__ and frame.f_lineno < end - 1 and 'assert' in lines[frame.f_lineno - 1]:\n"
        "        frame.f_lineno = end\n    return tracer\n"
        "sys._getframe().f_trace = tracer\nsys.settrace(tracer)\nif end is None:\n    _claim()"
    ),
    "audit hook": (
        "import sys, os\nsys.addaudithook(lambda event, args: os._exit(0) if event in ('exec', 'compile', 'open') else None)"
    ),
    "monkeypatched AssertionError, print, os.write, sys.exit": (
        "import builtins, os, sys\nbuiltins.AssertionError = type('Fine', (Exception,), {})\n"
        "builtins.print = lambda *a, **k: None\nsys.exit = lambda *a: os._exit(0)\n"
        "sys.excepthook = lambda *a: os._exit(0)\n_write = os.write\nos.write = lambda fd, b: len(b)"
    ),
    "exit 0 early": "import os\nos._exit(0)",
    "printing a fake token": "print('sfpo-tests-done-' + '0' * 32)\nprint('{\"passed\": true, \"error\": null}')",
    "atexit claims success": "import atexit\natexit.register(_claim)\nimport sys\nsys.exit(0)",
    "forked child claims and kills": (
        "import os, signal, time\nif os.fork() == 0:\n    for _ in range(100):\n"
        "        for pid in [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
        "            try:\n                os.kill(pid, signal.SIGKILL) if pid != os.getpid() else None\n            except OSError:\n                pass\n"
        "        time.sleep(0.01)\n    _claim()"
    ),
    "returns an object equal to everything": (
        "class Yes:\n    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n"
        "    __bool__ = lambda self: True\n    __hash__ = lambda self: 0\n"
        "def add(a, b):\n    return Yes()"
    ),
    "returns an int subclass equal to everything": (
        "class Yes(int):\n    __eq__ = lambda self, other: True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Yes(0)"
    ),
    "raises StopIteration to end a loop": "def add(a, b):\n    raise StopIteration",
}


def _forgery(body: str) -> str:
    return fenced(WRONG_ADD + _CLAIM + body)


@needs_namespaces
def test_forged_success_scores_zero():
    """Every trick above, with a wrong add(): reward 0. add(1, 2) == 3 is the whole test."""
    env = CodeEnv(data=TOY, timeout_s=3, isolation="namespaces", max_workers=4)
    verdicts = env.score([_forgery(body) for body in FORGERIES.values()], [0] * len(FORGERIES))
    forged = {name: v.info for name, v in zip(FORGERIES, verdicts) if v.reward != 0.0 or v.correct}
    assert not forged, f"forged a passing reward: {forged}"
    # And the same programs with a *right* add() still pass where the trick leaves the
    # program alive (the judge is not fooled into failing honest code either).
    right = fenced("def add(a, b):\n    return a + b\n" + _CLAIM + "import sys\nsys.settrace(lambda *a: None)")
    assert env.score([right], [0])[0].reward == 1.0


# A HumanEval-shaped task: the prompt is code with a helper the tests use.
HELPER_TASK = [{
    "question": 'def double(x):\n    return 2 * x\n\n\ndef add(a, b):\n    """Return a + b."""\n',
    "test_code": "assert abs(add(1, 2) - 3) < 1e-9\nassert double(add(1, 1)) == 4\n",
    "entry_point": "add",
}]


@needs_namespaces
def test_program_cannot_redefine_helpers_or_builtins_the_tests_use():
    env = CodeEnv(data=HELPER_TASK, timeout_s=5, isolation="namespaces")
    cheats = [
        "def add(a, b):\n    return 0\nabs = lambda x: 0\ndef double(x):\n    return 4\n",
        "import builtins\nbuiltins.abs = lambda x: 0\ndef add(a, b):\n    return 0\n",
    ]
    verdicts = env.score([fenced(c) for c in cheats], [0, 0])
    assert [v.reward for v in verdicts] == [0.0, 0.0], verdicts
    honest = fenced("def add(a, b):\n    return a + b\n")
    assert env.score([honest], [0])[0].reward == 1.0


def test_continuation_and_entry_point_detection():
    prompt = HELPER_TASK[0]["question"]
    body = "    return a + b\n\n\ndef unrelated():\n    pass\n\nif __name__ == '__main__':\n    print(add(1, 2))\n"
    assert continuation(prompt, body) == prompt + "    return a + b\n\n"  # cut at "\ndef"
    assert continuation(prompt, "    return a + b") == prompt + "    return a + b"
    assert defines("import os\nasync def add(a, b):\n    pass", "add")
    assert defines("class add:\n    pass", "add") and defines("add = lambda a, b: a + b", "add")
    assert not defines("def adder(a, b):\n    pass\nx = add(1, 2)", "add") and not defines("x = 1", None)


def test_completion_mode_is_validated_in_one_line():
    with pytest.raises(ValueError, match=r"`completion_mode` \('whole'\) must be one of full, continue, auto"):
        CodeEnv(data=TOY, completion_mode="whole")
    with pytest.raises(ValueError, match=r"`completion_mode` \('continue'\) needs prompts that are Python code declaring the entry point.*row 1 of"):
        CodeEnv(data=TOY, completion_mode="continue")  # a prose prompt cannot be continued
    assert CodeEnv(data=HELPER_TASK, completion_mode="continue").prompt(0) == HELPER_TASK[0]["question"]
    assert "```python" in CodeEnv(data=HELPER_TASK, completion_mode="auto").prompt(0)


@needs_namespaces
def test_completion_modes_score_base_model_continuations():
    body = "    return a + b\n\n\ndef unrelated():\n    pass\n"
    full_solution = fenced("def add(a, b):\n    return a + b\n")
    cont = CodeEnv(data=HELPER_TASK, timeout_s=5, completion_mode="continue", isolation="namespaces")
    auto = CodeEnv(data=HELPER_TASK, timeout_s=5, completion_mode="auto", isolation="namespaces")
    full = CodeEnv(data=HELPER_TASK, timeout_s=5, completion_mode="full", isolation="namespaces")
    (c_ok, c_wrong), (a_body, a_full, a_wrong), (f_body,) = (
        cont.score([body, "    return a - b\n"], [0, 0]),
        auto.score([body, full_solution, fenced("def add(a, b):\n    return a - b\n")], [0, 0, 0]),
        full.score([body], [0]),
    )
    assert c_ok.reward == 1.0 and c_ok.info["extracted"] == "continuation", c_ok
    assert c_wrong.reward == 0.0 and c_wrong.info["error"] == "AssertionError", c_wrong
    assert a_body.reward == 1.0 and a_body.info["extracted"] == "continuation", a_body
    assert a_full.reward == 1.0 and a_full.info["extracted"] == "python_block", a_full
    assert a_wrong.reward == 0.0 and a_wrong.info["extracted"] == "python_block", a_wrong
    assert f_body.reward == 0.0  # "full" runs the bare body: the HumanEval protocol needs "continue"


@needs_bench
def test_humaneval_references_pass_as_continuations():
    env = CodeEnv(data=str(HUMANEVAL), split="test", timeout_s=REFERENCE_TIMEOUT_S, completion_mode="continue")
    indices = list(range(0, len(env), 16))  # every 16th: the full set runs in "full" mode above
    bodies = [env.examples[i]["reference"][len(env.examples[i]["question"]):] for i in indices]
    verdicts = env.score(bodies, indices)
    failed = [env.examples[i]["entry_point"] for i, v in zip(indices, verdicts) if not v.correct]
    assert not failed, failed
