"""Rollout engines: transformers ``generate`` (CPU/GPU) and vLLM (GPU, optional extra)."""

from sfpo_rllib.engines.base import RolloutEngine, SamplingParams

__all__ = ["RolloutEngine", "SamplingParams"]
