"""A GGUF file as plain Hugging Face folders (safetensors, config, tokenizer, chat template).

transformers reads GGUF (with the ``gguf`` package) and dequantises the weights, but the
model it returns refuses ``save_pretrained`` ("quantized with gguf and is not
serializable"), and its config carries a ``quantization_config`` that makes every later
``save_pretrained`` of a model loaded from the saved folder fail the same way (a run's
final export among them). So the model is rebuilt from the config without that entry,
the dequantised weights are loaded into it, and that is saved: a folder that loads,
trains and saves like any checkpoint from the hub.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from sfpo_rllib.logprobs import DTYPES

# A short chat-formatted probe: the saved fp32 folder must give the GGUF model's logits on it.
_PROBE = [{"role": "user", "content": "What is 12 + 30?"}]


def convert_gguf(gguf: Path, outputs: dict[str, Path]) -> dict:
    """Write ``gguf`` as a Hugging Face folder per dtype (``outputs``: dtype name -> folder).

    Returns what the conversion checked: the largest logit difference between the saved
    float32 folder and the GGUF model on a probe prompt (0 when the weights were saved exactly).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _cached_tensor_name_map():
        source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = source.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = source.state_dict()
    for dtype, folder in outputs.items():
        config.dtype = DTYPES[dtype]
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
        model.load_state_dict(state, strict=True)  # cast to the variant's dtype on copy
        model.generation_config = source.generation_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
    return {"float32_max_logit_diff": _probe_difference(source, tokenizer, outputs.get("float32"))}


@contextlib.contextmanager
def _cached_tensor_name_map():
    """transformers 5 asks gguf for the same tensor-name table once per tensor (about 400 times,
    a third of the load's time on 2 cores); the table depends only on its arguments, so
    build it once while the model loads."""
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _probe_difference(source, tokenizer, saved: Path | None) -> float | None:
    """Largest |logit difference| between ``source`` and the model saved at ``saved`` (fp32)."""
    if saved is None:
        return None
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(_PROBE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        a = source(input_ids=ids["input_ids"]).logits
        b = reloaded(input_ids=ids["input_ids"]).logits
    difference = float((a - b).abs().max())
    if difference > 1e-4:
        raise RuntimeError(f"the converted model's logits differ from the GGUF model's by {difference:.3g} on a probe "
                           f"prompt: the conversion is wrong for this transformers version; please report it.")
    return difference
