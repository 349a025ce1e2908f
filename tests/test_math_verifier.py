"""The math verifier: gold answers across the benchmarks, equivalences, timeouts, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sfpo_envs.datasets import load_examples
from sfpo_envs.math_verifier import MathVerifier, check_answer

from conftest import BENCHMARKS as BENCH, needs_bench
MATH_BENCHMARKS = [
    "math500_test.jsonl",
    "aime24_test.jsonl",
    "aime25_test.jsonl",
    "amc23_test.jsonl",
    "minerva_math_test.jsonl",
    "olympiadbench_test.jsonl",
    "gsm8k_test.jsonl",
]
# Without a timeout this keeps sympy busy for minutes (verified in test_hang_is_real).
HANG = "\\boxed{9^{9^{9^{9^{9}}}}}"


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout_s=10.0, num_workers=2)
    yield v
    v.close()


@pytest.fixture(scope="module")
def quick():
    """One worker and a 1 s deadline, shared by the timeout tests (a worker start costs ~1 s)."""
    v = MathVerifier(timeout_s=1.0, num_workers=1)
    yield v
    v.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stated(answer: str) -> str:
    return (
        "Let me work through this. First $x = 2$, so $2x + 1 = 5$ and the rest follows.\n"
        f"So the answer is \\boxed{{{answer}}}."
    )


@needs_bench
@pytest.mark.slow
def test_gold_answer_scores_1_on_99_percent_of_benchmark_problems(verifier):
    examples = [e for name in MATH_BENCHMARKS for e in load_examples(BENCH / name).examples]
    assert len(examples) == 2866
    start = time.perf_counter()
    checks = verifier.check_many([stated(e["answer"]) for e in examples], [e["answer"] for e in examples])
    seconds = time.perf_counter() - start
    failures = [(e, c) for e, c in zip(examples, checks) if not c.correct]
    for example, check in failures:
        why = "timed out" if check.timed_out else check.error or f"extracted {check.extracted!r}"
        print(f"FAIL {example['source']} row {example['row']}: gold {example['answer']!r}: {why}")
    print(f"{len(examples) - len(failures)}/{len(examples)} scored 1 in {seconds:.1f} s")
    assert len(failures) <= 0.01 * len(examples)


@needs_bench
def test_wrong_numeric_answer_scores_0(verifier):
    examples = [e for name in MATH_BENCHMARKS for e in load_examples(BENCH / name).examples[::10]]
    numeric = []
    for e in examples:
        try:
            numeric.append((e, float(e["answer"])))
        except ValueError:
            continue
    assert len(numeric) > 200
    wrong = [stated(f"{value + 1:g}") for _, value in numeric]
    checks = verifier.check_many(wrong, [e["answer"] for e, _ in numeric])
    right = [(e["source"], e["row"], e["answer"], c.extracted) for (e, _), c in zip(numeric, checks) if c.correct]
    assert right == []
    assert all(c.extracted is not None for c in checks)


EQUIVALENT = [
    ("\\frac{1}{2}", "\\boxed{0.5}"),
    ("0.5", "\\boxed{\\frac12}"),
    ("\\frac{14}{3}", "\\boxed{14/3}"),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}"),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{1}{2}\\sqrt{3}}"),
    ("(3, \\frac{\\pi}{2})", "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"),
    ("[2,5)", "\\boxed{[2, 5)}"),
    ("(-\\infty, 0) \\cup\\{1\\}", "\\boxed{(-\\infty,0)\\cup\\{1\\}}"),
    ("(1,8,19), (2,7,13)", "\\boxed{(2,7,13),(1,8,19)}"),
    ("1,3,5", "\\boxed{5, 3, 1}"),
    ("90^\\circ", "\\boxed{90}"),
    ("90", "\\boxed{90^{\\circ}}"),
    ("\\text{(C)}", "\\boxed{\\text{(C)}}"),
    ("\\text{(C)}", "\\boxed{C}"),
    ("\\text{Monday}", "\\boxed{\\text{Monday}}"),
    ("27", "\\boxed{27.0}"),  # amc23 stores 27.0
    ("27.0", "\\boxed{27}"),
    ("025", "\\boxed{25}"),  # aime24 writes 025
    ("1000", "\\boxed{1,000}"),
    ("x^2+1", "\\boxed{1+x^2}"),
    ("5", "\\boxed{x = 5}"),
    ("50\\%", "\\boxed{50}"),
    ("18", "\\boxed{\\$18}"),
    ("1.6", "\\boxed{1.6 \\mathrm{~cm}}"),
    ("18", "The answer is 18."),
    ("\\frac{1}{2}", "Final answer: $\\frac{1}{2}$"),
    ("5", "The final answer is $5$. I hope it is correct."),
    ("69, 84", "So $x = 69$ or $x = 84$: \\boxed{69} and \\boxed{84}."),  # every box is read
]

DIFFERENT = [
    ("\\frac{1}{2}", "\\boxed{0.6}"),
    ("[2,5)", "\\boxed{(2,5)}"),
    ("(1,2,3)", "\\boxed{(3,2,1)}"),
    ("\\text{(C)}", "\\boxed{\\text{(D)}}"),
    ("27", "\\boxed{28}"),
    ("x^2+1", "\\boxed{x^2-1}"),
    ("4", "Maybe \\boxed{3}, or \\boxed{4}."),  # hedging: the boxes read as the set {3, 4}
]


@pytest.mark.parametrize("gold, completion", EQUIVALENT)
def test_equivalent_answers(gold, completion):
    assert check_answer(completion, gold)[0], (gold, completion)


@pytest.mark.parametrize("gold, completion", DIFFERENT)
def test_different_answers(gold, completion):
    correct, extracted = check_answer(completion, gold)
    assert not correct and extracted is not None


def test_no_answer_is_not_extracted():
    # No \boxed{} and no "answer": stray numbers in the reasoning are not taken as the answer.
    assert check_answer("I computed 2+3 = 5 and stopped there, it's 5", "5") == (False, None)
    assert check_answer("", "5") == (False, None)


def test_batch_order_and_stats(verifier):
    before = dict(verifier.stats)
    golds = [str(i) for i in range(20)]
    completions = [f"\\boxed{{{i if i % 3 else i + 1}}}" for i in range(20)]
    checks = verifier.check_many(completions, golds)
    assert [c.correct for c in checks] == [i % 3 != 0 for i in range(20)]
    assert [c.gold for c in checks] == golds
    assert verifier.stats["checks"] - before["checks"] == 20
    assert verifier.stats["correct"] - before["correct"] == 13
    assert verifier.stats["timed_out"] == before["timed_out"]
    with pytest.raises(ValueError, match="one gold answer per completion"):
        verifier.check_many(["\\boxed{1}"], [])


def test_bad_settings():
    with pytest.raises(ValueError, match=r"`timeout_s` \(0\) must be a positive number"):
        MathVerifier(timeout_s=0)
    with pytest.raises(ValueError, match=r"`num_workers` \(0\) must be an int >= 1"):
        MathVerifier(num_workers=0)


# ----- timeouts -----------------------------------------------------------------------

HANG_SCRIPT = """
import sys
from math_verify import parse, verify
gold = parse("\\\\boxed{1}", parsing_timeout=None)
answer = parse(sys.argv[1], parsing_timeout=None)
verify(gold, answer, timeout_seconds=None)
"""


def test_hang_is_real():
    """Without a timeout, math-verify on HANG is still busy after 3 s (sympy evaluates the tower)."""
    proc = subprocess.Popen([sys.executable, "-c", HANG_SCRIPT, HANG], stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
    finally:
        proc.kill()
        proc.wait()


def test_timeout_scores_0_and_replaces_the_worker(quick):
    assert quick.check("\\boxed{2}", "2").correct  # starts the worker
    old_pid = quick.worker_pids[0]
    before = dict(quick.stats)
    start = time.monotonic()
    check = quick.check(HANG, "1")
    took = time.monotonic() - start
    assert check.timed_out and not check.correct and check.extracted is None
    assert took < 3.0, took
    assert quick.stats["timed_out"] == before["timed_out"] + 1
    assert quick.stats["workers_replaced"] == before["workers_replaced"] + 1
    assert not alive(old_pid) and quick.worker_pids[0] != old_pid
    # The pool keeps working, and a batch with a hang in it loses only that one.
    checks = quick.check_many(["\\boxed{1}", HANG, "\\boxed{3}"], ["1", "1", "3"])
    assert [(c.correct, c.timed_out) for c in checks] == [(True, False), (False, True), (True, False)]


def test_timeout_off_the_main_thread(quick):
    results = {}

    def run():
        start = time.monotonic()
        results["check"] = quick.check(HANG, "1")
        results["took"] = time.monotonic() - start
        results["ok"] = quick.check("\\boxed{\\frac{1}{2}}", "0.5")

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert results["check"].timed_out and results["took"] < 5.0
    assert results["ok"].correct


def test_a_crashed_worker_scores_0_with_the_reason():
    with MathVerifier(timeout_s=20.0, num_workers=1) as v:
        v.check("\\boxed{1}", "1")
        pid = v.worker_pids[0]
        threading.Timer(0.5, os.kill, (pid, 9)).start()
        check = v.check(HANG, "1")
        assert not check.correct and not check.timed_out
        assert check.error == "worker exited with code -9"
        assert v.check("\\boxed{1}", "1").correct


def test_close_stops_every_worker():
    v = MathVerifier(timeout_s=5.0, num_workers=2)
    v.check_many(["\\boxed{1}", "\\boxed{2}"], ["1", "2"])
    pids = v.worker_pids
    assert len(pids) == 2 and all(alive(p) for p in pids)
    v.close()
    v.close()  # twice is fine
    assert not any(alive(p) for p in pids)
    with pytest.raises(RuntimeError, match="closed"):
        v.check("\\boxed{1}", "1")


def test_a_worker_killed_while_idle_is_replaced():
    with MathVerifier(timeout_s=10.0, num_workers=1) as v:
        v.check("\\boxed{1}", "1")
        pid = v.worker_pids[0]
        os.kill(pid, 9)
        time.sleep(0.2)
        assert v.check("\\boxed{2}", "2").correct
        assert v.worker_pids[0] != pid and v.stats["workers_replaced"] == 1


def test_an_orphaned_worker_stops_itself():
    """A worker stuck in a check whose parent is gone dies of its CPU limit (timeout + 2 s)."""
    from multiprocessing.connection import Pipe

    parent, child = Pipe()
    script = Path(__file__).resolve().parents[1] / "envs" / "math_verifier.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--worker", str(child.fileno()), "0", "0.1"],
        pass_fds=(child.fileno(),),
    )
    child.close()
    try:
        assert parent.poll(60) and parent.recv()[0] == "ready"
        parent.send((HANG, "1"))
        parent.close()  # the parent is gone; nobody will kill the worker
        assert proc.wait(timeout=30) == -24  # SIGXCPU after ~2 s of CPU
    finally:
        proc.kill()
        proc.wait()
