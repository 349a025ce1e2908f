"""SFPO's entropy-triggered switch-off of the fast stage (Algorithm 1, lines 'Compute entropy').

After iteration s the driver observes H_s, the mean token entropy over the whole batch
(all learners' tokens). H_s joins a rolling buffer of the last ω values and
Z_s = (H_s - μ) / (σ + ε) is computed over that buffer (H_s included, as in Algorithm 1).
The first time the rule fires, s* = s + 1 and α = 0 from iteration s* on: the decision
for iteration s only ever uses iterations before s (non-anticipatory).

Rules (``entropy_trigger``):
  * "abs":  |Z_s| >= τ   (the paper's Algorithm 1)
  * "rise": Z_s >= τ     (the authors' code: only an entropy rise counts)
  * "preceding": Z_s >= τ with μ and σ taken over the ω values *before* H_s (H_s is
    appended after it is scored). This is GXPO's gate (arXiv 2605.06755; the authors'
    ``GXPOState.update_stats`` in SwapniL-afk-now/final-gxpo,
    Code/SFPO/verl/workers/actor/gxpo_state.py, "Score against the preceding window,
    then append"; upward only, ``check_trigger``: "Algorithm 1 shuts off on an upward
    instability only"; σ + 1e-9 in the denominator). A value inside its own window caps
    |Z| at sqrt(ω − 1); against the preceding window a spike scores its full size.
"abs" and "rise" compute Z only once the buffer holds ω values, as the SFPO authors' code
does: with fewer values σ is not meaningful (two values always give |Z| = 1); "preceding"
scores from the (ω+1)-th value on, once ω values precede it.

The same rolling z-score gates reuse on another per-iteration statistic (``statistic``):
DGG's lm_head gradient norm (``reuse_gate="lm_head_grad"``, docs/slow_fast_family.md).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

TRIGGER_RULES = ("abs", "rise", "preceding")
_EPS = 1e-8
_EPS_PRECEDING = 1e-9  # the GXPO authors' (gxpo_state.py, update_stats: "self.sigma + 1e-9")


class EntropyTrigger:
    def __init__(self, *, window: int, z_threshold: float, rule: str, statistic: str = "Entropy"):
        if rule not in TRIGGER_RULES:
            raise ValueError(f"Unknown entropy trigger rule {rule!r}; valid: {', '.join(TRIGGER_RULES)}.")
        self.statistic = statistic  # what the gate watches, for error messages
        self.window = window
        self.z_threshold = z_threshold
        self.rule = rule
        self.buffer: deque[float] = deque(maxlen=window)
        self.switch_off_iteration: int | None = None  # s*, None means +inf
        self.last_z: float | None = None

    def alpha(self, iteration: int, alpha0: float) -> float:
        """α for ``iteration``: α0 before the switch-off, 0 from s* on."""
        if self.switch_off_iteration is not None and iteration >= self.switch_off_iteration:
            return 0.0
        return alpha0

    def observe(self, iteration: int, entropy: float) -> float | None:
        """Record H_s of ``iteration``; return Z_s (None while the window is filling)."""
        if not math.isfinite(entropy):
            raise ValueError(f"{self.statistic} of iteration {iteration} is {entropy}; the policy produced non-finite logits.")
        if self.rule == "preceding":
            return self._observe_preceding(iteration, float(entropy))
        self.buffer.append(float(entropy))
        if len(self.buffer) < self.window:
            self.last_z = None
            return None
        n = len(self.buffer)
        mean = sum(self.buffer) / n
        std = math.sqrt(sum((h - mean) ** 2 for h in self.buffer) / n)
        z = (entropy - mean) / (std + _EPS)
        self.last_z = z
        fired = abs(z) >= self.z_threshold if self.rule == "abs" else z >= self.z_threshold
        if fired and self.switch_off_iteration is None:
            self.switch_off_iteration = iteration + 1
        return z

    def _observe_preceding(self, iteration: int, value: float) -> float | None:
        """Z of ``value`` against the ω values before it; then ``value`` joins the window."""
        preceding = list(self.buffer)
        self.buffer.append(value)
        if len(preceding) < self.window:
            self.last_z = None
            return None
        mean = sum(preceding) / self.window
        std = math.sqrt(sum((h - mean) ** 2 for h in preceding) / self.window)
        z = (value - mean) / (std + _EPS_PRECEDING)
        self.last_z = z
        if z >= self.z_threshold and self.switch_off_iteration is None:
            self.switch_off_iteration = iteration + 1
        return z

    def get_state(self) -> dict[str, Any]:
        return {
            "buffer": list(self.buffer),
            "switch_off_iteration": self.switch_off_iteration,
            "last_z": self.last_z,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.buffer = deque(state["buffer"], maxlen=self.window)
        self.switch_off_iteration = state["switch_off_iteration"]
        self.last_z = state["last_z"]


def reuse_gate_of(config) -> EntropyTrigger:
    """The gate that switches the fast stage off for good, from ``config.reuse_gate``."""
    if config.reuse_gate == "lm_head_grad":
        # DGG (arXiv 2605.19425) watches for a surge: upward only, against the preceding window.
        return EntropyTrigger(window=config.lm_head_grad_window, z_threshold=config.lm_head_grad_z_threshold,
                              rule="preceding", statistic="lm_head gradient norm")
    return EntropyTrigger(window=config.entropy_window, z_threshold=config.entropy_z_threshold,
                          rule=config.entropy_trigger)
