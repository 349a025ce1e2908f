"""The policy: an RLlib ``TorchRLModule`` around a Hugging Face causal LM.

``forward_train`` returns, for every completion token, its log-probability under the
sampling distribution (logits / temperature) and the full-distribution entropy. The loss
needs nothing else, and computing them inside ``forward_train`` is what makes DDP
all-reduce the gradients (RLlib only routes ``forward_train`` through the DDP wrapper).

Training rows are laid out as ``[left-padded prompt (P) | right-padded completion (C)]``
so every completion starts at column P. Position ids count real tokens only, exactly as
``generate`` computes them for left-padded prompts, so recomputed log-probs match the
rollout's.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override

from sfpo_rllib.lora import apply_lora, merged_state_dict

# Batch columns shared by the batch builder, the module and the learner.
INPUT_IDS = "input_ids"  # (B, P + C) int64
ATTENTION_MASK = "attention_mask"  # (B, P + C) int64, 0 on padding
COMPLETION_MASK = "completion_mask"  # (B, C) float32, 1 on completion tokens (eos included)
LOGP = "logp"  # (B, C) forward output: log π(token) at temperature
ENTROPY = "entropy"  # (B, C) forward output: entropy of π at temperature

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_causal_lm(path: str, dtype: str = "float32", attn_implementation: str | None = None):
    """Load a causal LM from a local folder (or a hub name when cached/online), dropout off.

    Dropout is switched off for RL, as TRL and verl do: with it, the recomputed
    log-probs of θ⁰ would not equal the rollout's and the ratio would not start at 1.
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if not os.path.isdir(path) and os.environ.get("HF_HUB_OFFLINE") == "1":
        kwargs["local_files_only"] = True
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout"):
        if hasattr(model.config, name) and isinstance(getattr(model.config, name), float):
            setattr(model.config, name, 0.0)
    return model


def completion_logp_and_entropy(
    lm: torch.nn.Module,
    input_ids: torch.Tensor,  # (B, P + C)
    attention_mask: torch.Tensor,  # (B, P + C)
    completion_width: int,
    temperature: float,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, C) and entropies (B, C) of the last ``completion_width`` columns."""
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    out = lm(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=completion_width + 1,
    )
    logits = out.logits[:, :-1, :].float() / temperature  # (B, C, V): predicts the completion
    targets = input_ids[:, -completion_width:]  # (B, C)
    log_probs = torch.log_softmax(logits, dim=-1)  # (B, C, V)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, C)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)  # (B, C)
    return logp, entropy


class CausalLMRLModule(TorchRLModule):
    """``model_config`` keys:
    model_path (str, required): a local Hugging Face checkpoint folder or a hub name.
    dtype ("float32" | "bfloat16" | "float16"): parameter dtype (default float32).
    temperature (float): the sampling temperature; log-probs are of logits / temperature.
    gradient_checkpointing (bool): trade compute for activation memory on big models.
    lora (dict | None): LoRA adapter settings (``SFPOConfig.lora_settings``); None = full model.
    attn_implementation (str | None): e.g. "sdpa", "flash_attention_2".
    """

    @override(TorchRLModule)
    def setup(self):
        cfg = self.model_config
        self.lm = load_causal_lm(cfg["model_path"], cfg.get("dtype", "float32"), cfg.get("attn_implementation"))
        if cfg.get("gradient_checkpointing"):
            self.lm.gradient_checkpointing_enable()
        self.lm = apply_lora(self.lm, cfg.get("lora"))  # unchanged when LoRA is off
        self.temperature = float(cfg.get("temperature", 1.0))
        # Set by the learner when entropy_coeff != 0 (entropy then enters the loss).
        self.entropy_grad = False

    @override(TorchRLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        logp, entropy = completion_logp_and_entropy(
            self.lm,
            batch[INPUT_IDS],
            batch[ATTENTION_MASK],
            batch[COMPLETION_MASK].shape[1],
            self.temperature,
            entropy_grad=self.entropy_grad,
        )
        return {LOGP: logp, ENTROPY: entropy}

    @override(TorchRLModule)
    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._forward_train(batch)

    # Weights travel as torch tensors: RLlib's default converts to numpy, which has no
    # bfloat16 (RLLIB_NOTES.md), and a numpy round trip copies large models twice.
    @override(TorchRLModule)
    def get_state(self, components=None, *, not_components=None, inference_only=False, **kwargs):
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    @override(TorchRLModule)
    def set_state(self, state: dict[str, Any]) -> None:
        tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}
        self.load_state_dict(tensors, strict=True)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters under Hugging Face names (without ``lm.``), LoRA adapters merged in."""
        return merged_state_dict(self.lm)
