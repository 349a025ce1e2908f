"""``sfpo/Code-v0``: Python programming problems, rewarded by running the tests.

>>> env = gymnasium.make("sfpo/Code-v0", data="humaneval.jsonl.gz", split="test")
>>> prompt, info = env.reset(options={"index": 0})
>>> _, reward, terminated, truncated, info = env.step("```python\\ndef f(): ...\\n```")
>>> info  # {'index': 0, 'correct': False, 'extracted': 'python_block', 'passed': False,
...       #  'timed_out': False, 'error': 'NameError: ...', 'duration_s': 0.15, ...}

Rows are read by ``sfpo_envs.datasets.load_examples`` (HumanEval and MBPP layouts, our own
code schema, or ``columns=``). The program is, by ``completion_mode``:

* ``"full"``: the code taken from the completion (the last ```python block, else the last
  ``` block, else an unclosed block, else the whole text);
* ``"continue"``: the prompt's code plus the completion, cut at the first line that starts
  a new top-level block (the HumanEval protocol for base models);
* ``"auto"``: "full" when that code defines the entry point, else "continue" (where the
  prompt is code).

The sandbox runs ``setup_code + program`` in one process and ``setup_code + test_code``
in a separate judge process that calls the program's functions (``Sandbox.run(program,
tests)``, see envs/judge.py): the reward comes from the judge, which the program cannot
reach, so it cannot be faked by exiting early, printing, or tampering with the tests.

Reward: 1.0 when the tests pass within the limits; ``format_score`` when the code came
from a fenced block but failed (the policy followed the format); 0.0 otherwise (no fenced
block, no code, timeout or crash without a block).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping, Sequence

from sfpo_envs.base import DatasetEnv, Verdict
from sfpo_envs.sandbox import RunResult, Sandbox

_FENCED = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
_UNCLOSED = re.compile(r"```([^\n`]*)\n((?:(?!```).)*)\Z", re.DOTALL)
_PYTHON_TAGS = {"python", "python3", "py"}

COMPLETION_MODES = ("full", "continue", "auto")
# Where a continuation ends: the stop sequences of the HumanEval paper (Chen et al. 2021).
CONTINUATION_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


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


def continuation(prompt: str, completion: str) -> str:
    """The HumanEval program: the prompt, then the completion up to its first stop."""
    cut = min((i for i in (completion.find(s) for s in CONTINUATION_STOPS) if i >= 0), default=len(completion))
    return prompt + completion[:cut]


def defines(code: str, name: str | None) -> bool:
    """Whether ``code`` defines ``name`` at top level (def, async def, class, or assignment)."""
    if not name:
        return False
    pattern = rf"^(?:(?:async\s+)?def\s+{re.escape(name)}\s*\(|class\s+{re.escape(name)}\b|{re.escape(name)}\s*=)"
    return re.search(pattern, code, flags=re.M) is not None


@functools.lru_cache(maxsize=4096)
def _compiles(text: str) -> bool:
    try:
        compile(text, "prompt", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def code_prompt(example: Mapping[str, Any]) -> bool:
    """Whether the prompt is code that declares the entry point (a HumanEval prompt):
    a completion can continue it, and the judge can take the prompt's helpers from it."""
    question, entry = example.get("question") or "", example.get("entry_point")
    return bool(entry) and defines(question, entry) and _compiles(question)


def build_run(code: str, example: Mapping[str, Any]) -> tuple[str, str]:
    """``(program, tests)`` for ``Sandbox.run``: both start with the task's setup code
    (the imports its prompt and tests assume); the tests run in the judge process.

    Where the prompt is code (HumanEval), the judge runs it too, less the entry point:
    helpers the tests call (``poly`` for ``find_zero``) are then the prompt's, and a
    program cannot redefine what its own answer is checked with.
    """
    setup = example.get("setup_code") or ""
    tests = f"{setup}\n{example['test_code']}"
    if code_prompt(example):
        entry = example["entry_point"]
        tests = f"{setup}\n{example['question']}\nglobals().pop({entry!r}, None)\n{example['test_code']}"
    return f"{setup}\n{code}\n", tests


class CodeEnv(DatasetEnv):
    """``sfpo/Code-v0``: one programming problem per episode, reward from its tests.

    Args:
        data, split, prompt_template, and the keyword data options (layout: "auto",
            "humaneval", "mbpp" or "code"; columns, on_bad_row, split_fraction, split_seed,
            format_score): see ``DatasetEnv``. prompt_template defaults to "code" (asks for
            a ```python block), or "plain" (the prompt as is) when ``completion_mode="continue"``.
        timeout_s: wall-clock seconds per run (tests included); past it the reward is 0.
        max_workers: programs run at once by ``verify_batch``.
        memory_mb: address-space limit per process of a run.
        isolation: "auto" or a mode the sandbox must provide (see ``sandbox.ISOLATION_MODES``).
        completion_mode: "full" (the completion is the whole solution), "continue" (the
            prompt is code and the completion continues it: base models on HumanEval) or
            "auto" ("full" when the completion's code defines the entry point, else
            "continue" where the prompt is code).
    """

    ENV_ID = "sfpo/Code-v0"
    KIND = "code"
    DATA_HINT = ("a .jsonl/.json/.parquet file (HumanEval or MBPP layout, or question + test_code columns), "
                 "a directory, 'hf:org/name', or a list of dicts.")
    WRONG_KIND_HINT = "code problems (question + test_code, HumanEval or MBPP). Use sfpo/Math-v0 for math"

    def __init__(
        self,
        data: Any = None,
        split: str = "train",
        prompt_template: str | None = None,
        *,
        timeout_s: float = 10.0,
        max_workers: int = 2,
        memory_mb: int = 1024,
        isolation: str = "auto",
        completion_mode: str = "full",
        **data_options: Any,
    ):
        self.require_data(data)
        if completion_mode not in COMPLETION_MODES:
            raise ValueError(
                f"`completion_mode` ({completion_mode!r}) must be one of {', '.join(COMPLETION_MODES)}: "
                "'full' when the model writes the whole solution (chat models), 'continue' when "
                "it continues a code prompt (base models on HumanEval), 'auto' to decide per completion."
            )
        self.completion_mode = completion_mode
        # Built first so that bad sandbox settings fail before the data is read.
        self.sandbox = Sandbox(
            timeout_s=timeout_s, max_workers=max_workers, memory_mb=memory_mb, isolation=isolation
        )
        super().__init__(data, split, prompt_template, **data_options)
        not_code = completion_mode == "continue" and next(
            (ex for ex in self.examples if not code_prompt(ex)), None)
        if not_code:
            raise ValueError(
                f"`completion_mode` ('continue') needs prompts that are Python code declaring the "
                f"entry point (the HumanEval layout), but row {not_code.get('row')} of "
                f"{not_code.get('source')} is not ({not_code['question'][:60]!r}...). Use "
                "completion_mode='full', or 'auto' (which continues only code prompts)."
            )

    def default_template(self, layout: str) -> str:
        return "plain" if self.completion_mode == "continue" else "code"

    def verify_batch(
        self, completions: Sequence[str], examples: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        programs = [self._program(c, ex) for c, ex in zip(completions, examples)]
        # Only completions with code go to the sandbox; the rest score 0 without a run.
        to_run = [i for i, (code, _) in enumerate(programs) if code is not None]
        runs = [build_run(programs[i][0], examples[i]) for i in to_run]
        entry_points = [[examples[i]["entry_point"]] if examples[i].get("entry_point") else [] for i in to_run]
        results = self.sandbox.run_batch([p for p, _ in runs], [t for _, t in runs], entry_points)
        by_index = dict(zip(to_run, results))
        return [self._verdict(where, by_index.get(i)) for i, (_, where) in enumerate(programs)]

    def _program(self, completion: str, example: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """``(code, where)``; where is extract_code's, or "continuation"."""
        code, where = extract_code(completion)
        mode = self.completion_mode
        if mode == "auto":
            continues = code_prompt(example) and not defines(code or "", example["entry_point"])
            mode = "continue" if continues else "full"
        if mode == "continue":
            if not completion.strip():
                return None, None
            return continuation(example["question"], completion), "continuation"
        return code, where

    def _verdict(self, where: str | None, result: RunResult | None) -> Verdict:
        if result is None:
            info = {"extracted": None, "passed": False, "timed_out": False,
                    "error": "no code in the completion"}
            return Verdict(reward=0.0, correct=False, info=info)
        fenced = where in ("python_block", "block", "unclosed_block")
        passed = result.passed and result.judged
        reward = 1.0 if passed else (self.format_score if fenced else 0.0)
        info = {
            "extracted": where,
            "passed": passed,
            "timed_out": result.timed_out,
            "error": result.error,
            "duration_s": round(result.duration_s, 4),
            "isolation": result.isolation,
        }
        return Verdict(reward=reward, correct=passed, info=info)
