"""The ten dataset layouts: how one row of a known benchmark format becomes an example.

Each layout's ``normalize(row)`` returns one of two shapes (the loader adds ``source`` and
``row``) or raises ``BadRow`` with the rule the row breaks:

  math: {"question", "answer", "meta"}
  code: {"question", "test_code", "entry_point", "setup_code", "reference", "meta"}

``meta`` keeps the row's other columns. ``detect_layout`` names the layout a set of rows'
columns point to.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from sfpo_envs.readers import BadRow

# ----- field helpers (each raises BadRow with the rule it checks) ---------------------


def _field(row: Mapping[str, Any], *names: str) -> Any:
    """The first of ``names`` present (and not None) in ``row``."""
    for name in names:
        if row.get(name) is not None:
            return row[name]
    wanted = " or ".join(repr(n) for n in names)
    raise BadRow(
        f"field {wanted} is missing or null (the row has: {', '.join(sorted(row)) or 'nothing'}); "
        "map your column names with columns={...} or pick another layout="
    )


def _text(row: Mapping[str, Any], *names: str) -> str:
    value = _field(row, *names)
    if not isinstance(value, str):
        raise BadRow(f"field {names[0]!r} must be a string, got {type(value).__name__} {value!r:.80}")
    if not value.strip():
        raise BadRow(f"field {names[0]!r} is empty")
    return value


def _answer_text(value: Any, name: str) -> str:
    """A gold answer as text: strings as written, 27.0 -> '27', 0.5 -> '0.5'."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRow(
            f"answer field {name!r} must be a string or a number, got {type(value).__name__} {value!r:.80}"
        )
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRow(f"answer field {name!r} is {value}, not a finite number")
        return str(int(value)) if value.is_integer() else repr(value)
    text = _strip_math_delimiters(str(value))
    if not text:
        raise BadRow(f"answer field {name!r} is empty")
    return text


_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _strip_math_delimiters(text: str) -> str:
    """'$\\frac{1}{2}$' -> '\\frac{1}{2}': the verifier boxes the gold itself."""
    text = text.strip()
    for left, right in _DELIMITERS:
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            inner = text[len(left) : -len(right)]
            if not re.search(r"(?<!\\)\$", inner):  # not '$5$ and $6$'
                return inner.strip()
    return text


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text`` (braces balanced)."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                # A bare $ inside a box is a typesetting slip (Minerva has '...+$ $\\dot{x}...').
                return re.sub(r"(?<!\\)\$", "", text[brace + 1 : i]).strip() or None
    return None


def _rest(row: Mapping[str, Any], used: Sequence[str]) -> dict:
    return {k: v for k, v in row.items() if k not in used}


# ----- math layouts -------------------------------------------------------------------


def _math(row: Mapping[str, Any]) -> dict:
    """problem|question + answer, or the last \\boxed{} of solution when there is no answer."""
    question = _text(row, "problem", "question")
    if row.get("answer") is not None and str(row["answer"]).strip():
        answer = _answer_text(row["answer"], "answer")
    elif isinstance(row.get("solution"), str):
        answer = last_boxed(row["solution"])
        if answer is None:
            raise BadRow("there is no 'answer' field and 'solution' holds no \\boxed{...} final answer")
    else:
        raise BadRow(
            "field 'answer' (or a 'solution' with a \\boxed{...} final answer) is missing "
            f"(the row has: {', '.join(sorted(row))}); map your column with columns={{'answer': ...}}"
        )
    return {"question": question, "answer": answer, "meta": _rest(row, ("problem", "question", "answer"))}


def _gsm8k(row: Mapping[str, Any]) -> dict:
    """question + answer whose last line is '#### <number>'."""
    question = _text(row, "question")
    solution = _text(row, "answer")
    if "####" not in solution:
        raise BadRow(f"field 'answer' has no '#### <number>' final answer (ends with {solution[-60:]!r})")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not re.fullmatch(r"-?\d+(\.\d+)?", final):
        raise BadRow(f"the final answer after '####' is {final!r}, not a number")
    meta = {"solution": solution.rsplit("####", 1)[0].strip(), **_rest(row, ("question", "answer"))}
    return {"question": question, "answer": final, "meta": meta}


def _aime(row: Mapping[str, Any]) -> dict:
    """Like math; AIME answers are integers 0..999 (written '025' or '25')."""
    example = _math(row)
    if not re.fullmatch(r"\d{1,3}", example["answer"]):
        raise BadRow(f"AIME answers are integers 0..999, got {example['answer']!r}")
    return example


def _amc(row: Mapping[str, Any]) -> dict:
    """Like math; answers are numbers (amc23 stores 27.0, which becomes '27')."""
    example = _math(row)
    try:
        float(example["answer"])
    except ValueError:
        raise BadRow(f"AMC answers are numbers, got {example['answer']!r}") from None
    return example


def _minerva(row: Mapping[str, Any]) -> dict:
    """problem + the last \\boxed{} of solution (Minerva's file has no answer column)."""
    question = _text(row, "problem")
    answer = last_boxed(_text(row, "solution"))
    if answer is None:
        raise BadRow("field 'solution' holds no \\boxed{...} final answer")
    return {"question": question, "answer": answer, "meta": _rest(row, ("problem",))}


def _olympiadbench(row: Mapping[str, Any]) -> dict:
    """question (+ context) + final_answer, a list of LaTeX strings such as ['$69$,$84$']."""
    question = _text(row, "question")
    if isinstance(row.get("context"), str) and row["context"].strip():
        question = row["context"].strip() + "\n\n" + question
    finals = _field(row, "final_answer")
    if isinstance(finals, str):
        finals = [finals]
    if not isinstance(finals, list) or not finals or not all(isinstance(a, str) for a in finals):
        raise BadRow(f"field 'final_answer' must be a non-empty list of strings, got {finals!r:.80}")
    # '$69$,$84$' -> '69,84': drop unescaped $ and a trailing full stop.
    parts = [re.sub(r"(?<!\\)\$", "", a).strip().rstrip(".").strip() for a in finals]
    answer = ", ".join(p for p in parts if p)
    if not answer:
        raise BadRow(f"field 'final_answer' is empty ({finals!r})")
    return {"question": question, "answer": answer, "meta": _rest(row, ("question", "final_answer"))}


def _verl(row: Mapping[str, Any]) -> dict:
    """verl's parquet: prompt (chat messages), reward_model {ground_truth, style}, ..."""
    messages = _field(row, "prompt")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in messages)
    ):
        raise BadRow(
            "field 'prompt' must be a list of chat messages [{'role': ..., 'content': ...}], "
            f"got {messages!r:.80}"
        )
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise BadRow("field 'prompt' has no message with role 'user'")
    reward_model = _field(row, "reward_model")
    if not isinstance(reward_model, Mapping) or reward_model.get("ground_truth") is None:
        raise BadRow(f"field 'reward_model' must be a dict with a 'ground_truth', got {reward_model!r:.80}")
    truth = reward_model["ground_truth"]
    if isinstance(truth, (list, tuple)):
        if len(truth) != 1:
            raise BadRow(
                f"reward_model.ground_truth is a list of {len(truth)} answers; the math verifier "
                "takes one gold answer (write several as one string, e.g. '1, 3')"
            )
        truth = truth[0]
    meta = {
        "messages": [dict(m) for m in messages],
        "data_source": row.get("data_source"),
        "ability": row.get("ability"),
        "style": reward_model.get("style"),
        "extra_info": row.get("extra_info"),
    }
    return {"question": users[-1]["content"], "answer": _answer_text(truth, "reward_model.ground_truth"), "meta": meta}


# ----- code layouts -------------------------------------------------------------------


def _import_lines(source: str) -> str:
    """The top-level import lines of a program (HumanEval prompts start with them)."""
    lines = [ln for ln in source.splitlines() if ln.startswith(("import ", "from "))]
    return "\n".join(lines) + ("\n" if lines else "")


def _humaneval(row: Mapping[str, Any]) -> dict:
    prompt = _text(row, "prompt")
    test = _text(row, "test")
    entry_point = _text(row, "entry_point").strip()
    solution = _field(row, "canonical_solution")
    if not isinstance(solution, str):
        raise BadRow(f"field 'canonical_solution' must be a string, got {type(solution).__name__}")
    return {
        "question": prompt,
        "test_code": f"{test}\ncheck({entry_point})\n",
        "entry_point": entry_point,
        "setup_code": _import_lines(prompt),
        "reference": prompt + solution,
        "meta": _rest(row, ("prompt", "test", "entry_point", "canonical_solution")),
    }


def _string_list(row: Mapping[str, Any], name: str, required: bool = True) -> list[str]:
    value = _field(row, name) if required else (row.get(name) or [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRow(f"field {name!r} must be a list of strings, got {value!r:.80}")
    return value


def _mbpp(row: Mapping[str, Any]) -> dict:
    """MBPP (sanitized: prompt/code/test_list/test_imports; original: text/test_setup_code)."""
    question = _text(row, "prompt", "text")
    code = _text(row, "code")
    tests = _string_list(row, "test_list")
    if not tests:
        raise BadRow("field 'test_list' is empty: there is nothing to check a solution with")
    imports = _string_list(row, "test_imports", required=False)
    setup = row.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise BadRow(f"field 'test_setup_code' must be a string, got {type(setup).__name__}")
    defined = re.findall(r"^def\s+(\w+)\s*\(", code, flags=re.M)
    entry_point = next((name for name in defined if re.search(rf"\b{name}\s*\(", tests[0])), None)
    return {
        # The first test shows the function name and call signature, as MBPP prompts do.
        "question": f"{question.strip()}\nYour code should pass this test:\n{tests[0]}",
        "test_code": "\n".join([*imports, setup, *tests]).strip() + "\n",
        "entry_point": entry_point,
        "setup_code": "",
        "reference": code,
        "meta": _rest(row, ("prompt", "text", "code", "test_list", "test_imports", "test_setup_code")),
    }


def _code(row: Mapping[str, Any]) -> dict:
    """Our own code schema, e.g. through columns={'question': ..., 'test_code': ...}."""
    optional = {}
    for name in ("entry_point", "setup_code", "reference"):
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            raise BadRow(f"field {name!r} must be a string, got {type(value).__name__}")
        optional[name] = value
    fields = ("question", "test_code", "entry_point", "setup_code", "reference")
    return {
        "question": _text(row, "question"),
        "test_code": _text(row, "test_code"),
        "entry_point": optional["entry_point"],
        "setup_code": optional["setup_code"] or "",
        "reference": optional["reference"],
        "meta": _rest(row, fields),
    }


@dataclass(frozen=True)
class Layout:
    kind: str  # "math" or "code"
    normalize: Callable[[Mapping[str, Any]], dict]
    fields: tuple[str, ...]  # the column names it reads (what columns= may map)


_MATH_FIELDS = ("problem", "question", "answer", "solution")
LAYOUTS: dict[str, Layout] = {
    "math": Layout("math", _math, _MATH_FIELDS),
    "gsm8k": Layout("math", _gsm8k, ("question", "answer")),
    "aime": Layout("math", _aime, _MATH_FIELDS),
    "amc": Layout("math", _amc, _MATH_FIELDS),
    "minerva": Layout("math", _minerva, ("problem", "solution")),
    "olympiadbench": Layout("math", _olympiadbench, ("question", "context", "final_answer")),
    "verl": Layout("math", _verl, ("prompt", "reward_model")),
    "humaneval": Layout("code", _humaneval, ("prompt", "test", "entry_point", "canonical_solution")),
    "mbpp": Layout("code", _mbpp, ("prompt", "text", "code", "test_list", "test_imports", "test_setup_code")),
    "code": Layout("code", _code, ("question", "test_code", "entry_point", "setup_code", "reference")),
}


def detect_layout(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The layout the first rows' columns point to, or None."""
    cols = set().union(*(r.keys() for r in rows)) if rows else set()
    first = rows[0] if rows else {}
    if {"prompt", "reward_model"} <= cols:
        return "verl"
    if {"final_answer", "question"} <= cols:
        return "olympiadbench"
    if {"prompt", "test", "entry_point", "canonical_solution"} <= cols:
        return "humaneval"
    if {"code", "test_list"} <= cols and cols & {"prompt", "text"}:
        return "mbpp"
    if {"question", "test_code"} <= cols:
        return "code"
    if {"question", "answer"} <= cols and "problem" not in cols:
        answers = [r.get("answer") for r in rows if isinstance(r.get("answer"), str)]
        if answers and all("####" in a for a in answers):
            return "gsm8k"
        return "math"
    if "problem" in cols and "answer" in cols:
        numeric = isinstance(first.get("answer"), (int, float)) and not isinstance(first.get("answer"), bool)
        return "amc" if numeric else "math"  # amc23 stores answers as numbers (27.0)
    if {"problem", "solution"} <= cols:
        return "math"
    return None
