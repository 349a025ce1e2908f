"""Verifier throughput: how many completions per second each environment can score.

    python benchmarks/verifiers.py                 # every section
    python benchmarks/verifiers.py --sections code --workers 2

Each section is one function ``bench_<name>(args) -> list[Row]`` listed in ``SECTIONS``;
``main()`` runs the chosen ones and prints one markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The public benchmark files: $SFPO_BENCHMARKS, as for the tests (docs/development.md).
DEFAULT_DATA = os.environ.get("SFPO_BENCHMARKS") or str(REPO.parent / "shared" / "data" / "benchmarks")


@dataclass
class Row:
    section: str
    workload: str
    n: int
    seconds: float
    notes: str = ""

    @property
    def per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


def bench_code(args: argparse.Namespace) -> list[Row]:
    """Code executions per second: HumanEval reference solutions through sfpo/Code-v0."""
    from sfpo_envs.code_env import CodeEnv

    env = CodeEnv(data=str(Path(args.data_dir) / "humaneval.jsonl.gz"), split="test",
                  max_workers=args.workers, timeout_s=30)
    isolation = env.sandbox.isolation  # probe once, outside the timing
    notes = f"pool of {args.workers}, isolation={isolation}"
    rows = []
    trivial = ["```python\npass\n```"] * len(env)
    for workload, completions in (
        ("HumanEval references (164, tests included)", [f"```python\n{e['reference']}\n```" for e in env.examples]),
        ("`pass` (sandbox overhead only)", trivial),
    ):
        best = None
        for _ in range(args.repeats):
            start = time.perf_counter()
            verdicts = env.score(completions, range(len(env)))
            elapsed = time.perf_counter() - start
            best = elapsed if best is None else min(best, elapsed)
        if workload.startswith("HumanEval"):
            passed = sum(v.correct for v in verdicts)
            workload_notes = f"{notes}, {passed}/{len(env)} passed"
        else:
            workload_notes = notes
        rows.append(Row("code", workload, len(env), best, workload_notes))
    return rows


def bench_math(args: argparse.Namespace) -> list[Row]:
    """Math verifications per second on Math-500: correct and wrong answers through sfpo/Math-v0.

    "fresh pool" rows use new workers (started before the clock), so every gold answer is
    parsed once, as in a first epoch; "second pass" repeats the batch on the same workers
    (golds cached, as when G completions share a prompt). Best of --repeats. The in-process
    row is math-verify alone in one process, without the pool or a timeout.
    """
    import logging

    from sfpo_envs.datasets import load_examples
    from sfpo_envs.math_env import MathEnv
    from sfpo_envs.math_verifier import check_answer

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    data = str(Path(args.data_dir) / "math500_test.jsonl")
    golds = [e["answer"] for e in load_examples(data, layout="math").examples]
    correct = [f"Let me think. So the answer is \\boxed{{{g}}}." for g in golds]
    # Another problem's gold: a realistic wrong answer (a few coincide with the right one).
    wrong = [f"Let me think. So the answer is \\boxed{{{g}}}." for g in golds[1:] + golds[:1]]
    indices = list(range(len(golds)))
    rows = []

    def timed(env: MathEnv, completions: list[str]) -> tuple[float, int]:
        start = time.perf_counter()
        verdicts = env.score(completions, indices)
        return time.perf_counter() - start, sum(v.correct for v in verdicts)

    for workload, completions in (("gold answers", correct), ("wrong answers", wrong)):
        fresh = second = float("inf")
        for _ in range(args.repeats):
            env = MathEnv(data=data, split="test", num_workers=args.workers, timeout_s=10.0)
            try:
                env.score(["\\boxed{1}"] * args.workers, [0] * args.workers)  # start the workers
                seconds, right = timed(env, completions)
                fresh = min(fresh, seconds)
                second = min(second, timed(env, completions)[0])
                timeouts = env.verifier.stats["timed_out"]
            finally:
                env.close()
        notes = f"pool of {args.workers}, timeout 10 s, {timeouts} timed out"
        rows.append(Row("math", f"Math-500 {workload}, fresh pool", len(golds), fresh,
                        f"{notes}, {right}/{len(golds)} scored 1"))
        rows.append(Row("math", f"Math-500 {workload}, second pass", len(golds), second,
                        f"{notes}, golds cached in the workers"))
    start = time.perf_counter()
    right = sum(check_answer(c, g)[0] for c, g in zip(correct, golds))
    rows.append(Row("math", "Math-500 gold answers, in-process", len(golds), time.perf_counter() - start,
                    f"math-verify alone, one process, no timeout, {right}/{len(golds)} scored 1"))
    return rows


SECTIONS = {"math": bench_math, "code": bench_code}


def print_table(rows: list[Row]) -> None:
    print(f"| section | workload | n | seconds | per second | notes |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.section} | {r.workload} | {r.n} | {r.seconds:.2f} | {r.per_second:.1f} | {r.notes} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--data-dir", default=DEFAULT_DATA, help="folder of the benchmark files (default: $SFPO_BENCHMARKS)")
    parser.add_argument("--workers", type=int, default=2, help="verifier pool size")
    parser.add_argument("--repeats", type=int, default=2, help="runs per workload (best is shown)")
    args = parser.parse_args(argv)
    if not Path(args.data_dir).is_dir():
        raise SystemExit(
            f"--data-dir ({args.data_dir}) is not a folder; point it at the benchmark files "
            "(humaneval.jsonl.gz, ...)."
        )
    rows = [row for name in args.sections for row in SECTIONS[name](args)]
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print_table(rows)


if __name__ == "__main__":
    main()
