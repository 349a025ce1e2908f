"""A verifier environment seen as the trainer sees it: a prompt and a score by example index.

One prompt path for every user of prompts: the env runner (what the policy is given) and
the held-out check (env_factory.check_held_out_data, which compares the two splits' prompts).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import gymnasium as gym

from sfpo_envs.base import Verdict


class TextTask:
    """Prompt and score by example index, over our env contract or plain reset/step."""

    def __init__(self, env: gym.Env):
        self.env = env
        self.base = env.unwrapped
        if not hasattr(self.base, "__len__"):
            raise TypeError(
                f"Environment {type(self.base).__name__} has no __len__: the trainer draws "
                "problems by index. Subclass sfpo_envs.VerifierEnv (or RewardFnEnv)."
            )

    def __len__(self) -> int:
        return len(self.base)

    def prompt(self, index: int) -> tuple[str, list[dict]]:
        text, info = self.env.reset(options={"index": index})
        return text, info.get("messages") or [{"role": "user", "content": text}]

    def _score(self, completions: Sequence[str], indices: Sequence[int]) -> list[Verdict]:
        if hasattr(self.base, "score"):  # batched (the code verifier runs a pool)
            return list(self.base.score(completions, indices))
        out = []
        for completion, index in zip(completions, indices):  # a plain gymnasium env: reset/step
            self.env.reset(options={"index": index})
            _, reward, _, _, info = self.env.step(completion)
            out.append(_StepResult(reward, dict(info or {})))
        return out

    def score(self, completions: Sequence[str], indices: Sequence[int]) -> list[Verdict]:
        """The environment's verdict per completion; where the verifier failed, a verdict of
        reward 0 with ``info["reward_error"]`` saying why (``Rollout.reward_error``)."""
        try:
            scored = self._score(completions, indices)
        except Exception:  # the verifier is user code: find which example(s) it fails on
            scored = []
            for completion, index in zip(completions, indices):
                try:
                    scored.extend(self._score([completion], [index]))
                except Exception as err:
                    scored.append(_failed(f"{type(err).__name__}: {err}"))
        out = []
        for verdict in scored:
            reward = verdict.reward
            if "reward_error" in verdict.info:
                out.append(_failed(verdict.info["reward_error"], verdict.info))
            elif isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
                out.append(_failed(f"returned reward {reward!r:.60}, not a finite number"))
            elif isinstance(verdict, _StepResult):
                out.append(Verdict.from_reward(float(reward), verdict.info))
            else:
                out.append(verdict)
        return out


class _StepResult(NamedTuple):
    """``step()``'s reward and info, before the reward is checked."""

    reward: Any
    info: dict


def _failed(why: str, info: dict | None = None) -> Verdict:
    return Verdict(reward=0.0, correct=False, info={**(info or {}), "reward_error": why})
