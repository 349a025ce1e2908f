"""Real architectures with random weights, and the learner's core step in plain PyTorch.

Shared by ``real_model.py`` (CPU, the whole trainer) and ``real_model_gpu.py`` (a GPU
machine without Ray). Imports nothing that imports Ray: only the pure-PyTorch modules of
sfpo_rllib (``logprobs``, ``losses``, ``rows``, ``lora``).

* ``ARCHITECTURES``: the exact configs of SmolLM2-135M(-Instruct) and Qwen2.5-1.5B, built
  locally with random weights (no download); ``--model PATH`` loads a real folder instead.
* ``learner_step``: one optimizer step on one minibatch cut into micro-batches, exactly the
  computation the learner runs per step (chunked log-probs, clipped surrogate, accumulated
  gradients, clip, AdamW), without RLlib around it.
* ``plain_step``: the same step as a user would write it: full logits, ``log_softmax``.
* ``step_flops`` / ``matmul_peak``: model FLOPs of a step and the measured matmul peak (MFU).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from sfpo_rllib.columns import (
    ADVANTAGES,
    ATTENTION_MASK,
    COMPLETION_MASK,
    INPUT_IDS,
    MB_NUM_SEQS,
    MB_NUM_TOKENS,
    OLD_LOGP,
)
from sfpo_rllib.logprobs import DEFAULT_LOGP_CHUNK_TOKENS, completion_logp_and_entropy, load_causal_lm
from sfpo_rllib.lora import apply_lora
from sfpo_rllib.losses import clipped_surrogate, group_advantages
from sfpo_rllib.rows import cut_micro_batches, pad_rows

# The published configs (config.json of HuggingFaceTB/SmolLM2-135M-Instruct and Qwen/Qwen2.5-1.5B).
ARCHITECTURES = {
    "smollm2-135m": ("llama", dict(
        vocab_size=49_152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100_000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True, hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )),
    "qwen2.5-1.5b": ("qwen2", dict(
        vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, max_position_embeddings=32_768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, hidden_act="silu", bos_token_id=151_643, eos_token_id=151_643, pad_token_id=151_643,
    )),
}
# LoRA as the trainer's defaults: rank 8 (the setting measured), alpha 16, every linear layer.
LORA = {"r": 8, "lora_alpha": 16.0, "target_modules": "all-linear", "lora_dropout": 0.0, "modules_to_save": None, "seed": 0}
CLIP = 0.2
TEMPERATURE = 1.0


def build_model(arch: str | None, *, model_path: str | None = None, layers: int | None = None,
                dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """A random-weight model of ``arch`` (``layers`` overrides the depth), or the folder ``model_path``."""
    if model_path:
        return load_causal_lm(model_path, {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]).to(device)
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    kind, settings = ARCHITECTURES[arch]
    settings = dict(settings, **({"num_hidden_layers": layers} if layers else {}))
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind](**settings)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.train()


def prepare(model, *, lora: bool, checkpointing: bool):
    """As the learner's module does: checkpointing first, then the adapters; train mode."""
    if checkpointing:
        model.gradient_checkpointing_enable()
    model = apply_lora(model, LORA if lora else None)
    return model.train()


def synthetic_minibatch(vocab: int, *, prompts: int, group: int, prompt_len: int, completion_len: int,
                        device: str = "cpu", seed: int = 0, varied: bool = True) -> dict[str, torch.Tensor]:
    """``prompts`` x ``group`` rollouts of random tokens, as the learner receives them: the G
    completions of a prompt share it; lengths vary (prompts ±25%, completions 25%-100%) unless
    ``varied`` is False. Columns of one minibatch, with the old log-probs the θ⁰ pass adds."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(prompts):
        p_len = int(rng.integers(max(1, prompt_len * 3 // 4), prompt_len * 5 // 4 + 1)) if varied else prompt_len
        prompt = rng.integers(3, vocab, size=p_len).tolist()
        for _ in range(group):
            c_len = int(rng.integers(max(1, completion_len // 4), completion_len + 1)) if varied else completion_len
            # The fields pad_rows reads (a Rollout would import the environments' package).
            records.append(SimpleNamespace(prompt_ids=prompt, completion_ids=rng.integers(3, vocab, size=c_len).tolist(),
                                           rollout_logp=None, reward=float(rng.random() < 0.5)))
    columns = {k: torch.from_numpy(v) for k, v in pad_rows(records, pad_token_id=0).items()}
    n = len(records)
    columns[ADVANTAGES] = torch.from_numpy(group_advantages(np.array([r.reward for r in records]), group))
    columns[MB_NUM_TOKENS] = torch.full((n,), float(columns[COMPLETION_MASK].sum()))
    columns[MB_NUM_SEQS] = torch.full((n,), float(n))
    # θ⁰'s log-probs: any values near the sampled ones keep the clipped surrogate's work the same.
    columns[OLD_LOGP] = -torch.rand(columns[COMPLETION_MASK].shape) * 2.0 * columns[COMPLETION_MASK]
    return {k: v.to(device) for k, v in columns.items()}


def micro_batches_of(minibatch, budget: int | None) -> list[dict[str, torch.Tensor]]:
    return cut_micro_batches(minibatch, max_tokens=budget)[0]


def _surrogate(logp, micro):
    loss, _ = clipped_surrogate(logp, micro[OLD_LOGP], micro[ADVANTAGES], micro[COMPLETION_MASK], clip_param=CLIP,
                                mode="token-mean", num_tokens=micro[MB_NUM_TOKENS][0], num_seqs=micro[MB_NUM_SEQS][0])
    return loss


def _step(model, optimizer, micro_batches, logp_fn, autocast_dtype) -> None:
    optimizer.zero_grad(set_to_none=True)
    device_type = micro_batches[0][INPUT_IDS].device.type
    for micro in micro_batches:
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss = _surrogate(logp_fn(model, micro), micro)
        loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()


def learner_step(model, optimizer, micro_batches, autocast_dtype=None) -> None:
    """The learner's step: log-probs through the chunked output layer (``logp_chunk_tokens`` 512)."""
    def logp(m, micro):
        mask = micro[COMPLETION_MASK]
        return completion_logp_and_entropy(m, micro[INPUT_IDS], micro[ATTENTION_MASK], mask.shape[1], TEMPERATURE,
                                           completion_mask=mask, chunk_tokens=DEFAULT_LOGP_CHUNK_TOKENS)[0]
    _step(model, optimizer, micro_batches, logp, autocast_dtype)


def plain_step(model, optimizer, micro_batches, autocast_dtype=None) -> None:
    """The same step written plainly: the model's logits of the completion positions, log_softmax, gather."""
    def logp(m, micro):
        ids, attention, mask = micro[INPUT_IDS], micro[ATTENTION_MASK], micro[COMPLETION_MASK]
        width = mask.shape[1]
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        logits = m(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False,
                   logits_to_keep=width + 1).logits[:, :-1]
        log_probs = torch.log_softmax(logits.float() / TEMPERATURE, dim=-1)
        return log_probs.gather(-1, ids[:, -width:].unsqueeze(-1)).squeeze(-1) * mask
    _step(model, optimizer, micro_batches, logp, autocast_dtype)


def optimizer_for(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, weight_decay=0.0)


# ----- FLOPs -----------------------------------------------------------------------------
@dataclass
class Shape:
    layers: int
    hidden: int
    attn_width: int  # heads x head_dim
    body_params: int  # weights of the body's matmuls (attention and MLP projections)
    head_params: int  # vocab x hidden

    @staticmethod
    def of(config) -> "Shape":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        q = config.num_attention_heads * head_dim
        kv = config.num_key_value_heads * head_dim
        per_layer = config.hidden_size * (2 * q + 2 * kv) + 3 * config.hidden_size * config.intermediate_size
        return Shape(config.num_hidden_layers, config.hidden_size, q, per_layer * config.num_hidden_layers,
                     config.vocab_size * config.hidden_size)


def forward_flops(shape: Shape, rows: list[tuple[int, int]]) -> float:
    """Matmul FLOPs of one forward over real tokens (no padding): the body on every token, causal
    attention (QKᵀ and AV over the earlier tokens), the output layer on completion tokens only."""
    flops = 0.0
    for p, c in rows:
        t = p + c
        flops += 2 * shape.body_params * t + 2 * shape.layers * shape.attn_width * t * (t + 1)
        flops += 2 * shape.head_params * c
    return flops


def step_flops(shape: Shape, rows: list[tuple[int, int]], lora: bool) -> float:
    """Model FLOPs of forward + backward (the useful work, recomputation not counted): the
    backward computes input gradients (≈ the forward) and, for trained weights, weight
    gradients (≈ the forward again); LoRA trains no base weight (adapters' FLOPs are small)."""
    forward = forward_flops(shape, rows)
    return forward * (2.0 if lora else 3.0)


def rows_of(minibatch) -> list[tuple[int, int]]:
    c_width = minibatch[COMPLETION_MASK].shape[1]
    prompts = minibatch[ATTENTION_MASK][:, :-c_width].sum(1).tolist()
    completions = minibatch[COMPLETION_MASK].sum(1).long().tolist()
    return list(zip(prompts, completions))


def matmul_peak(device: str, dtype: torch.dtype, size: int | None = None, seconds: float = 2.0) -> float:
    """FLOP/s of square matmuls on this device in ``dtype``: the best of repeated timings."""
    size = size or (8192 if device == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(10 if device == "cuda" else 1):
            a @ b
        sync(device)
        elapsed = time.perf_counter() - t0
        best = max(best, (10 if device == "cuda" else 1) * 2 * size**3 / elapsed)
    return best


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ----- memory ----------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a block: on CUDA the allocator's peak; on CPU the process's resident
    high-water mark (reset through /proc/self/clear_refs where Linux allows, else sampled)."""

    def __init__(self, device: str):
        self.device = device
        self.peak_bytes = 0.0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._sampled = _resident_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._reset_hwm = _reset_high_water_mark()
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self._sampled = max(self._sampled, _resident_bytes())

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = float(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            self._thread.join()
            hwm = _status_bytes("VmHWM") if self._reset_hwm else 0.0
            self.peak_bytes = max(self._sampled, hwm)
        return False


def _status_bytes(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024.0
    return 0.0


def _resident_bytes() -> float:
    return _status_bytes("VmRSS")


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_name() -> str:
    """The CPU's model, cores, torch threads and the vector unit torch's kernels use (AVX2, AVX512):
    machines of one kind differ in the last, and CPU speeds with it."""
    details = f"{os.cpu_count()} cores, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({details})"
    except OSError:
        pass
    return details


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A markdown table (also readable as plain text)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in cells)])
