"""A synthetic multi-step arithmetic task with an exact verifier.

Problems are chains like ``17+5-8=`` evaluated left to right. A worked completion writes
each reduction: ``22-8=14``. The verifier reads the number after the last ``=`` (or the
whole completion when there is none) and compares it exactly with the answer.

Train and test problems are disjoint by construction: a problem belongs to the test split
when the CRC32 of its text falls in a fixed 1-in-5 bucket, whatever the seed. The
difficulty knob is ``num_operands`` (steps of reasoning) and ``max_operand`` (size of the
numbers).

For a pretrained chat model the same problems can be asked as a sentence and scored by the
last integer of the answer (``question_style="spaced"``, ``answer_format="last_integer"``):
"Compute 17 + 5 - 8. Reply with the result only." -> "17 + 5 - 8 = 14." Which problems are
train and which test does not depend on these two settings (the split hashes the canonical
``17+5-8=`` text).
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Mapping

import numpy as np

from sfpo_envs.base import Verdict, VerifierEnv

OPERATORS = ("+", "-")
_ANSWER_RE = re.compile(r"^\s*(-?\d+)\s*$")
_INTEGER_RE = re.compile(r"-?\d+")

# How a problem is shown: the canonical text the embedded model was trained on, or spaced
# like a sentence for chat models ("17 + 5 - 8").
QUESTION_STYLES = ("symbols", "spaced")
# How the answer is read: the integer after the last "=" (the worked-chain format), or the last
# integer anywhere in the completion (what a chat model writes: "... = 14." or "The answer is 14").
ANSWER_FORMATS = ("after_last_equals", "last_integer")


SPLITS = ("train", "validation", "test")


def split_of(question: str) -> str:
    """'test' for one problem in five (fixed by its text), else 'train'."""
    return "test" if zlib.crc32(question.encode()) % 5 == 0 else "train"


def in_validation(question: str) -> bool:
    """About one train-split problem in ten, fixed by its text: the validation split.

    It is part of the training data (the train split is unchanged, so the embedded model's
    warm start is too) and disjoint from test: select settings on it, report test once."""
    crc = zlib.crc32(question.encode())
    return crc % 5 != 0 and (crc // 5) % 10 == 0


def solve(operands: list[int], operators: list[str]) -> tuple[str, int]:
    """Left-to-right worked solution, e.g. ([17, 5, 8], ['+', '-']) -> ('22-8=14', 14)."""
    steps = []
    value = operands[0]
    for i, (op, rhs) in enumerate(zip(operators, operands[1:])):
        value = value + rhs if op == "+" else value - rhs
        rest = "".join(f"{o}{n}" for o, n in zip(operators[i + 1 :], operands[i + 2 :]))
        steps.append(f"{value}{rest}")
    return "=".join(steps), value


def make_problem(rng: np.random.Generator, num_operands: int, max_operand: int) -> dict:
    operands = [int(x) for x in rng.integers(0, max_operand + 1, size=num_operands)]
    operators = [OPERATORS[int(i)] for i in rng.integers(0, len(OPERATORS), size=num_operands - 1)]
    question = "".join(f"{a}{op}" for a, op in zip(operands, operators)) + f"{operands[-1]}="
    solution, answer = solve(operands, operators)
    return {"question": question, "solution": solution, "answer": answer}


def generate_problems(
    split: str, size: int, *, num_operands: int, max_operand: int, seed: int
) -> list[dict]:
    """``size`` problems of ``split``: unique for 'test' and 'validation', drawn with repeats for 'train'."""
    rng = np.random.default_rng([seed, {"train": 0, "test": 1, "validation": 2}[split]])
    problems: list[dict] = []
    seen: set[str] = set()
    space = (max_operand + 1) ** num_operands * len(OPERATORS) ** (num_operands - 1)
    share = {"test": 5, "validation": 12}.get(split)
    if share and size > space // share:
        raise ValueError(
            f"`size` ({size}) asks for more unique {split} problems than the task has "
            f"(about {space // share} with num_operands={num_operands}, max_operand={max_operand}); "
            "lower `size` or raise the difficulty."
        )
    attempts = 0
    while len(problems) < size:
        attempts += 1
        if attempts > 100 * size + 10_000:
            raise RuntimeError(f"Could not draw {size} {split} problems; the task space is too small.")
        problem = make_problem(rng, num_operands, max_operand)
        if split == "validation":
            if not in_validation(problem["question"]):
                continue
        elif split_of(problem["question"]) != split:
            continue
        if split != "train":
            if problem["question"] in seen:
                continue
            seen.add(problem["question"])
        problems.append(problem)
    return problems


# A completion is at most max_new_tokens tokens, but a verifier must not trust that: only the
# tail is scanned, so a hostile megabyte of digits costs no more than a short answer.
_MAX_SCANNED_CHARS = 4096


def extract_answer(completion: str, answer_format: str = "after_last_equals") -> int | None:
    """The answer ``completion`` gives, read by ``answer_format``, or None when there is none.

    "after_last_equals": the integer after the last '=' (or the whole text), nothing else around it.
    "last_integer": the last run of digits (with its minus sign) anywhere in the text. Only one
    number counts, so listing several candidates cannot raise the reward; digits longer than any
    answer of the task are read as they are (and are wrong)."""
    if answer_format == "last_integer":
        numbers = _INTEGER_RE.findall(completion[-_MAX_SCANNED_CHARS:])
        return int(numbers[-1]) if numbers else None
    tail = completion.rsplit("=", 1)[-1]
    match = _ANSWER_RE.match(tail)
    return int(match.group(1)) if match else None


def spaced(question: str) -> str:
    """'17+5-8=' -> '17 + 5 - 8': the canonical problem as a chat model reads it."""
    body = question.rstrip("=")
    return re.sub(r"(?<=\d)([+-])", r" \1 ", body)


class ArithmeticEnv(VerifierEnv):
    """``sfpo/Arithmetic-v0``: left-to-right +/- chains, exact answer check.

    Args:
        split: "train" or "test" (disjoint problem sets), or "validation" (a fixed tenth of
            the train split's problems, for choosing settings without touching test).
        size: number of problems (default 20,000 train, 500 test or validation).
        num_operands: numbers per problem (2 = one step); the difficulty knob.
        max_operand: operands are drawn from 0..max_operand.
        seed: which problems are drawn (the train/test partition does not depend on it).
        prompt_template: format string with ``{question}`` (default: the bare question).
        question_style: "symbols" (``17+5-8=``, default) or "spaced" (``17 + 5 - 8``, for a
            template such as "Compute {question}. Reply with the result only.").
        answer_format: "after_last_equals" (default: the integer after the last '=', alone)
            or "last_integer" (the last integer anywhere in the completion).
        format_score: reward for a well-formed but wrong integer answer.
        data: unused; the task is synthetic (accepted so every env takes the same arguments).
    """

    def __init__(
        self,
        data: Any = None,
        split: str = "train",
        prompt_template: str | None = None,
        *,
        size: int | None = None,
        num_operands: int = 3,
        max_operand: int = 20,
        seed: int = 0,
        question_style: str = "symbols",
        answer_format: str = "after_last_equals",
        format_score: float = 0.0,
    ):
        if data is not None:
            raise ValueError(
                f"sfpo/Arithmetic-v0 is synthetic and takes no `data` (got {data!r}); "
                "drop `data`, or use sfpo/Math-v0 to train on a file of problems."
            )
        if split not in SPLITS:
            raise ValueError(f"`split` ({split!r}) must be one of {', '.join(map(repr, SPLITS))}.")
        if not isinstance(num_operands, int) or num_operands < 2:
            raise ValueError(f"`num_operands` ({num_operands!r}) must be an int >= 2 (one step at least).")
        if not isinstance(max_operand, int) or max_operand < 1:
            raise ValueError(f"`max_operand` ({max_operand!r}) must be an int >= 1.")
        if question_style not in QUESTION_STYLES:
            raise ValueError(f"`question_style` ({question_style!r}) must be one of "
                             f"{', '.join(map(repr, QUESTION_STYLES))}.")
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"`answer_format` ({answer_format!r}) must be one of "
                             f"{', '.join(map(repr, ANSWER_FORMATS))}.")
        self.question_style = question_style
        self.answer_format = answer_format
        size = size if size is not None else (20_000 if split == "train" else 500)
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"`size` ({size!r}) must be a positive int.")
        self.prompt_template = prompt_template or "{question}"
        if "{question}" not in self.prompt_template:
            raise ValueError(
                f"`prompt_template` ({self.prompt_template!r}) must contain '{{question}}'."
            )
        examples = generate_problems(
            split, size, num_operands=num_operands, max_operand=max_operand, seed=seed
        )
        super().__init__(examples, format_score=format_score)

    def build_prompt(self, example: Mapping[str, Any]) -> str:
        question = example["question"]
        if self.question_style == "spaced":
            question = spaced(question)
        return self.prompt_template.replace("{question}", question)

    def verify(self, completion: str, example: Mapping[str, Any]) -> Verdict:
        extracted = extract_answer(completion, self.answer_format)
        if extracted is None:
            return Verdict(0.0, False, {"extracted": None, "gold": example["answer"]})
        correct = extracted == example["answer"]
        reward = 1.0 if correct else self.format_score
        return Verdict(reward, correct, {"extracted": extracted, "gold": example["answer"]})
