"""Tiny randomly initialised causal LMs of real Hugging Face architectures, for tests.

They share a character-level vocabulary of 40 ids (0 = pad, 1 = eos) and need no
tokenizer: tests that only exercise the policy module and the learner feed token ids.
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 40


def build(arch: str, path) -> str:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **common))
    elif arch == "gpt2":
        # GPT-2 ships with dropout 0.1: the loader must switch it off.
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common))
    else:
        raise ValueError(arch)
    model.save_pretrained(path)
    return str(path)
