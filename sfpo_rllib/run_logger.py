"""Per-iteration metrics to ``metrics.jsonl`` and TensorBoard, resumable.

One JSON object per line, one line per iteration (iteration 0 holds the starting model's
held-out accuracy). On resume, the file is rewritten from the rows saved inside the
checkpoint (lines after its iteration, and a line torn by a kill, are dropped with a warning)
and TensorBoard purges the same steps, so a resumed run's files match an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

logger = logging.getLogger(__name__)

TIMING_PREFIXES = ("time_",)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLogger:
    """Writes rows with every field of ``fields`` (null where a row lacks it), plus any extra."""

    def __init__(self, output_dir: str, *, fields: tuple[str, ...] = (), resume_after: int | None = None,
                 restore_rows_from: str | None = None):
        """``resume_after``: the checkpoint's iteration; ``restore_rows_from``: its copy of the rows."""
        from torch.utils.tensorboard import SummaryWriter

        self.fields = fields
        self.path = os.path.join(output_dir, "metrics.jsonl")
        os.makedirs(output_dir, exist_ok=True)
        if resume_after is None:
            open(self.path, "w").close()
        else:
            self._restore(resume_after, restore_rows_from)
        purge = None if resume_after is None else resume_after + 1
        self.writer = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"), purge_step=purge)

    def _restore(self, iteration: int, saved_rows: str | None) -> None:
        """Rows up to ``iteration``: the checkpoint's copy when there is one, else the file's own."""
        current, torn = _read_lines(self.path) if os.path.exists(self.path) else ([], None)
        if torn is not None:
            logger.warning("%s: dropped a torn or damaged line (%s); a kill while writing tears the last one. "
                           "The file is rewritten from the checkpoint.", self.path, torn)
        rows = _read_lines(saved_rows)[0] if saved_rows and os.path.exists(saved_rows) else current
        kept = [row for row in rows if row["iteration"] <= iteration]
        later = sum(row["iteration"] > iteration for row in current)
        if later:
            logger.warning("%s: dropped %d row(s) after the checkpoint's iteration %d; they are computed again.",
                           self.path, later, iteration)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in kept)
        os.replace(tmp, self.path)

    def log(self, row: dict[str, Any]) -> None:
        row = {**dict.fromkeys(self.fields), **{k: _clean(v) for k, v in row.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        step = int(row["iteration"])
        for name, value in row.items():
            if name != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):  # not null
                self.writer.add_scalar(f"sfpo/{name}", value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _read_lines(path: str) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of a metrics file, and a description of the lines that are not JSON (a kill
    while writing tears the last one)."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    rows, bad = [], []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            bad.append(f"line {number}{' (the last)' if number == len(lines) else ''}: {line.strip()[:40]!r}")
    return rows, "; ".join(bad) or None


def read_metrics(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def without_timings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with wall-clock fields removed: what must repeat exactly for a fixed seed."""
    return [{k: v for k, v in row.items() if not k.startswith(TIMING_PREFIXES)} for row in rows]
