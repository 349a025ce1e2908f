"""SFPO (Slow-Fast Policy Optimization) as a Ray RLlib algorithm.

Importing the package registers the trainables "SFPO" and "GRPO" with Ray Tune, so
``tune.Tuner("SFPO", param_space=config)`` and ``get_trainable_cls("SFPO")`` work.
"""

from ray.tune.registry import register_trainable

from sfpo_rllib.grpo import GRPO, GRPOConfig
from sfpo_rllib.sfpo import SFPO
from sfpo_rllib.sfpo_config import SFPOConfig

register_trainable("SFPO", SFPO)
register_trainable("GRPO", GRPO)

ALGORITHMS = {"SFPO": (SFPO, SFPOConfig), "GRPO": (GRPO, GRPOConfig)}

__all__ = ["ALGORITHMS", "GRPO", "GRPOConfig", "SFPO", "SFPOConfig"]
