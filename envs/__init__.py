"""Single-step verifier environments for LLM reinforcement learning (import name: sfpo_envs).

Importing this package registers the ``sfpo/...`` gymnasium ids:
``gymnasium.make("sfpo/Arithmetic-v0", split="test")``.
"""

import gymnasium as gym

from sfpo_envs.base import RewardFnEnv, TextSpace, Verdict, VerifierEnv
from sfpo_envs.datasets import LoadedData, load_examples
from sfpo_envs.math_env import MathEnv
from sfpo_envs.math_verifier import MathVerifier

_ENVS = {
    "sfpo/Arithmetic-v0": "sfpo_envs.arithmetic:ArithmeticEnv",
    "sfpo/Math-v0": "sfpo_envs.math_env:MathEnv",
    "sfpo/Code-v0": "sfpo_envs.code_env:CodeEnv",
}


def _register_all() -> None:
    for env_id, entry_point in _ENVS.items():
        if env_id not in gym.registry:
            # The passive checker would call step() without reset() semantics we rely on;
            # our own tests check the contract instead.
            gym.register(id=env_id, entry_point=entry_point, disable_env_checker=True)


_register_all()

__all__ = [
    "LoadedData",
    "MathEnv",
    "MathVerifier",
    "RewardFnEnv",
    "TextSpace",
    "Verdict",
    "VerifierEnv",
    "load_examples",
]
