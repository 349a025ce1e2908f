"""SFPO (Slow-Fast Policy Optimization) as a Ray RLlib algorithm.

Importing the package registers the trainables "SFPO" and "GRPO" with Ray Tune, so
``tune.Tuner("SFPO", param_space=config)`` and ``get_trainable_cls("SFPO")`` work.
Tune's registry lives in the Ray session: a process that calls ``ray.shutdown()`` and
then ``ray.init()`` again calls ``sfpo_rllib.register()`` once more.

Without Ray installed, only the pure-PyTorch modules import (``logprobs``, ``losses``,
``rows``, ``lora``, ``slow_fast``): what a plain training loop or a GPU benchmark
on a machine without Ray needs.
"""

import importlib.util

from sfpo_rllib.allocator import prefer_huge_pages

prefer_huge_pages()  # before torch is imported below: it reads the setting once (allocator.py)

__all__ = ["ALGORITHMS", "GRPO", "GRPOConfig", "SFPO", "SFPOConfig", "config_of", "register"]

if importlib.util.find_spec("ray") is not None:
    from sfpo_rllib.quiet import quiet_known_notices

    quiet_known_notices()  # before anything below logs Ray's start-up notices

    from sfpo_rllib.registry import ALGORITHMS, GRPO, SFPO, GRPOConfig, SFPOConfig, config_of, register

    register()
else:
    __all__ = []
