"""Learner memory and speed, and generation speed, of real architectures on a GPU (no Ray needed).

For SmolLM2-135M's and Qwen2.5-1.5B's exact architectures (random weights built locally:
no download, no model files) or a real folder (``--model PATH``), in bf16 compute (autocast;
fp32 master weights and AdamW state, the trainer's ``mixed_precision="bf16"``):

* learner: one optimizer step on a minibatch of ``--minibatch-tokens`` tokens (32 completions,
  prompts ~64 tokens, completions 25-100% of 448), cut into micro-batches of each token budget
  (1k ... 16k), with and without gradient checkpointing, full fine-tuning and LoRA (rank 8,
  every linear layer): peak memory, tokens/s (real tokens, padding excluded), achieved FLOP/s
  and MFU against the bf16 matmul peak measured in the same run;
* the learner's step against the same step written plainly (full logits + log_softmax),
  on the same micro-batches: the per-token cost ratio;
* generation: the ``hf`` engine (``model.generate`` with the trainer's sampling setup), 64
  random-token prompts x 256 new tokens, bf16 weights: tokens/s.

The step is the learner's computation without RLlib around it (``real_arch.learner_step``):
the same functions (chunked log-probs, clipped surrogate, micro-batches) the learner calls.
Every row runs on its own: a failing row (out of memory, ...) prints its error in the table
and the script goes on. Imports nothing that imports Ray.

Run (repository root):
    PYTHONPATH=. python benchmarks/real_model_gpu.py --out real_model_gpu.md        (H200: ~3 min)
    PYTHONPATH=. python benchmarks/real_model_gpu.py --quick --device cpu --out /tmp/t.md
      (tiny sizes: the architectures' vocabularies with a 2-layer, 64-wide body; checks that it runs)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # real_arch, beside this file

from real_arch import (  # noqa: E402
    ARCHITECTURES,
    PeakMemory,
    Shape,
    build_model,
    cpu_name,
    learner_step,
    markdown_table,
    matmul_peak,
    micro_batches_of,
    optimizer_for,
    plain_step,
    prepare,
    rows_of,
    step_flops,
    sync,
    synthetic_minibatch,
)

GiB = 2**30
# --quick: each architecture's vocabulary and layout with a tiny body.
TINY_BODY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2}


class Deadline:
    def __init__(self, minutes: float):
        self.end = time.perf_counter() + 60 * minutes

    def passed(self) -> bool:
        return time.perf_counter() > self.end


def model_for(args, arch: str, dtype: torch.dtype):
    if args.model:
        return build_model(None, model_path=args.model, dtype=dtype, device=args.device)
    if args.quick:
        from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

        kind, settings = ARCHITECTURES[arch]
        config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind](**dict(settings, **TINY_BODY))
        torch.manual_seed(0)
        with torch.device(args.device):
            return AutoModelForCausalLM.from_config(config, dtype=dtype).train()
    return build_model(arch, dtype=dtype, device=args.device)


def error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ").replace("|", "/")
    return text[:120]


def free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def minibatch_for(args, vocab: int):
    completion = args.completion_tokens
    group = 8
    prompts = max(1, round(args.minibatch_tokens / ((args.prompt_tokens + completion * 5 / 8) * group)))
    return synthetic_minibatch(vocab, prompts=prompts, group=group, prompt_len=args.prompt_tokens,
                               completion_len=completion, device=args.device)


def learner_rows(args, arch: str, peak_flops: float, deadline: Deadline, autocast) -> list[list]:
    out = []
    for lora in (False, True):
        for checkpointing in (False, True):
            method = "LoRA r8" if lora else "full FT"
            ckpt = "yes" if checkpointing else "no"
            if deadline.passed():
                out += [[arch, method, ckpt, b, "", "", "", "", "", "skipped: time limit"] for b in args.budgets]
                continue
            model = optimizer = None
            try:
                model = prepare(model_for(args, arch, torch.float32), lora=lora, checkpointing=checkpointing)
                shape = Shape.of(model.config)
                optimizer = optimizer_for(model)
                minibatch = minibatch_for(args, model.config.vocab_size)
                rows = rows_of(minibatch)
                real_tokens = sum(p + c for p, c in rows)
                flops = step_flops(shape, rows, lora)
            except Exception as err:  # noqa: BLE001 - a failing row says why; the others run
                out += [[arch, method, ckpt, b, "", "", "", "", "", error_text(err)] for b in args.budgets]
                del model, optimizer
                free(args.device)
                continue
            for budget in args.budgets:
                if deadline.passed():
                    out.append([arch, method, ckpt, budget, "", "", "", "", "", "skipped: time limit"])
                    continue
                try:
                    micro = micro_batches_of(minibatch, budget)
                    learner_step(model, optimizer, micro, autocast)  # warm-up (kernels, optimizer state)
                    with PeakMemory(args.device) as mem:
                        sync(args.device)
                        t0 = time.perf_counter()
                        for _ in range(args.steps):
                            learner_step(model, optimizer, micro, autocast)
                        sync(args.device)
                        seconds = (time.perf_counter() - t0) / args.steps
                    achieved = flops / seconds
                    out.append([arch, method, ckpt, budget, len(micro), f"{real_tokens / seconds:,.0f}",
                                f"{mem.peak_bytes / GiB:.2f}", f"{achieved / 1e12:.2f}", f"{achieved / peak_flops:.1%}", ""])
                except Exception as err:  # noqa: BLE001
                    out.append([arch, method, ckpt, budget, "", "", "", "", "", error_text(err)])
                    free(args.device)
                print(markdown_table(LEARNER_HEADERS, out[-1:]).splitlines()[-1], flush=True)
            del model, optimizer
            free(args.device)
    return out


LEARNER_HEADERS = ["architecture", "method", "ckpt", "budget (tokens)", "micro-batches", "tokens/s", "peak GiB",
                   "TFLOP/s", "MFU", "error"]
PLAIN_HEADERS = ["architecture", "method", "budget", "learner s/step", "plain s/step", "ratio", "error"]
GEN_HEADERS = ["architecture", "engine", "prompts x new tokens", "tokens generated", "seconds", "tokens/s", "error"]


def plain_row(args, arch: str, autocast) -> list:
    """Learner step vs the plain step, LoRA, no checkpointing, alternating repeats (medians)."""
    budget = args.plain_budget
    try:
        model = prepare(model_for(args, arch, torch.float32), lora=True, checkpointing=False)
        optimizer = optimizer_for(model)
        micro = micro_batches_of(minibatch_for(args, model.config.vocab_size), budget)
        times = {"learner": [], "plain": []}
        for step in (learner_step, plain_step):
            step(model, optimizer, micro, autocast)  # warm-up
        for _ in range(args.steps + 1):
            for name, step in (("learner", learner_step), ("plain", plain_step)):
                sync(args.device)
                t0 = time.perf_counter()
                step(model, optimizer, micro, autocast)
                sync(args.device)
                times[name].append(time.perf_counter() - t0)
        learner, plain = (sorted(v)[len(v) // 2] for v in (times["learner"], times["plain"]))
        row = [arch, "LoRA r8", budget, f"{learner:.3f}", f"{plain:.3f}", f"{learner / plain:.2f}", ""]
    except Exception as err:  # noqa: BLE001
        row = [arch, "LoRA r8", budget, "", "", "", error_text(err)]
    finally:
        free(args.device)
    return row


def generation_row(args, arch: str) -> list:
    from sfpo_rllib.engines.base import SamplingParams
    from sfpo_rllib.engines.hf import HFGenerateEngine

    shape = f"{args.gen_prompts} x {args.gen_tokens}"
    try:
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        model = model_for(args, arch, dtype).eval()
        vocab = model.config.vocab_size
        # eos outside the vocabulary: every row generates all its tokens (random weights would stop at random).
        engine = HFGenerateEngine(model, pad_token_id=0, eos_token_id=vocab, max_batch_size=args.gen_prompts)
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, vocab, (64,), generator=g).tolist() for _ in range(args.gen_prompts)]
        engine.generate(prompts[:2], 1, SamplingParams(max_new_tokens=8), seed=1)  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        completions = engine.generate(prompts, 1, SamplingParams(max_new_tokens=args.gen_tokens), seed=0)
        sync(args.device)
        seconds = time.perf_counter() - t0
        tokens = sum(len(c) for c in completions)
        row = [arch, "hf", shape, tokens, f"{seconds:.1f}", f"{tokens / seconds:,.0f}", ""]
    except Exception as err:  # noqa: BLE001
        row = [arch, "hf", shape, "", "", "", error_text(err)]
    finally:
        free(args.device)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--model", help="a real model folder instead of the random-weight architectures")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384],
                        help="max_tokens_per_micro_batch values")
    parser.add_argument("--minibatch-tokens", type=int, default=16384, help="tokens of the minibatch of one step")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--completion-tokens", type=int, default=448, help="longest completion (lengths vary 25-100%%)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row (after one warm-up)")
    parser.add_argument("--plain-budget", type=int, default=4096)
    parser.add_argument("--gen-prompts", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=256)
    parser.add_argument("--max-minutes", type=float, default=4.0, help="learner rows after this are skipped")
    parser.add_argument("--skip", nargs="*", default=[], choices=["learner", "plain", "generation"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every part runs")
    parser.add_argument("--out", help="also write the tables as markdown to this file")
    args = parser.parse_args()
    if args.quick:
        args.budgets, args.minibatch_tokens, args.completion_tokens, args.prompt_tokens = [256, 512], 1024, 48, 16
        args.steps, args.plain_budget, args.gen_prompts, args.gen_tokens = 1, 512, 4, 16
    if args.model:
        args.arch = [os.path.basename(os.path.normpath(args.model))]
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast (optimizer-free parts)
    autocast = torch.bfloat16 if args.device == "cuda" else None  # CPU: fp32 (no bf16 units on most CPUs)
    deadline = Deadline(args.max_minutes)
    started = time.perf_counter()

    peak_dtype = torch.bfloat16 if autocast else torch.float32
    peak = matmul_peak(args.device, peak_dtype)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    import transformers

    header = [
        f"# Real architectures: learner and generation on {device_name}",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}; command: "
        f"`{' '.join(['python', *sys.argv])}`",
        f"Compute: {'bf16 autocast, fp32 master weights and AdamW state' if autocast else 'fp32'}; "
        f"measured {str(peak_dtype).split('.')[-1]} matmul peak {peak / 1e12:.1f} TFLOP/s (MFU's denominator).",
        f"Minibatch per step: {args.minibatch_tokens} tokens target (groups of 8 completions, prompts ~{args.prompt_tokens} "
        f"tokens, completions 25-100% of {args.completion_tokens}); {args.steps} timed step(s) after one warm-up."
        + (" --quick: each vocabulary with a 2-layer, 64-wide body." if args.quick else ""),
    ]
    print("\n".join(header), flush=True)
    sections = ["\n".join(header)]

    if "learner" not in args.skip:
        print("\n" + markdown_table(LEARNER_HEADERS, []), flush=True)
        rows = []
        for arch in args.arch:
            rows += learner_rows(args, arch, peak, deadline, autocast)
        sections.append("## Learner: one optimizer step per micro-batch budget\n\n" + markdown_table(LEARNER_HEADERS, rows))
    if "plain" not in args.skip:
        rows = [plain_row(args, arch, autocast) for arch in args.arch]
        sections.append("## The learner's step against a plain PyTorch step (same micro-batches)\n\n"
                        + markdown_table(PLAIN_HEADERS, rows))
        print("\n" + sections[-1], flush=True)
    if "generation" not in args.skip:
        rows = [generation_row(args, arch) for arch in args.arch]
        sections.append("## Generation (hf engine, sampled, temperature 1)\n\n" + markdown_table(GEN_HEADERS, rows))
        print("\n" + sections[-1], flush=True)
    total = time.perf_counter() - started
    sections.append(f"Total time: {total:.0f} s.")
    print(f"\nTotal time: {total:.0f} s.")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n\n".join(sections) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    try:
        main()
    except Exception:  # pragma: no cover - the top level: say what failed, exit non-zero
        traceback.print_exc()
        sys.exit(1)
