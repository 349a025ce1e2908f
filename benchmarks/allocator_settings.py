"""Host memory settings against time and memory, on SmolLM2-135M's architecture: one table.

The trainer sets glibc's mmap threshold per phase (64 KiB around a learner update, 32 MiB
around generation) and asks PyTorch for transparent huge pages on large tensors
(``sfpo_rllib/allocator.py``). This measures why: each row runs one phase in a fresh process
under one setting, the same work otherwise.

* generation: the ``hf`` engine, ``--gen`` rows x new tokens (random prompts of 48 tokens),
  row-steps/s (rows x decoding steps per second) and peak RSS;
* update (long rows): one GRPO learner update (``SFPOTorchLearner.update``, LoRA rank 8, gradient
  checkpointing, micro-batches of 4,096 tokens) over ``--update-prompts`` x 8 synthetic
  completions of up to ``--length`` tokens, seconds and peak RSS;
* update (short rows): the same over the SmolLM2 tuned example's batch (8 prompts of about 45
  tokens x 8 completions of up to 24, no checkpointing, micro-batches of 2,048 tokens, each
  prompt once per group: ``share_prompt_prefix``).

Settings: glibc's defaults (its threshold rises to 32 MiB as large blocks are freed), a fixed
32 MiB, 4 MiB, 2 MiB or 64 KiB threshold, each of the last three also with huge pages
(``THP_MEM_ALLOC_ENABLE=1``).

Run:  python benchmarks/allocator_settings.py                   (about 20 minutes on 2 cores)
      python benchmarks/allocator_settings.py --phases "update (short rows)" --settings "fixed 64 KiB + huge pages,fixed 2 MiB + huge pages"
      python benchmarks/allocator_settings.py --quick           (small shapes: a smoke run)
      python benchmarks/allocator_settings.py --model FOLDER    (a real model folder)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MiB, GiB = 2**20, 2**30
# name: (mmap threshold in bytes, None = glibc's defaults; huge pages)
SETTINGS = {
    "glibc defaults": (None, False),
    "fixed 32 MiB": (32 * MiB, False),
    "fixed 4 MiB": (4 * MiB, False),
    "fixed 4 MiB + huge pages": (4 * MiB, True),
    "fixed 2 MiB": (2 * MiB, False),
    "fixed 2 MiB + huge pages": (2 * MiB, True),
    "fixed 64 KiB": (64 * 1024, False),
    "fixed 64 KiB + huge pages": (64 * 1024, True),
}
# update phases: name -> (checkpointing, micro-batch budget, prompt tokens, share_prompt_prefix)
UPDATE_SHAPES = {
    "update (long rows)": (True, 4096, 50, False),
    "update (short rows)": (False, 2048, 45, True),  # tuned_examples/smollm2_sfpo_lora.py
}
PHASES = ("generation", *UPDATE_SHAPES)


def generation_row(model: str, threshold: int | None, rows: int, tokens: int) -> dict:
    import torch

    from real_model import EOS
    from sfpo_rllib.allocator import set_mmap_threshold
    from sfpo_rllib.engines import SamplingParams
    from sfpo_rllib.engines.hf import HFGenerateEngine
    from sfpo_rllib.logprobs import load_causal_lm

    if threshold is not None:
        set_mmap_threshold(threshold)
    torch.set_num_threads(2)
    engine = HFGenerateEngine(load_causal_lm(model), pad_token_id=0, eos_token_id=EOS, max_batch_size=rows)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 49_152, (48,), generator=g).tolist() for _ in range(rows)]
    t0 = time.perf_counter()
    completions = engine.generate(prompts, 1, SamplingParams(max_new_tokens=tokens), seed=0)
    seconds = time.perf_counter() - t0
    steps = max(len(c) for c in completions)
    return {"seconds": seconds, "rate": rows * steps / seconds, "peak_bytes": peak_rss_bytes()}


def update_row(model: str, threshold: int | None, shape: str, prompts: int, length: int) -> dict:
    import real_model
    import sfpo_rllib.sfpo_torch_learner as learner_module
    from sfpo_rllib.allocator import set_mmap_threshold

    @contextlib.contextmanager
    def this_setting():  # in place of the learner's own malloc_for_update
        if threshold is not None:
            set_mmap_threshold(threshold)
        yield

    learner_module.malloc_for_update = this_setting
    checkpointing, budget, prompt_length, share = UPDATE_SHAPES[shape]
    r = real_model.one_learner_row(model, True, checkpointing, budget, prompts, length, prompt_length, share)
    return {"seconds": r["seconds"], "rate": r["tokens"] / r["seconds"], "peak_bytes": r["peak_bytes"]}


def describe_update(shape: str, prompts: int, length: int) -> str:
    checkpointing, budget, prompt_length, share = UPDATE_SHAPES[shape]
    return (f"{prompts} prompts of ~{prompt_length} tokens x 8 completions <= {length} tokens, "
            f"{budget:,}-token micro-batches, checkpointing {'on' if checkpointing else 'off'}"
            f"{', prompts once per group' if share else ''}")


def peak_rss_bytes() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def in_subprocess(phase: str, setting: str, *args) -> dict:
    from real_model import child_result

    threshold, huge = SETTINGS[setting]
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1" if huge else "0")  # read once, before torch allocates
    return child_result(__file__, [phase, threshold, *args], env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a real model folder (default: SmolLM2-135M's architecture, random weights)")
    parser.add_argument("--gen", type=int, nargs=2, default=[64, 96], metavar=("ROWS", "TOKENS"))
    parser.add_argument("--update-prompts", type=int, default=4, help="prompts (x 8 completions) of the long-row update")
    parser.add_argument("--length", type=int, default=192, help="longest completion of the long-row update (25-100%%)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of: {', '.join(PHASES)}")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of: {', '.join(SETTINGS)}")
    parser.add_argument("--quick", action="store_true", help="8 x 16 generation, 1-prompt updates of <= 32 and 24 tokens")
    parser.add_argument("--out", help="also write the table as markdown to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        phase, threshold, model, *shape = json.loads(args.child)
        row = generation_row(model, threshold, *shape) if phase == "generation" else update_row(model, threshold, phase, *shape)
        print("RESULT " + json.dumps(row))
        return
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for name, given, known in (("--phases", phases, PHASES), ("--settings", settings, SETTINGS)):
        unknown = [g for g in given if g not in known]
        if unknown or not given:
            parser.exit(2, f"allocator_settings.py: {name} {unknown or given!r}: each must be one of {', '.join(known)}; "
                           "pick from those (comma-separated).\n")
    if args.quick:
        args.gen, args.update_prompts, args.length = [8, 16], 1, 32
    # phase -> its size: generation rows x new tokens; an update's prompts x 8 and longest completion
    sizes = {"generation": tuple(args.gen), "update (long rows)": (args.update_prompts, args.length),
             "update (short rows)": (1 if args.quick else 8, 24)}

    from real_arch import cpu_name, markdown_table
    from real_model import save_random_model

    header = (f"# Host memory settings, SmolLM2-135M's architecture{' (' + args.model + ')' if args.model else ' (random weights)'}\n\n"
              f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_name()}, 2 torch threads; "
              f"generation {args.gen[0]} rows x {args.gen[1]} new tokens; updates: GRPO, LoRA r8"
              + "".join(f"; {phase}: {describe_update(phase, *sizes[phase])}" for phase in UPDATE_SHAPES)
              + f"; command: `python {' '.join(sys.argv)}`")
    print(header, flush=True)
    headers = ["phase", "setting", "seconds", "rate", "vs first setting", "peak RSS GiB", "error"]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        model = args.model
        if not model:
            model = os.path.join(workdir, "smollm2-135m-random")
            save_random_model(model)
        for phase in phases:
            shape = list(sizes[phase])
            unit = "row-steps/s" if phase == "generation" else "tokens/s"
            base = None
            for setting in settings:
                r = in_subprocess(phase, setting, model, *shape)
                if "error" in r:
                    rows.append([phase, setting, "", "", "", "", r["error"]])
                else:
                    base = base or r["seconds"]
                    rows.append([phase, setting, f"{r['seconds']:.1f}", f"{r['rate']:.0f} {unit}",
                                 f"{r['seconds'] / base:.2f}x" if base else "", f"{r['peak_bytes'] / GiB:.2f}", ""])
                print(markdown_table(headers, rows[-1:]).splitlines()[-1], flush=True)
    table = markdown_table(headers, rows)
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
