"""GRPO: SFPO with the fast stage off (K = 0), a first-class baseline.

It shares every line of SFPO's code, so the only difference between an SFPO and a
GRPO run is the fast–reposition stage: GRPO and SFPO with ``reposition_alpha=0`` produce
bit-identical weights for the same seed.
"""

from __future__ import annotations

from ray.rllib.utils.annotations import override

from sfpo_rllib.sfpo import SFPO
from sfpo_rllib.sfpo_config import SFPOConfig


class GRPOConfig(SFPOConfig):
    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or GRPO)
        self.fast_steps = 0  # <- the only difference from SFPO


class GRPO(SFPO):
    @classmethod
    @override(SFPO)
    def get_default_config(cls) -> GRPOConfig:
        return GRPOConfig()
