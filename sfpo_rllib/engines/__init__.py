"""Rollout engines: transformers ``generate`` (CPU/GPU) and vLLM (CPU or GPU, optional extra)."""

from sfpo_rllib.engines.base import Completion, RolloutEngine, SamplingParams

__all__ = ["Completion", "RolloutEngine", "SamplingParams"]
