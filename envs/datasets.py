"""Load problems from a user's data into normalized example dicts.

Three modules, one job each: ``readers.py`` turns files into raw rows, ``layouts.py`` turns
one raw row into an example, and this module loads: options, layout detection, bad rows,
the split carve. Import everything from here (``sfpo_envs.datasets`` re-exports the rest).

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

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

# The layouts and readers are re-exported: ``sfpo_envs.datasets`` stays the one import.
from sfpo_envs.layouts import LAYOUTS, Layout, detect_layout, last_boxed  # noqa: F401
from sfpo_envs.readers import FILE_EXTENSIONS, BadRow, RawRow, raw_rows, split_files  # noqa: F401

logger = logging.getLogger(__name__)

ON_BAD_ROW = ("error", "skip")
CARVED_SPLITS = ("train", "test")  # the splits split_fraction makes


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
    sources, rows = raw_rows(data, "train" if split_fraction is not None else split)

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
