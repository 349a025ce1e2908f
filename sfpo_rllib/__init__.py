"""SFPO (Slow-Fast Policy Optimization) as a Ray RLlib algorithm.

Importing the package registers the trainables "SFPO" and "GRPO" with Ray Tune, so
``tune.Tuner("SFPO", param_space=config)`` and ``get_trainable_cls("SFPO")`` work.
Tune's registry lives in the Ray session: a process that calls ``ray.shutdown()`` and
then ``ray.init()`` again calls ``sfpo_rllib.register()`` once more.
"""

from ray.tune.registry import register_trainable

from sfpo_rllib.quiet import quiet_known_notices

quiet_known_notices()  # before anything below logs Ray's start-up notices

from sfpo_rllib.grpo import GRPO, GRPOConfig
from sfpo_rllib.sfpo import SFPO
from sfpo_rllib.sfpo_config import SFPOConfig

ALGORITHMS = {"SFPO": (SFPO, SFPOConfig), "GRPO": (GRPO, GRPOConfig)}


def config_of(algo: str, settings: dict) -> SFPOConfig:
    """A new config of ``algo`` ("SFPO" or "GRPO") holding ``settings`` (e.g. another config's
    ``to_dict()``). A GRPO config keeps GRPO's K = 0 whatever ``settings`` carry."""
    config = ALGORITHMS[algo][1]().update_from_dict(settings)
    if isinstance(config, GRPOConfig):
        config.fast_steps = GRPOConfig().fast_steps  # the one place it is set: grpo.py
    return config


def register() -> None:
    """Register "SFPO" and "GRPO" with Ray Tune (done on import)."""
    for name, (algorithm, _) in ALGORITHMS.items():
        register_trainable(name, algorithm)


register()

__all__ = ["ALGORITHMS", "GRPO", "GRPOConfig", "SFPO", "SFPOConfig", "config_of", "register"]
