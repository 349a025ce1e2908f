"""The task both sides of ``peer_trl.py`` train on: problems, prompt, reward (standard library only).

Imported by our side (through a gymnasium plugin env, registered below when gymnasium is
importable), by TRL's side (in TRL's own venv) and by the one scoring script, so the three
can only differ where they say so. Additions ``a + b`` with a, b in 1..20 (400 problems):
SmolLM2-135M-Instruct gets about a third of the one-digit ones right when sampling, so groups
of 4 completions carry a signal. Held-out problems come first in one seeded shuffle, the
training ones after them: the two never overlap.
"""

from __future__ import annotations

import json
import os
import random
import re

PROMPT = "What is {a} + {b}? Answer with the number only."
OPERAND_RANGE = range(1, 21)
SHUFFLE_SEED = 0
ENV_ID = "peer/Addition-v0"


def problems(split: str, count: int) -> list[dict]:
    """The first ``count`` problems of ``split`` ("test" or "train"): dicts with prompt and target."""
    pairs = [(a, b) for a in OPERAND_RANGE for b in OPERAND_RANGE]
    random.Random(SHUFFLE_SEED).shuffle(pairs)
    held_out = int(os.environ.get("PEER_TRL_HELD_OUT", "64"))
    pool = pairs[:held_out] if split == "test" else pairs[held_out:]
    if count > len(pool):
        raise ValueError(f"{split} count {count} is over the {len(pool)} {split} problems there are "
                         f"({len(pairs)} in all, {held_out} held out); ask for fewer")
    return [{"prompt": PROMPT.format(a=a, b=b), "target": a + b} for a, b in pool[:count]]


def reward(completion: str, example: dict) -> float:
    """1.0 when the completion's last integer is the sum, else 0.0."""
    numbers = re.findall(r"-?\d+", completion)
    return float(bool(numbers) and int(numbers[-1]) == int(example["target"]))


try:  # our side: a plugin environment (`--env peer_trl_task:peer/Addition-v0`)
    import gymnasium as gym
    from sfpo_envs import RewardFnEnv
except ImportError:  # TRL's venv has neither
    gym = None

if gym is not None:

    class PromptLoggingEnv(RewardFnEnv):
        """RewardFnEnv that appends each prompt index it is reset to (one per prompt sampled) to
        ``order_file``: the order TRL's side is then given, so both see the same prompts in turn."""

        def __init__(self, examples, order_file=None):
            super().__init__(examples, reward_fn=reward)
            self.order_file = order_file

        def reset(self, *, seed=None, options=None):
            out = super().reset(seed=seed, options=options)
            if self.order_file:
                with open(self.order_file, "a") as f:
                    f.write(json.dumps(out[1]["index"]) + "\n")
            return out

    def make_env(split: str = "train", count: int = 16, order_file: str | None = None, **_):
        return PromptLoggingEnv(problems(split, count), order_file=order_file if split == "train" else None)

    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point=make_env, disable_env_checker=True)
