"""The policy: an RLlib ``TorchRLModule`` around a Hugging Face causal LM.

``forward_train`` returns, for every completion token, its log-probability under the
sampling distribution (logits / temperature) and the full-distribution entropy. The loss
needs nothing else, and computing them inside ``forward_train`` is what makes DDP
all-reduce the gradients (RLlib only routes ``forward_train`` through the DDP wrapper).

The computation itself is pure PyTorch and lives in ``logprobs.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override

from sfpo_rllib.columns import ATTENTION_MASK, COMPLETION_MASK, ENTROPY, INPUT_IDS, LOGP
from sfpo_rllib.logprobs import DEFAULT_LOGP_CHUNK_TOKENS, LogitHead, completion_logp_and_entropy, load_causal_lm
from sfpo_rllib.lora import apply_lora, is_lora, merged_state_dict


class CausalLMRLModule(TorchRLModule):
    """``model_config`` keys:
    model_path (str, required): a local Hugging Face checkpoint folder or a hub name.
    dtype ("float32" | "bfloat16" | "float16"): parameter dtype (default float32).
    temperature (float): the sampling temperature; log-probs are of logits / temperature.
    gradient_checkpointing (bool): trade compute for activation memory on big models.
    lora (dict | None): LoRA adapter settings (``SFPOConfig.lora_settings``); None = full model.
    attn_implementation (str | None): e.g. "sdpa", "flash_attention_2".
    logp_chunk_tokens (int | None): tokens per chunk of the (tokens, vocab) logits
        (default 512); None computes them all at once (memory grows with the batch).
    share_prompt_prefix (bool): each prompt runs once for its group's rows (logprobs.py).
    """

    @override(TorchRLModule)
    def setup(self):
        cfg = self.model_config
        self.lm = load_causal_lm(cfg["model_path"], cfg.get("dtype", "float32"), cfg.get("attn_implementation"))
        if cfg.get("gradient_checkpointing"):
            self.lm.gradient_checkpointing_enable()
        self.logp_chunk_tokens = cfg.get("logp_chunk_tokens", DEFAULT_LOGP_CHUNK_TOKENS)
        if self.logp_chunk_tokens:
            LogitHead.of(self.lm)  # check the chunked replay once, before adapters or sharding
        self.lm = apply_lora(self.lm, cfg.get("lora"))  # unchanged when LoRA is off
        self.temperature = float(cfg.get("temperature", 1.0))
        self.share_prompt_prefix = bool(cfg.get("share_prompt_prefix", False))
        # Set by the learner when entropy_coeff != 0 (entropy then enters the loss).
        self.entropy_grad = False
        # Sharded (FSDP2) learners: the full state, gathered by the learner (sharding.py).
        self.gathered_state: dict[str, torch.Tensor] | None = None

    @override(TorchRLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        logp, entropy = completion_logp_and_entropy(
            self.lm,
            batch[INPUT_IDS],
            batch[ATTENTION_MASK],
            batch[COMPLETION_MASK].shape[1],
            self.temperature,
            entropy_grad=self.entropy_grad,
            completion_mask=batch[COMPLETION_MASK],
            chunk_tokens=self.logp_chunk_tokens,
            share_prompt_prefix=self.share_prompt_prefix,
        )
        return {LOGP: logp, ENTROPY: entropy}

    @override(TorchRLModule)
    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._forward_train(batch)

    # Weights travel as torch tensors: RLlib's default converts to numpy, which has no
    # bfloat16 (docs/design.md, "What the code relies on in RLlib"), and a numpy round trip copies large models twice.
    # With LoRA a weight sync (``inference_only``) moves the trained tensors alone: the frozen
    # base is the same in every copy of the module (built from the same model folder), so the
    # full model need not cross the object store every iteration. Checkpoints keep everything.
    @override(TorchRLModule)
    def get_state(self, components=None, *, not_components=None, inference_only=False, **kwargs):
        if self.gathered_state is not None:
            return dict(self.gathered_state)
        if inference_only and is_lora(self.lm):
            return {k: v.detach().cpu() for k, v in self.named_parameters() if v.requires_grad}
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    @override(TorchRLModule)
    def set_state(self, state: dict[str, Any]) -> None:
        from sfpo_rllib.sharding import gather_full_state, is_sharded, load_full_model_state

        tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}
        if is_sharded(self):  # every learner gets the full state and keeps its shard
            load_full_model_state(self, tensors)
            self.gathered_state, _ = gather_full_state(self, None)
            return
        trained = {k for k, v in self.named_parameters() if v.requires_grad}
        if is_lora(self.lm) and set(tensors) == trained:  # a weight sync: the adapters alone
            self.load_state_dict(tensors, strict=False)
            return
        self.load_state_dict(tensors, strict=True)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters under Hugging Face names (without ``lm.``), LoRA adapters merged in."""
        return merged_state_dict(self.lm)
