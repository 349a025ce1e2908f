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
DEFAULT_DATA = REPO.parent / "shared" / "data" / "benchmarks"


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


# The math section is added by its owner as bench_math.
SECTIONS = {"code": bench_code}


def print_table(rows: list[Row]) -> None:
    print(f"| section | workload | n | seconds | per second | notes |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.section} | {r.workload} | {r.n} | {r.seconds:.2f} | {r.per_second:.1f} | {r.notes} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="folder of the benchmark files")
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
