"""The algorithms by name, and their registration with Ray Tune."""

from ray.tune.registry import register_trainable

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
    """Register "SFPO" and "GRPO" with Ray Tune (done on import of the package)."""
    for name, (algorithm, _) in ALGORITHMS.items():
        register_trainable(name, algorithm)
