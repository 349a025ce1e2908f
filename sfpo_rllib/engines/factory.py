"""Pick the rollout engine named by ``config.rollout_engine``."""

from __future__ import annotations

ROLLOUT_ENGINES = ("hf", "vllm")


def make_engine(config, module, *, pad_token_id: int, eos_token_id: int):
    if config.rollout_engine == "hf":
        from sfpo_rllib.engines.hf import HFGenerateEngine

        return HFGenerateEngine(
            module.lm, pad_token_id=pad_token_id, eos_token_id=eos_token_id, max_batch_size=config.generation_batch_size
        )
    if config.rollout_engine == "vllm":
        from sfpo_rllib.engines.vllm import VLLMEngine

        return VLLMEngine(
            config.resolved_model_path(),
            eos_token_id=eos_token_id,
            dtype=config.model_dtype,
            seed=config.seed if config.seed is not None else 0,
            **config.vllm_kwargs,
        )
    raise ValueError(f"Unknown `rollout_engine` {config.rollout_engine!r}; valid: {', '.join(ROLLOUT_ENGINES)}.")
