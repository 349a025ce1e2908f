"""The README's examples: every fenced code block with the decision on how it is tested.

Each fenced block in README.md is preceded (on its last non-blank line before the fence) by a
marker comment:

    <!-- example: ci NAME -->          run as written by CI (.ci/run, .ci/quickstart.py)
    <!-- example: run ID (words) -->   run by tests/test_readme_examples.py, runner ID; the words
                                       in parentheses tell the reader how (e.g. sizes)
    <!-- example: not run: REASON -->  not runnable on a CI machine, and why

A block without a marker is an error, so a new example cannot go untested by accident.

    python3 .ci/readme.py ci quickstart-tests    print the block CI runs under that name

Standard library only: CI calls it with the system python before any venv exists.
"""

from __future__ import annotations

import pathlib
import re
import sys
from dataclasses import dataclass

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"^<!-- example: (?P<kind>ci|run|not run)(?::)?\s*(?P<detail>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)(?P<lang>\S*)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    kind: str | None  # "ci", "run", "not run", or None when the marker is missing
    name: str  # ci NAME / run ID; for "not run", the reason
    note: str  # the words in parentheses after a run ID

    def where(self) -> str:
        return f"README.md line {self.line} ({self.lang or 'no language'} block)"


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced code block of the README, in order, with its marker (kind None if absent)."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, start = opening["fence"], i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md line {start + 1}: code block never closed")
        i += 1
        previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous)
        kind = name = note = None
        if marker:
            kind, detail = marker["kind"], marker["detail"]
            name, _, note = detail.partition(" (")
            note = note.removesuffix(")")
        found.append(Block(start + 1, opening["lang"], "\n".join(body) + "\n", kind, name or "", note or ""))
    return found


def ci_block(name: str, text: str | None = None) -> Block:
    """The one block marked ``ci NAME``."""
    matches = [b for b in blocks(text) if b.kind == "ci" and b.name == name]
    if len(matches) != 1:
        raise SystemExit(f"README.md must have exactly one block marked `<!-- example: ci {name} -->`, "
                         f"found {len(matches)}")
    return matches[0]


def one_command(block: Block) -> str:
    """A block that is one shell command line (the quick start's two commands)."""
    lines = [line for line in block.code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1:
        raise SystemExit(f"{block.where()} must be a single command line, found {len(lines)} lines")
    return lines[0].strip()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "ci":
        raise SystemExit("usage: python3 .ci/readme.py ci NAME")
    print(one_command(ci_block(sys.argv[2])))
