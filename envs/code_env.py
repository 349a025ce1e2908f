"""``sfpo/Code-v0``: Python programming problems, rewarded by running the tests.

>>> env = gymnasium.make("sfpo/Code-v0", data="humaneval.jsonl.gz", split="test")
>>> prompt, info = env.reset(options={"index": 0})
>>> _, reward, terminated, truncated, info = env.step("```python\\ndef f(): ...\\n```")
>>> info  # {'index': 0, 'correct': False, 'extracted': 'python_block', 'passed': False,
...       #  'timed_out': False, 'error': 'NameError: ...', 'duration_s': 0.15, ...}

Rows are read by ``sfpo_envs.datasets.load_examples`` (HumanEval and MBPP layouts, our own
code schema, or ``columns=``). The code is taken from the completion (the last ```python
block, else the last ``` block, else an unclosed block, else the whole text) and run as

    setup_code + code + test_code

in ``sfpo_envs.sandbox.Sandbox`` (a jail per run, ``max_workers`` at once). The test code
exits nonzero when the code is wrong. A run passes when it exits 0 *and* printed a random
per-run token that a line after the tests writes: code that ends the process early
(``sys.exit(0)``, ``os._exit(0)``) before the tests ran does not pass.

Reward: 1.0 when the program exits 0 within the limits; ``format_score`` when the code came
from a fenced block but failed (the policy followed the format); 0.0 otherwise (no fenced
block, no code, timeout or crash without a block).
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Mapping, Sequence

from sfpo_envs.base import Verdict, VerifierEnv
from sfpo_envs.datasets import load_examples
from sfpo_envs.sandbox import RunResult, Sandbox
from sfpo_envs.templates import render, resolve_template

_FENCED = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
_UNCLOSED = re.compile(r"```([^\n`]*)\n((?:(?!```).)*)\Z", re.DOTALL)
_PYTHON_TAGS = {"python", "python3", "py"}


def extract_code(completion: str) -> tuple[str | None, str | None]:
    """``(code, where)``: where is "python_block", "block", "unclosed_block" or "raw".

    ``(None, None)`` when there is nothing but whitespace.
    """
    blocks = _FENCED.findall(completion)
    python = [body for tag, body in blocks if tag.strip().lower() in _PYTHON_TAGS]
    if python:
        code, where = python[-1], "python_block"
    elif blocks:
        code, where = blocks[-1][1], "block"
    elif (unclosed := _UNCLOSED.search(completion)) is not None:
        # Generation stopped at the token limit inside the block.
        code, where = unclosed.group(2), "unclosed_block"
    else:
        code, where = completion, "raw"
    if not code.strip():
        return None, None
    return code, where


_DONE = "sfpo-tests-done-"


def build_program(code: str, example: Mapping[str, Any], token: str | None = None) -> str:
    """The program the sandbox runs: imports the task assumes, the code, then its tests.

    With ``token``, a last line prints it: seeing it proves the tests ran to the end.
    """
    program = f"{example.get('setup_code') or ''}\n{code}\n\n{example['test_code']}"
    if token is not None:
        program += f"\nimport sys as _sfpo_sys\n_sfpo_sys.stdout.write('\\n{_DONE}{token}\\n')\n_sfpo_sys.stdout.flush()\n"
    return program


class CodeEnv(VerifierEnv):
    """``sfpo/Code-v0``: one programming problem per episode, reward from its tests.

    Args:
        data: path (.jsonl, .jsonl.gz, .json, .parquet, or a directory with
            ``{split}.jsonl``), ``"hf:org/name"``, or a list of dicts.
        split: which split of a directory or hub dataset (a single file is read whole,
            unless ``split_fraction`` carves it).
        split_fraction: hold out about this share of the rows (by a hash of the question,
            seeded by ``split_seed``) as the "test" split; the rest is "train". Use it to
            train and test on one file; None reads the data as it is.
        split_seed: which rows the carve holds out (the same seed, the same rows).
        prompt_template: "code" (default) or a string with ``{question}``.
        layout: "auto" (detect from the columns), "humaneval", "mbpp" or "code".
        columns: map our field names to yours, e.g. ``{"question": "problem"}``.
        on_bad_row: "error" (raise, naming file and row) or "skip" (log and count them).
        format_score: reward for code from a fenced block that fails its tests.
        timeout_s: wall-clock seconds per run (tests included); past it the reward is 0.
        max_workers: programs run at once by ``verify_batch``.
        memory_mb: address-space limit per process of a run.
        isolation: "auto" or a mode the sandbox must provide (see ``sandbox.ISOLATION_MODES``).
    """

    def __init__(
        self,
        data: Any = None,
        split: str = "train",
        prompt_template: str = "code",
        *,
        layout: str = "auto",
        columns: Mapping[str, str] | None = None,
        on_bad_row: str = "error",
        split_fraction: float | None = None,
        split_seed: int = 0,
        format_score: float = 0.0,
        timeout_s: float = 10.0,
        max_workers: int = 2,
        memory_mb: int = 1024,
        isolation: str = "auto",
    ):
        if data is None:
            raise ValueError(
                "sfpo/Code-v0 needs `data=`: a .jsonl/.json/.parquet file (HumanEval or MBPP "
                "layout, or question + test_code columns), a directory, 'hf:org/name', or a "
                "list of dicts."
            )
        # Built first so that bad sandbox settings fail before the data is read.
        self.sandbox = Sandbox(
            timeout_s=timeout_s, max_workers=max_workers, memory_mb=memory_mb, isolation=isolation
        )
        loaded = load_examples(data, split=split, layout=layout, columns=columns, on_bad_row=on_bad_row,
                               split_fraction=split_fraction, split_seed=split_seed)
        if loaded.kind != "code":
            raise ValueError(
                f"`data` ({data!r}) has the {loaded.layout!r} layout, which holds math problems; "
                "sfpo/Code-v0 needs code problems (question + test_code, HumanEval or MBPP). "
                "Use sfpo/Math-v0, or pass layout= / columns= if the layout was detected wrongly."
            )
        self.prompt_template = resolve_template(prompt_template)
        self.layout = loaded.layout
        self.skipped_rows = loaded.skipped
        self.num_skipped = loaded.num_skipped
        super().__init__(loaded.examples, format_score=format_score)

    def build_prompt(self, example: Mapping[str, Any]) -> str:
        return render(self.prompt_template, example["question"])

    def verify(self, completion: str, example: Mapping[str, Any]) -> Verdict:
        return self.verify_batch([completion], [example])[0]

    def verify_batch(
        self, completions: Sequence[str], examples: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        extracted = [extract_code(c) for c in completions]
        # Only completions with code go to the sandbox; the rest score 0 without a run.
        to_run = [i for i, (code, _) in enumerate(extracted) if code is not None]
        # Unguessable by the completion (it is not in the prompt and differs per run).
        tokens = {i: secrets.token_hex(16) for i in to_run}
        results = self.sandbox.run_batch(
            [build_program(extracted[i][0], examples[i], tokens[i]) for i in to_run]
        )
        by_index = dict(zip(to_run, results))
        return [
            self._verdict(where, by_index.get(i), tokens.get(i))
            for i, (_, where) in enumerate(extracted)
        ]

    def _verdict(self, where: str | None, result: RunResult | None, token: str | None) -> Verdict:
        if result is None:
            info = {"extracted": None, "passed": False, "timed_out": False,
                    "error": "no code in the completion"}
            return Verdict(reward=0.0, correct=False, info=info)
        fenced = where in ("python_block", "block", "unclosed_block")
        finished = f"{_DONE}{token}" in result.stdout.splitlines()
        passed = result.passed and finished
        error = result.error
        if result.passed and not finished:
            error = (
                "exited with status 0 before its tests finished (e.g. sys.exit or os._exit)"
                if not result.stdout_truncated
                else f"output exceeded max_output_bytes={self.sandbox.max_output_bytes}"
            )
        reward = 1.0 if passed else (self.format_score if fenced else 0.0)
        info = {
            "extracted": where,
            "passed": passed,
            "timed_out": result.timed_out,
            "error": error,
            "duration_s": round(result.duration_s, 4),
            "isolation": result.isolation,
        }
        return Verdict(reward=reward, correct=passed, info=info)
