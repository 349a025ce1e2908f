"""How much memory LoRA saves SFPO: trainable parameters, and what the θ⁰ snapshot and the
AdamW moments cost, for full fine-tuning against LoRA adapters.

SFPO keeps one snapshot of the trainable parameters (θ⁰, for the reposition) and the
optimizer keeps two fp32 moments per trainable parameter. With LoRA both cover the adapters
alone. The counts are measured: each model is built on the meta device (no weights are
allocated or downloaded) from its published architecture, wrapped with PEFT exactly as the
learner does (`sfpo_rllib.lora.apply_lora`), and its parameters counted. The embedded tiny
model is counted from its real checkpoint.

Run:  python benchmarks/lora_memory.py --rank 8 --targets all-linear
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, Qwen2Config

from sfpo_rllib.lora import apply_lora, parameter_counts
from sfpo_rllib.model_cache import TINY_MODEL_NAME, resolve_model

# Published architectures (config.json of the hub checkpoints), so nothing is downloaded.
ARCHITECTURES = {
    "Qwen2.5-Math-1.5B": Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                     num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                                     tie_word_embeddings=True),
    "Qwen2.5-Math-7B": Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                   num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                   tie_word_embeddings=False),
    "Llama-3.1-8B": LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                tie_word_embeddings=False),
}


def counts(config, rank: int, alpha: float, targets) -> tuple[int, int]:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    full = parameter_counts(model)["total"]
    settings = {"r": rank, "lora_alpha": alpha, "target_modules": targets, "lora_dropout": 0.0, "seed": 0}
    return full, parameter_counts(apply_lora(model, settings))["trainable"]


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--targets", nargs="+", default=["all-linear"])
    parser.add_argument("--param-bytes", type=int, default=2, help="bytes per parameter (2 = bf16)")
    args = parser.parse_args()
    targets = args.targets[0] if args.targets == ["all-linear"] else args.targets
    models = {TINY_MODEL_NAME: AutoConfig.from_pretrained(resolve_model(TINY_MODEL_NAME)), **ARCHITECTURES}
    print(f"LoRA rank {args.rank}, targets {targets}. Per trainable parameter: θ⁰ snapshot and gradient at "
          f"{args.param_bytes} B (full FT) or 4 B (PEFT keeps adapters in fp32), AdamW's two fp32 moments 8 B\n")
    print("| model | parameters | trainable with LoRA | share | full FT: snapshot + grads + AdamW (GiB) "
          "| LoRA: snapshot + grads + AdamW (GiB) |")
    print("|---|---|---|---|---|---|")
    for name, config in models.items():
        full, lora = counts(config, args.rank, args.alpha, targets)
        full_cost = full * (2 * args.param_bytes + 8)
        lora_cost = lora * (2 * 4 + 8)
        print(f"| {name} | {full:,} | {lora:,} | {lora / full:.3%} | {gib(full_cost)} | {gib(lora_cost)} |")


if __name__ == "__main__":
    main()
