"""Per-iteration metrics to ``metrics.jsonl`` and TensorBoard, resumable.

One JSON object per line, one line per iteration (iteration 0 holds the starting model's
held-out accuracy). On resume, lines after the checkpoint's iteration are dropped and
TensorBoard purges the same steps, so a resumed run's files match an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

TIMING_PREFIXES = ("time_",)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLogger:
    """Writes rows with every field of ``fields`` (null where a row lacks it), plus any extra."""

    def __init__(self, output_dir: str, *, fields: tuple[str, ...] = (), resume_after: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.fields = fields
        self.path = os.path.join(output_dir, "metrics.jsonl")
        os.makedirs(output_dir, exist_ok=True)
        if resume_after is None:
            open(self.path, "w").close()
        else:
            self._truncate_after(resume_after)
        purge = None if resume_after is None else resume_after + 1
        self.writer = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"), purge_step=purge)

    def _truncate_after(self, iteration: int) -> None:
        kept = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["iteration"] <= iteration]
        with open(self.path, "w") as f:
            f.writelines(kept)

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


def read_metrics(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def without_timings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with wall-clock fields removed: what must repeat exactly for a fixed seed."""
    return [{k: v for k, v in row.items() if not k.startswith(TIMING_PREFIXES)} for row in rows]
