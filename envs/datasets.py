"""Load problems from a user's data into normalized example dicts.

``load_examples(data, split=..., layout=..., columns=..., on_bad_row=...)`` reads

  * a local file: ``.jsonl``, ``.jsonl.gz``, ``.json`` (a list of objects, or
    ``{"data": [...]}``) or ``.parquet``;
  * a directory holding ``{split}.<ext>`` or shards ``{split}-*.<ext>`` (also under
    ``data/``, the Hugging Face layout);
  * ``"hf:org/name"`` or ``"hf:org/name:config"``: a Hugging Face dataset, through the
    ``datasets`` package when it is installed;
  * a list of dicts already in memory.

Each row goes through a *layout* (a normalizer, see ``LAYOUTS``) that turns it into one of
two shapes:

  math: {"question", "answer", "source", "row", "meta"}
  code: {"question", "test_code", "entry_point", "setup_code", "reference",
         "source", "row", "meta"}

``row`` is the 1-based line number (jsonl) or row number (json list, parquet, hub) in its
source, so an error can point at it. ``meta`` keeps the row's other columns.

A single file holds no splits: it is read whole, whatever ``split`` says. To hold out part of
it, pass ``split_fraction`` (e.g. 0.1): the rows whose question hashes (with ``split_seed``)
below that fraction form the "test" split, the others the "train" split. The carve is
deterministic, about ``split_fraction`` of the rows, and puts duplicate questions on the same
side. (A directory or hub dataset is then read through its "train" split and carved the same way.)

A bad row (bad JSON, missing field, wrong type, no parsable answer) raises a ValueError
naming source, row and rule (``on_bad_row="error"``), or is skipped and recorded in
``LoadedData.skipped`` with a logged warning (``on_bad_row="skip"``). Nothing is dropped
silently.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import zlib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

logger = logging.getLogger(__name__)

FILE_EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".parquet")
ON_BAD_ROW = ("error", "skip")
CARVED_SPLITS = ("train", "test")  # the splits split_fraction makes


class BadRow(ValueError):
    """A row breaks a layout rule; the loader adds where it is."""


@dataclass(frozen=True)
class SkippedRow:
    source: str
    row: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}, row {self.row}: {self.reason}"


@dataclass
class LoadedData:
    """The normalized examples and every row that was skipped, with why."""

    examples: list[dict]
    skipped: list[SkippedRow]
    layout: str
    kind: str  # "math" or "code"
    sources: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


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


# ----- reading rows -------------------------------------------------------------------

# (source, row number, the row or the reason it could not be read)
RawRow = tuple[str, int, "dict | BadRow"]


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _lines(path: str) -> Iterator[bytes]:
    """The file's lines; a truncated or corrupt .gz is a ValueError naming the file and line."""
    number = 0
    try:
        with _open_binary(path) as f:
            for number, raw in enumerate(f, start=1):
                yield raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(
            f"`data` file {path} is truncated or not valid gzip after line {number} ({type(err).__name__}: {err}). "
            "Download or compress it again."
        ) from None


def _read_jsonl(path: str) -> Iterator[RawRow]:
    for number, raw in enumerate(_lines(path), start=1):
        if not raw.strip():
            continue  # a blank line holds no row (row numbers stay line numbers)
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            yield path, number, BadRow(f"line is not valid UTF-8 (byte {err.start + 1})")
            continue
        except json.JSONDecodeError as err:
            yield path, number, BadRow(f"line is not valid JSON ({err.msg} at column {err.colno})")
            continue
        except ValueError as err:  # e.g. an integer over Python's 4300-digit limit
            yield path, number, BadRow(f"line cannot be read ({str(err)[:120]})")
            continue
        if not isinstance(row, dict):
            yield path, number, BadRow(f"line is a JSON {type(row).__name__}, not an object")
            continue
        yield path, number, row


def _read_json(path: str) -> Iterator[RawRow]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError as err:  # bad JSON, bad UTF-8, or an integer over Python's digit limit
            raise ValueError(
                f"`data` file {path} is not valid JSON ({err}). Fix the file; for one JSON object "
                "per line name it .jsonl (then each bad line is reported on its own)."
            ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(
            f"`data` file {path} holds a JSON {type(data).__name__}; a .json file must hold a "
            "list of objects or {\"data\": [...]}. Reshape it, or write one object per line as .jsonl."
        )
    for number, row in enumerate(data, start=1):
        if isinstance(row, dict):
            yield path, number, row
        else:
            yield path, number, BadRow(f"item is a JSON {type(row).__name__}, not an object")


def _read_parquet(path: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise ValueError(
            f"`data` file {path} could not be read as parquet ({type(err).__name__}: {err}). "
            "Check that it is a complete .parquet file."
        ) from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield path, number, row


def _read_file(path: str) -> Iterator[RawRow]:
    if path.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if path.endswith(".json"):
        return _read_json(path)
    if path.endswith(".parquet"):
        return _read_parquet(path)
    raise ValueError(
        f"`data` file {path} has an unsupported extension; supported: {', '.join(FILE_EXTENSIONS)}. "
        "Convert it, or pass a directory holding {split}.jsonl / {split}.parquet."
    )


def split_files(directory: str, split: str) -> list[str]:
    """``{split}.<ext>`` or shards ``{split}-*.<ext>`` in ``directory`` or ``directory/data``."""
    for folder in (directory, os.path.join(directory, "data")):
        for ext in FILE_EXTENSIONS:
            exact = os.path.join(folder, split + ext)
            if os.path.isfile(exact):
                return [exact]
            shards = sorted(glob.glob(os.path.join(glob.escape(folder), glob.escape(split) + "-*" + ext)))
            if shards:
                return shards
    present = sorted(
        name for name in os.listdir(directory) if name.endswith(FILE_EXTENSIONS)
    )
    raise ValueError(
        f"`data` directory {directory} has no file for split {split!r}: expected {split}.jsonl, "
        f"{split}.parquet (or shards {split}-*.parquet), there or under data/. Data files there: "
        f"{', '.join(present) or 'none'}. Pass `split=` matching one of them or the file's path."
    )


def _read_hub(name: str, split: str) -> Iterator[RawRow]:
    try:
        import datasets  # optional: only hub names need it
    except ImportError:
        raise ImportError(
            f"`data` ({'hf:' + name!r}) names a Hugging Face dataset, which needs the `datasets` "
            "package: `pip install datasets`. Or download the data and pass a local .jsonl/.parquet path."
        ) from None
    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as err:  # hub errors have many types (connection, auth, missing split)
        raise RuntimeError(
            f"`data` ({'hf:' + name!r}): could not load split {split!r} from the Hugging Face Hub "
            f"({type(err).__name__}: {str(err)[:300]}). Check the name, config and split, your network "
            "(HF_HUB_OFFLINE) and login, or download the data and pass a local path."
        ) from err
    source = f"hf:{name}/{split}"
    for number, row in enumerate(ds, start=1):
        yield source, number, dict(row)


def _raw_rows(data: Any, split: str) -> tuple[list[str], Iterator[RawRow]]:
    if isinstance(data, (list, tuple)):
        def items() -> Iterator[RawRow]:
            for number, row in enumerate(data, start=1):
                if isinstance(row, Mapping):
                    yield "<list>", number, dict(row)
                else:
                    yield "<list>", number, BadRow(f"item is a {type(row).__name__}, not a dict")
        return ["<list>"], items()
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(
            f"`data` must be a path, 'hf:org/name' or a list of dicts, got {type(data).__name__}."
        )
    data = os.fspath(data)
    if data.startswith("hf:"):
        return [data], _read_hub(data[3:], split)
    path = os.path.expanduser(data)
    if os.path.isdir(path):
        files = split_files(path, split)
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(
            f"`data` ({data!r}) is not an existing file or directory. Pass the path of a "
            f"{'/'.join(FILE_EXTENSIONS)} file, a directory with {{split}}.jsonl, or 'hf:org/name'."
        )

    def chained() -> Iterator[RawRow]:
        for file in files:
            yield from _read_file(file)

    return files, chained()


# ----- the loader ---------------------------------------------------------------------


def _check_options(layout: str, columns: Any, on_bad_row: str, split: str) -> None:
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(
            f"`on_bad_row` ({on_bad_row!r}) must be 'error' (stop at the first bad row) or "
            "'skip' (skip bad rows, count them and log why)."
        )
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(
            f"`layout` ({layout!r}) is not a known layout; valid: auto, {', '.join(LAYOUTS)}. "
            "For other column names keep layout='auto' (or 'math') and pass columns={...}."
        )
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` ({split!r}) must be a non-empty string such as 'train' or 'test'.")
    if columns is None:
        return
    if not isinstance(columns, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in columns.items()
    ):
        raise ValueError(
            f"`columns` ({columns!r}) must map our field names to your column names, e.g. "
            "{'question': 'q', 'answer': 'a'}."
        )
    known = LAYOUTS[layout].fields if layout != "auto" else tuple(
        sorted({f for spec in LAYOUTS.values() for f in spec.fields})
    )
    unknown = sorted(set(columns) - set(known))
    if unknown:
        raise ValueError(
            f"`columns` maps unknown field(s) {unknown}; the {layout!r} layout reads: "
            f"{', '.join(known)}. Keys are our field names, values your column names."
        )


def _rename(row: dict, columns: Mapping[str, str] | None) -> dict:
    if not columns:
        return row
    missing = [theirs for theirs in columns.values() if theirs not in row]
    if missing:
        raise BadRow(
            f"column(s) {missing} named in columns= are missing (the row has: {', '.join(sorted(row))})"
        )
    renamed = {k: v for k, v in row.items() if k not in columns.values()}
    renamed.update({ours: row[theirs] for ours, theirs in columns.items()})
    return renamed


def load_examples(
    data: Any,
    *,
    split: str = "train",
    layout: str = "auto",
    columns: Mapping[str, str] | None = None,
    on_bad_row: str = "error",
    split_fraction: float | None = None,
    split_seed: int = 0,
) -> LoadedData:
    """Read ``data`` and normalize every row through ``layout`` (see the module docstring).

    ``columns`` maps the field names a layout reads to yours, e.g.
    ``{"question": "q", "answer": "a"}``; with ``layout="auto"`` the layout is then detected
    from the renamed columns. ``split`` picks the file in a directory or the hub split; a
    single file is read whole, unless ``split_fraction`` carves a held-out "test" part
    (seeded by ``split_seed``) from it.
    """
    _check_options(layout, columns, on_bad_row, split)
    _check_carve(split_fraction, split_seed, split)
    sources, rows = _raw_rows(data, "train" if split_fraction is not None else split)

    examples: list[dict] = []
    skipped: list[SkippedRow] = []

    def bad(source: str, number: int, reason: BadRow) -> None:
        if on_bad_row == "error":
            raise ValueError(
                f"{source}, row {number}: {reason}. Fix the row, or pass on_bad_row='skip' to "
                "skip bad rows (they are counted and logged)."
            ) from None
        skipped.append(SkippedRow(source, number, str(reason)))

    def process(source: str, number: int, row: dict | BadRow, chosen: Layout) -> None:
        try:
            if isinstance(row, BadRow):
                raise row
            example = chosen.normalize(_rename(row, columns))
        except ValueError as reason:  # BadRow, or e.g. str() of an integer over the 4300-digit limit
            bad(source, number, reason)
            return
        label = source if source.startswith(("hf:", "<")) else os.path.basename(source)
        examples.append({**example, "source": label, "row": number})

    name = layout
    chosen = None if layout == "auto" else LAYOUTS[layout]
    # With layout="auto", rows wait here until 20 clean ones show the layout (one odd row
    # cannot mislead it); then all are processed in file order.
    buffered: list[RawRow] = []
    for item in rows:
        if chosen is None:
            buffered.append(item)
            if sum(isinstance(r, dict) for _, _, r in buffered) < 20:
                continue
            name = _detect_or_raise(buffered, columns, sources)
            chosen = LAYOUTS[name]
            for args in buffered:
                process(*args, chosen)
            buffered = []
            continue
        process(*item, chosen)
    if chosen is None and buffered:
        name = _detect_or_raise(buffered, columns, sources)
        chosen = LAYOUTS[name]
        for args in buffered:
            process(*args, chosen)

    if skipped:
        logger.warning(
            "Skipped %d bad row(s) of %s (on_bad_row='skip'); first: %s",
            len(skipped), ", ".join(sources), "; ".join(str(s) for s in skipped[:3]),
        )
    kind = chosen.kind if chosen is not None else "math"
    if split_fraction is not None:
        examples = _carve(examples, split, split_fraction, split_seed, sources)
    return LoadedData(examples=examples, skipped=skipped, layout=name, kind=kind, sources=sources)


def _check_carve(split_fraction: Any, split_seed: Any, split: str) -> None:
    if split_fraction is None:
        return
    if isinstance(split_fraction, bool) or not isinstance(split_fraction, (int, float)) or not 0 < split_fraction < 1:
        raise ValueError(
            f"`split_fraction` ({split_fraction!r}) must be a number in (0, 1): the share of rows held out "
            "as the 'test' split. Use e.g. 0.1, or None to read the data as it is."
        )
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise ValueError(f"`split_seed` ({split_seed!r}) must be an int; it picks which rows are held out.")
    if split not in CARVED_SPLITS:
        raise ValueError(
            f"`split` ({split!r}) with `split_fraction`: the carve makes only the splits {CARVED_SPLITS}."
        )


def held_out(question: str, split_fraction: float, split_seed: int) -> bool:
    """Whether a question belongs to the carved 'test' part (a pure function of its text)."""
    digest = hashlib.sha256(f"{split_seed}\0{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < split_fraction


def _carve(examples: list[dict], split: str, split_fraction: float, split_seed: int, sources: list[str]) -> list[dict]:
    want_test = split == "test"
    kept = [e for e in examples if held_out(e["question"], split_fraction, split_seed) == want_test]
    if not kept:
        raise ValueError(
            f"`split_fraction` ({split_fraction}) of the {len(examples)} rows of {', '.join(sources)} leaves the "
            f"{split!r} split empty. Use a fraction that keeps rows on both sides, or more data."
        )
    return kept


def _detect_or_raise(buffered: list[RawRow], columns: Mapping[str, str] | None, sources: list[str]) -> str:
    rows = []
    for _, _, row in buffered:
        try:
            if isinstance(row, dict):
                rows.append(_rename(row, columns))
        except BadRow:
            continue  # unreadable rows say nothing about the layout
    if not rows:
        return "math"  # no row is readable: each will be reported as bad, whatever the layout
    name = detect_layout(rows)
    if name is None:
        cols = sorted(set().union(*(r.keys() for r in rows)))
        raise ValueError(
            f"Cannot tell the layout of {', '.join(sources)} from its columns ({', '.join(cols)}). "
            f"Name one with layout= (valid: {', '.join(LAYOUTS)}) or map your columns, e.g. "
            "columns={'question': 'q', 'answer': 'a'}."
        )
    return name
