"""One line per Tune trial event, for sweeps run quiet with ``tune.RunConfig(verbose=0)``.

Tune's default output (``verbose=1``) prints each trial's whole config when it starts (about
150 lines for an SFPOConfig) and a result table when it ends. With ``verbose=0`` Tune still
reports every trial error (a line with its error file, and the traceback in the log) and a
final status table; this callback adds our own progress: one line when a trial starts (its
sampled settings), at each iteration that reports ``metric``, and when it ends.

    tune.Tuner("SFPO", param_space=...,
               run_config=tune.RunConfig(verbose=0, callbacks=[TrialLines()])).fit()
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ray.tune import Callback
from ray.tune.utils import flatten_dict


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class TrialLines(Callback):
    """Prints ``trial <name> ...`` lines; ``metric`` is a flattened result key."""

    def __init__(self, metric: str = "sfpo/test_accuracy", file: TextIO | None = None):
        self.metric = metric
        self.file = file

    def _say(self, line: str) -> None:
        print(line, file=self.file or sys.stdout, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        params = " ".join(f"{name}={_value(v)}" for name, v in sorted((trial.evaluated_params or {}).items()))
        self._say(f"trial {trial} started{': ' + params if params else ''}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        value = flatten_dict(result).get(self.metric)
        if value is not None:
            self._say(f"trial {trial} iteration {result.get('training_iteration')}: {self.metric} {_value(float(value))}")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        done = (trial.last_result or {}).get("training_iteration", 0)
        self._say(f"trial {trial} finished after {done} iteration(s)")
