"""Math answer checking with Hugging Face ``math_verify``, under a hard per-call timeout.

``check_answer(completion, gold)`` is the check itself: it extracts the completion's final
answer (its ``\\boxed{...}`` first, then "the (final) answer is ..."; numbers elsewhere in
the reasoning are not taken) and asks ``math_verify.verify`` whether it equals the gold
answer (fractions vs decimals, radicals, intervals, tuples and sets, degrees, percentages,
``\\text{}`` answers, 27.0 vs 27). As in math-verify, several boxes are read together as
one list: ``\\boxed{69} and \\boxed{84}`` matches gold "69, 84", and a hedge such as
``\\boxed{3}, or \\boxed{4}`` does not match gold "4".

``MathVerifier`` runs that check in a small pool of worker processes. math-verify's own
timeout uses SIGALRM, which only works on the main thread (not in a trainer's threads or
every Ray actor), so it is switched off here and the deadline is enforced from outside: a
worker that overruns is killed and replaced, never reused, and the call scores 0 with
``timed_out=True``. Workers are plain ``python this_file.py --worker`` subprocesses (not
``multiprocessing``), so they work from any thread and never re-import the user's
``__main__``. Call ``close()`` (or use ``with``); they are also stopped when the verifier is
garbage-collected or the interpreter exits, an idle worker exits when its parent dies, and
a busy one is stopped by a CPU-time limit just past its deadline.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.connection import Connection, Pipe, wait
from typing import Sequence

STARTUP_TIMEOUT_S = 120.0  # a worker imports sympy; a busy machine can take a while


@dataclass(frozen=True)
class MathCheck:
    """The outcome of checking one completion."""

    correct: bool
    extracted: str | None  # the completion's answer as math-verify read it; None: none found
    gold: str
    timed_out: bool = False
    error: str | None = None  # the worker crashed (e.g. ran out of memory)


# ----- the check itself (runs inside a worker) ----------------------------------------


@lru_cache(maxsize=1)
def _configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    gold = [LatexExtractionConfig(), ExprExtractionConfig()]
    # A completion must state its answer: \boxed{} wins, else "answer is ..."; no stray numbers.
    completion = [
        LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
        ExprExtractionConfig(try_extract_without_anchor=False),
    ]
    return gold, completion


@lru_cache(maxsize=4096)
def parse_gold(gold: str) -> list:
    """Gold answers come bare ('10', '\\frac{14}{3}', '\\text{(C)}'); box them to parse as LaTeX."""
    from math_verify import parse

    gold_config, _ = _configs()
    text = gold if "\\boxed" in gold else f"\\boxed{{{gold}}}"
    return parse(text, gold_config, parsing_timeout=None)


def check_answer(completion: str, gold: str) -> tuple[bool, str | None]:
    """(correct, extracted answer) in this process, with no timeout: use ``MathVerifier``."""
    from math_verify import parse, verify

    _, completion_config = _configs()
    predicted = parse(completion, completion_config, parsing_timeout=None)
    # parse() returns [sympy object, matched string]; the string is safe to send back
    # (str() of a huge sympy object can itself hang).
    if not predicted:
        return False, None
    extracted = next((p for p in reversed(predicted) if isinstance(p, str)), None)
    return bool(verify(parse_gold(gold), predicted, timeout_seconds=None)), extracted


def _worker_main(fd: int, memory_limit_mb: int, timeout_s: float) -> None:
    """Serve (completion, gold) checks on ``fd`` until the parent closes it."""
    import resource
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_limit_mb > 0:
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" notes
    conn = Connection(fd)
    _configs()
    import math_verify  # noqa: F401  (import before "ready": startup is not check time)

    conn.send(("ready", os.getpid()))
    while True:
        try:
            completion, gold = conn.recv()
        except (EOFError, OSError):
            return
        # Safety net should the parent die mid-check (it kills us at timeout_s): the kernel
        # stops a check that burns past its deadline in CPU time (SIGXCPU; CPU <= wall time).
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        soft = int(used + timeout_s) + 2
        if cpu_hard == resource.RLIM_INFINITY or soft <= cpu_hard:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
        try:
            conn.send(("ok", *check_answer(completion, gold)))
        except MemoryError:
            conn.send(("error", "MemoryError: the answer needs more than the worker's memory limit"))
        except Exception as err:  # math_verify catches most of its own; report the rest
            conn.send(("error", f"{type(err).__name__}: {str(err)[:200]}"))


# ----- the pool (runs in the caller) --------------------------------------------------


class _Worker:
    def __init__(self, memory_limit_mb: int, timeout_s: float):
        parent, child = Pipe(duplex=True)
        args = ["--worker", str(child.fileno()), str(memory_limit_mb), str(timeout_s)]
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *args],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        child.close()
        self.conn = parent
        self.ready = False
        self.started = time.monotonic()

    def kill(self) -> None:
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.kill()
    workers.clear()


class MathVerifier:
    """Check completions against gold answers in worker processes, each call under a deadline.

    Args:
        timeout_s: seconds one check (parse + compare) may take; over it, the worker is
            killed and the check scores 0 with ``timed_out=True``.
        num_workers: worker processes (default: CPU count, at most 4). Started on first use.
        memory_limit_mb: address-space limit of each worker (0: none), so that an answer
            such as ``10^{10^{10}}`` cannot take the machine's memory before its deadline.

    ``stats`` counts checks, correct answers, timeouts, crashes and replaced workers.
    """

    def __init__(
        self,
        timeout_s: float = 5.0,
        num_workers: int | None = None,
        memory_limit_mb: int = 2048,
    ):
        if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or not timeout_s > 0:
            raise ValueError(
                f"`timeout_s` ({timeout_s!r}) must be a positive number of seconds: the most one "
                "answer check may take before it scores 0."
            )
        if num_workers is None:
            num_workers = max(1, min(4, os.cpu_count() or 1))
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
            raise ValueError(f"`num_workers` ({num_workers!r}) must be an int >= 1 (worker processes).")
        if not isinstance(memory_limit_mb, int) or memory_limit_mb < 0:
            raise ValueError(f"`memory_limit_mb` ({memory_limit_mb!r}) must be an int >= 0 (0: no limit).")
        self.timeout_s = float(timeout_s)
        self.num_workers = num_workers
        self.memory_limit_mb = memory_limit_mb
        self.stats = {"checks": 0, "correct": 0, "timed_out": 0, "errors": 0, "workers_replaced": 0}
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        # Stop the workers when this object is collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    # ----- public API ---------------------------------------------------------------
    def check(self, completion: str, gold: str) -> MathCheck:
        return self.check_many([completion], [gold])[0]

    def check_many(self, completions: Sequence[str], golds: Sequence[str]) -> list[MathCheck]:
        """Check ``completions[i]`` against ``golds[i]``, spread over the workers."""
        if len(completions) != len(golds):
            raise ValueError(
                f"check_many() got {len(completions)} completions and {len(golds)} gold answers; "
                "pass one gold answer per completion."
            )
        for value in (*completions, *golds):
            if not isinstance(value, str):
                raise TypeError(f"completions and gold answers must be str, got {type(value).__name__}.")
        with self._lock:
            if self._closed:
                raise RuntimeError("This MathVerifier was closed; make a new one.")
            results = self._run(list(completions), list(golds))
            self.stats["checks"] += len(results)
            self.stats["correct"] += sum(r.correct for r in results)
            self.stats["timed_out"] += sum(r.timed_out for r in results)
            self.stats["errors"] += sum(r.error is not None for r in results)
        return results

    def close(self) -> None:
        """Stop every worker process (safe to call twice)."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    # ----- scheduling ---------------------------------------------------------------
    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self.memory_limit_mb, self.timeout_s)
        self.stats["workers_replaced"] += 1

    def _run(self, completions: list[str], golds: list[str]) -> list[MathCheck]:
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self.memory_limit_mb, self.timeout_s))
        results: list[MathCheck | None] = [None] * len(completions)
        todo = deque(range(len(completions)))
        busy: dict[_Worker, tuple[int, float]] = {}  # worker -> (task, deadline)
        try:
            self._schedule(completions, golds, results, todo, busy)
        except BaseException:
            # Interrupted mid-batch: a busy worker's late answer must not reach the next call.
            for worker in busy:
                worker.kill()
                if worker in self._workers:
                    self._workers.remove(worker)
            raise
        return results  # type: ignore[return-value]

    def _schedule(self, completions, golds, results, todo, busy) -> None:
        while todo or busy:
            for worker in self._workers:
                if todo and worker.ready and worker not in busy:
                    try:
                        worker.conn.send((completions[todo[0]], golds[todo[0]]))
                    except OSError:  # it died while idle (e.g. killed from outside)
                        self._replace(worker)
                        continue
                    busy[worker] = (todo.popleft(), time.monotonic() + self.timeout_s)
            waiting = [w for w in self._workers if w in busy or not w.ready]
            now = time.monotonic()
            next_deadline = min((d for _, d in busy.values()), default=now + 1.0)
            for conn in wait([w.conn for w in waiting], timeout=max(0.0, next_deadline - now)):
                worker = next(w for w in self._workers if w.conn is conn)
                self._receive(worker, busy, results, golds)
            now = time.monotonic()
            for worker, (task, deadline) in list(busy.items()):
                if now >= deadline:
                    del busy[worker]
                    results[task] = MathCheck(False, None, golds[task], timed_out=True)
                    self._replace(worker)
            for worker in list(self._workers):
                if not worker.ready and now - worker.started > STARTUP_TIMEOUT_S:
                    _stop_all(self._workers)
                    raise RuntimeError(
                        f"A math-verify worker did not start within {STARTUP_TIMEOUT_S:.0f} s "
                        f"({sys.executable}). Check that math-verify imports in that interpreter."
                    )

    def _receive(self, worker: _Worker, busy: dict, results: list, golds: list[str]) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            message = None
        if message is None:  # the worker died: a crash in a check, while idle, or at start
            code = worker.proc.wait()
            if worker in busy:
                task, _ = busy.pop(worker)
                results[task] = MathCheck(False, None, golds[task], error=f"worker exited with code {code}")
            if worker.ready:  # it had started: replace it and go on
                self._replace(worker)
                return
            _stop_all(self._workers)
            raise RuntimeError(
                f"A math-verify worker exited with code {code} while starting ({sys.executable} "
                f"{os.path.abspath(__file__)} --worker). Run `python -c 'import math_verify'` in "
                "that interpreter to see why (is math-verify[antlr4-13-2] installed?)."
            )
        if message[0] == "ready":
            worker.ready = True
            return
        task, _ = busy.pop(worker)
        if message[0] == "ok":
            results[task] = MathCheck(bool(message[1]), message[2], golds[task])
        else:
            results[task] = MathCheck(False, None, golds[task], error=message[1])


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    _worker_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
