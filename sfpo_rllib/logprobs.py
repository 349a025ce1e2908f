"""Log-probabilities and entropies of completion tokens under a Hugging Face causal LM.

Pure PyTorch (no Ray): the learner's module, the benchmarks and any plain training loop
share these functions. Training rows are laid out as ``[left-padded prompt (P) |
right-padded completion (C)]`` so every completion starts at column P; position ids count
real tokens only, exactly as ``generate`` computes them for left-padded prompts, so
recomputed log-probs match the rollout's.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from sfpo_rllib.lora import is_lora

logger = logging.getLogger(__name__)

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


# Tokens per chunk of the (tokens, vocab) logits: at most one chunk of them (and the few
# same-sized tensors log_softmax and the entropy need) exists at a time, forward and backward.
DEFAULT_LOGP_CHUNK_TOKENS = 512


class LogitHead:
    """How ``lm`` turns its last hidden states into logits, replayed one chunk of tokens at a time.

    The output layer (tied or not) plus the final logit transforms that Hugging Face models
    apply after it: Gemma-2's tanh soft-capping, Cohere's ``logit_scale`` and Granite's
    ``logits_scaling``. ``LogitHead.of(lm)`` also checks, once per model, that this replay
    equals ``lm(...).logits`` on a short probe; for an architecture it cannot replay it
    returns None and the caller falls back to the full-vocabulary path.
    """

    def __init__(self, lm: torch.nn.Module):
        head = lm.get_output_embeddings()
        if not isinstance(head, torch.nn.Linear):
            raise TypeError(f"output layer is {type(head).__name__}, not nn.Linear")
        self.head = head
        cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.scale = getattr(cfg, "logit_scale", None)  # Cohere: logits * scale
        self.divide = getattr(cfg, "logits_scaling", None)  # Granite: logits / scaling

    def logits(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        logits = torch.nn.functional.linear(hidden, weight, bias)
        if self.scale is not None:
            logits = logits * self.scale
        if self.divide is not None:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @staticmethod
    def of(lm: torch.nn.Module) -> "LogitHead | None":
        if "_sfpo_logit_head" not in lm.__dict__:
            lm.__dict__["_sfpo_logit_head"] = LogitHead._build_checked(lm)
        return lm.__dict__["_sfpo_logit_head"]

    @staticmethod
    @torch.no_grad()
    def _build_checked(lm: torch.nn.Module) -> "LogitHead | None":
        try:
            head = LogitHead(lm)
            ids = torch.arange(3, 11, device=head.head.weight.device).unsqueeze(0) % lm.config.get_text_config().vocab_size
            with torch.autocast(ids.device.type, enabled=False):
                expected = lm(input_ids=ids, use_cache=False).logits.float()
                hidden = lm.base_model(input_ids=ids, use_cache=False).last_hidden_state
                got = head.logits(hidden, head.head.weight, head.head.bias).float()
            tol = 1e-4 if head.head.weight.dtype == torch.float32 else 3e-2
            if torch.allclose(got, expected, rtol=tol, atol=tol * float(expected.abs().max().clamp(min=1.0))):
                return head
            reason = "its logits differ from the model's own"
        except Exception as err:  # an architecture we cannot replay: say so, stay correct
            reason = repr(err)
        logger.warning(
            "sfpo-rllib: cannot compute %s's log-probs in chunks (%s); using the full (tokens, vocab) "
            "logits instead, which needs much more memory with large vocabularies.", type(lm).__name__, reason,
        )
        return None


def _logp_and_entropy_of_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """Today's exact formulas, per token row: the chunked and full paths give the same numbers."""
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return logp, entropy


class _ChunkedLogpEntropy(torch.autograd.Function):
    """(N, H) hidden states -> (N,) log-probs and entropies, ``chunk`` tokens at a time.

    The backward recomputes each chunk's logits and back-propagates through that chunk
    alone, accumulating the output layer's gradient, so the backward too holds one chunk
    of (chunk, vocab) tensors at a time. Autocast is replayed as the forward saw it.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, head, temperature, chunk, entropy_grad):
        ctx.head, ctx.temperature, ctx.chunk, ctx.entropy_grad = head, temperature, chunk, entropy_grad
        ctx.autocast = (hidden.device.type, torch.is_autocast_enabled(hidden.device.type),
                        torch.get_autocast_dtype(hidden.device.type))
        ctx.save_for_backward(hidden, weight, bias, targets)
        logps, entropies = [], []
        for start in range(0, hidden.shape[0], chunk):
            logits = head.logits(hidden[start : start + chunk], weight, bias)
            logp, entropy = _logp_and_entropy_of_logits(logits, targets[start : start + chunk], temperature)
            logps.append(logp)
            entropies.append(entropy)
        logp = torch.cat(logps) if logps else hidden.new_zeros(0, dtype=torch.float32)
        entropy = torch.cat(entropies) if entropies else hidden.new_zeros(0, dtype=torch.float32)
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        use_entropy = ctx.entropy_grad and grad_entropy is not None
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        device_type, autocast_on, autocast_dtype = ctx.autocast
        w = weight.detach().requires_grad_(need_w)
        b = bias.detach().requires_grad_(need_b) if bias is not None else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            stop = start + ctx.chunk
            h = hidden[start:stop].detach().requires_grad_(need_h)
            with torch.enable_grad(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
                raw = ctx.head.logits(h, w, b)  # only the output layer (+ transform) is differentiated by autograd
            # d/dz of log p(t) = onehot(t) - p and of H = -p (log p + H), with z = raw / T,
            # written out so that a chunk needs two (chunk, vocab) fp32 buffers, not a graph of them.
            log_probs = torch.log_softmax(raw.detach().float() / ctx.temperature, dim=-1)
            g = grad_logp[start:stop].unsqueeze(-1)
            if use_entropy:
                probs = log_probs.exp()
                entropy = -(probs * log_probs).sum(dim=-1, keepdim=True)
                grad_z = probs * (-g - grad_entropy[start:stop].unsqueeze(-1) * (log_probs + entropy))
                del probs
            else:
                grad_z = log_probs.exp_().mul_(-g)
            del log_probs
            grad_z.scatter_add_(-1, targets[start:stop].unsqueeze(-1), g)
            grad_raw = grad_z.div_(ctx.temperature).to(raw.dtype)
            del grad_z
            inputs = [t for t, need in ((h, need_h), (w, need_w), (b, need_b)) if need]
            got = list(torch.autograd.grad(raw, inputs, grad_raw))
            if need_h:
                grad_h[start:stop] = got.pop(0)
            if need_w:
                grad_w += got.pop(0)
            if need_b:
                grad_b += got.pop(0)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def completion_logp_and_entropy(
    lm: torch.nn.Module,
    input_ids: torch.Tensor,  # (B, P + C)
    attention_mask: torch.Tensor,  # (B, P + C)
    completion_width: int,
    temperature: float,
    entropy_grad: bool = False,
    completion_mask: torch.Tensor | None = None,  # (B, C): only these tokens are computed
    chunk_tokens: int | None = DEFAULT_LOGP_CHUNK_TOKENS,
    share_prompt_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, C) and entropies (B, C) of the last ``completion_width`` columns.

    With ``completion_mask`` only completion tokens go through the output layer (padding
    gets 0). With ``chunk_tokens`` (default) the (tokens, vocab) logits exist one chunk at
    a time; ``chunk_tokens=None`` is the plain full-vocabulary computation. With
    ``share_prompt_prefix`` (chunked path only) consecutive rows with the same prompt run it
    through the model once (``_prompt_shared_hidden``).
    """
    position_ids = left_padded_positions(attention_mask)
    lm = unwrap_lora(lm)  # the body and output layer that the chunked path needs
    head = LogitHead.of(lm) if chunk_tokens else None
    entropy_grad = entropy_grad and torch.is_grad_enabled()
    if head is None:
        out = lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=completion_width + 1,
        )
        targets = input_ids[:, -completion_width:]  # (B, C)
        log_probs = torch.log_softmax(out.logits[:, :-1, :].float() / temperature, dim=-1)  # (B, C, V)
        logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, C)
        with torch.set_grad_enabled(entropy_grad):
            entropy = -(log_probs.exp() * log_probs).sum(dim=-1)  # (B, C)
        if completion_mask is not None:
            keep = completion_mask > 0
            logp, entropy = logp * keep, entropy * keep
        return logp, entropy

    hidden = None
    if share_prompt_prefix:
        hidden = _prompt_shared_hidden(lm.base_model, input_ids, attention_mask, position_ids, completion_width)
    if hidden is None:
        hidden = lm.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        hidden = hidden[:, -(completion_width + 1) : -1]  # (B, C, H): each predicts the next token
    targets = input_ids[:, -completion_width:]
    if completion_mask is None:
        keep = torch.ones_like(targets, dtype=torch.bool)
    else:
        keep = completion_mask > 0
    bias = head.head.bias
    logp_kept, entropy_kept = _ChunkedLogpEntropy.apply(
        hidden[keep], head.head.weight, bias, targets[keep], head, float(temperature), int(chunk_tokens), entropy_grad
    )
    zeros = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    logp = zeros.masked_scatter(keep, logp_kept)
    entropy = zeros.masked_scatter(keep, entropy_kept)
    if not entropy_grad:
        entropy = entropy.detach()
    return logp, entropy


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: each row's first real token is at 0 (as ``generate``
    numbers them; padding gets 0 too)."""
    return (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)


def unwrap_lora(lm: torch.nn.Module) -> torch.nn.Module:
    """The model under PEFT's wrapper (or ``lm`` itself): PEFT injects its LoRA layers into the
    model it wraps and the wrapper only calls it, so the wrapped model's body and output layer
    are the adapted ones."""
    return lm.get_base_model() if is_lora(lm) else lm


def _prompt_shared_hidden(
    body: torch.nn.Module,
    input_ids: torch.Tensor,  # (B, P + C)
    attention_mask: torch.Tensor,  # (B, P + C)
    position_ids: torch.Tensor,  # (B, P + C)
    completion_width: int,
) -> torch.Tensor | None:
    """The hidden states that predict the completion tokens (B, C, H), each prompt run once.

    GRPO-style batches hold G completions per prompt, and the prompt columns of those rows
    are identical (same left padding within a micro-batch): the distinct prompts go through the body once,
    their keys and values are repeated to every row of their group (an index, so gradients
    sum back into the one prompt pass), and only the completion columns run per row. The
    result equals the full pass up to float rounding (different matmul shapes); the work
    drops from B x (P + C) tokens to (distinct prompts) x P + B x C. Returns None, and the
    caller runs the full pass, when no two rows share a prompt or the model's
    cache is not the plain growing one (e.g. sliding-window layers).
    """
    prompt_width = input_ids.shape[1] - completion_width
    if prompt_width == 0:
        return None
    shared = distinct_prompt_pass(
        body, input_ids[:, :prompt_width], attention_mask[:, :prompt_width], position_ids[:, :prompt_width]
    )
    if shared is None:
        return None
    prompt_out, cache, owner = shared
    completion_out = body(
        input_ids=input_ids[:, prompt_width:], attention_mask=attention_mask,
        position_ids=position_ids[:, prompt_width:], use_cache=True, **{cache_argument(body): cache},
    )
    last_prompt_hidden = prompt_out.last_hidden_state[owner, -1:]  # predicts the first completion token
    return torch.cat([last_prompt_hidden, completion_out.last_hidden_state[:, :-1]], dim=1)


def distinct_prompt_pass(
    body: torch.nn.Module,
    prompt_ids: torch.Tensor,  # (B, P), left-padded
    prompt_mask: torch.Tensor,  # (B, P)
    position_ids: torch.Tensor,  # (B, P)
):
    """Runs each distinct prompt row through ``body`` once, with a cache.

    Returns (the distinct rows' output, a cache holding every row's copy of its prompt's
    keys and values, ``owner``: each row's index among the distinct rows). Rows may come in
    any order: whole prompt columns are matched. Returns None when no two rows share a
    prompt, or when the model's cache is not the plain growing one (e.g. sliding-window
    layers), where rows cannot be copied this way.
    """
    from transformers.cache_utils import DynamicLayer

    distinct, owner = torch.unique(torch.cat([prompt_ids, prompt_mask.long()], dim=1), dim=0, return_inverse=True)
    rows = prompt_ids.shape[0]
    if len(distinct) == rows:
        return None
    first_rows = torch.full((len(distinct),), rows, dtype=torch.long, device=prompt_ids.device)
    first_rows = first_rows.scatter_reduce(0, owner, torch.arange(rows, device=prompt_ids.device), "amin")
    prompt_out = body(
        input_ids=prompt_ids[first_rows], attention_mask=prompt_mask[first_rows],
        position_ids=position_ids[first_rows], use_cache=True,
    )
    cache = getattr(prompt_out, "cache", None) or getattr(prompt_out, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        _warn_once("shared prompt pass: this model's cache is not a plain DynamicCache; computing full rows")
        return None
    cache.batch_select_indices(owner)
    return prompt_out, cache, owner


def cache_argument(model: torch.nn.Module) -> str:
    """transformers 5.2x names the forward's cache argument ``cache``; earlier, ``past_key_values``."""
    import inspect

    forward = unwrap_lora(model).forward  # PEFT's wrapper forwards **kwargs: ask the model it wraps
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)
