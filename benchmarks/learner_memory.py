"""Learner memory and throughput on a real vocabulary: today's path beside the bounded one.

Builds (locally, no download) a random Qwen2-architecture model with Qwen2.5's vocabulary
(151,936 tokens) and a tiny body (2 layers, 128 wide, untied output layer): the vocabulary
dominates memory, as it does for real models' log-prob passes. Each configuration runs in a
fresh subprocess that builds an SFPO learner (AdamW, fp32) and runs one GRPO iteration on
synthetic rollouts (``learner.update``: one optimizer step over the minibatch, whose forward
also gives θ⁰'s old log-probs and entropy). Printed per configuration:

* peak RSS: the process's resident high-water mark (``getrusage``), and the part above the
  learner's resident size before the iteration (``iter MiB``: activations, logits, grads,
  optimizer state on first use);
* tokens/s of the update (completion tokens; noisy on a shared machine, compare rows of one run);
* padding efficiency: real tokens / tokens computed (padding included).

Completion lengths vary (uniform between L/4 and L), prompts 32-96 tokens.

Run:  python benchmarks/learner_memory.py            (all rows; about 40 min on 2 busy cores)
      python benchmarks/learner_memory.py --quick    (rows up to 16 x 1024)
      python benchmarks/learner_memory.py --cli      (+ one SFPO iteration at 32 x 512 through the CLI)
      python benchmarks/learner_memory.py --cli-only (only that CLI iteration: resident memory of
                                                      all its processes, sampled every 0.5 s)
The old path ("full": one forward per minibatch, the whole (tokens, vocab) log-softmax) is
only run at 2 x 256 and 2 x 512 tokens: at 8 x 1024 it needs more than 24 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

VOCAB = 151_936
FLAT_BUDGET = 4096  # max_tokens_per_micro_batch of the "bounded" rows
CHUNK = 512  # logp_chunk_tokens of the "bounded" rows

ROWS = [
    # (path, completions, completion length)
    ("full", 2, 256),
    ("full", 2, 512),
    ("bounded", 2, 512),
    ("bounded", 8, 1024),
    ("bounded", 16, 1024),
    ("bounded", 32, 1024),
    ("bounded", 64, 1024),
]


def build_model(path: str) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    Qwen2ForCausalLM(config).save_pretrained(path)
    # The CLI row needs a tokenizer: the embedded character-level one (ids 0 = pad, 1 = eos, as
    # configured above). Ids beyond its 100 decode to nothing; the learner never decodes.
    from sfpo_rllib.tiny_model import build_tokenizer

    build_tokenizer().save_pretrained(path)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(model: str, path: str, completions: int, length: int) -> dict:
    """One configuration, in this (fresh) process."""
    import copy

    import numpy as np
    import torch
    from ray.rllib.core import DEFAULT_MODULE_ID

    from sfpo_envs import TextSpace, Verdict
    from sfpo_rllib import SFPOConfig
    from sfpo_rllib.batch import build_learner_batches
    from sfpo_rllib.columns import Rollout

    torch.set_num_threads(2)
    bounded = path == "bounded"
    rng = np.random.default_rng(0)
    records = [
        Rollout(
            prompt_ids=rng.integers(2, VOCAB, size=int(rng.integers(32, 97))).tolist(),
            completion_ids=rng.integers(2, VOCAB, size=int(rng.integers(length // 4, length + 1))).tolist(),
            verdict=Verdict.from_reward(float(rng.random())),
        )
        for _ in range(completions)
    ]
    config = (
        SFPOConfig()
        .environment("sfpo/Arithmetic-v0")
        .training(group_size=2, train_batch_size_per_learner=completions, minibatch_size=completions,
                  fast_steps=0, optimizer="adamw", lr=1e-6)
        .generation(model_name_or_path=model, max_new_tokens=length, max_prompt_tokens=96)
        .scaling(max_tokens_per_micro_batch=FLAT_BUDGET if bounded else None,
                 logp_chunk_tokens=CHUNK if bounded else None)
    )
    config.validate()
    learner = config.build_learner(spaces={DEFAULT_MODULE_ID: (TextSpace(), TextSpace())})
    (batch,), _ = build_learner_batches(records, group_size=2, num_learners=0,
                                        minibatch_size_per_learner=completions, pad_token_id=0)
    rss_before = rss_mib()
    t0 = time.perf_counter()
    out = learner.update(batch=copy.deepcopy(batch), timesteps={})["sfpo"]  # θ⁰ comes from the first step
    t1 = time.perf_counter()
    tokens = sum(len(r.completion_ids) for r in records)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "path": path, "completions": completions, "length": length, "tokens": tokens,
        "peak_rss_mib": peak, "iter_mib": peak - rss_before, "update_tok_s": tokens / (t1 - t0),
        "padding_efficiency": out.real_tokens / max(1.0, out.computed_tokens), "micro_batches": out.micro_batches,
    }


def run_cli(model: str, workdir: str) -> dict:
    """One SFPO iteration (K=1, α=0.8) of 32 completions x 512 tokens through the CLI: peak RSS of its processes.

    K=1 rather than the paper's 3 keeps the row's time down; memory does not grow with K
    (the fast passes reuse the same micro-batches; θ⁰ is one snapshot)."""
    plugin = os.path.join(workdir, "bench_plugin")
    os.makedirs(plugin, exist_ok=True)
    with open(os.path.join(plugin, "__init__.py"), "w") as f:
        f.write(
            "import gymnasium as gym\nfrom sfpo_envs import RewardFnEnv\n"
            "def make_env(data=None, split='train', **kw):\n"
            "    ex = [{'prompt': f'{a}+{a}=', 'target': str(2 * a)} for a in range(10)]\n"
            "    return RewardFnEnv(ex, reward_fn=lambda c, e: float(len(c) % 3 == 0))\n"
            "gym.register(id='bench/Any-v0', entry_point=make_env, disable_env_checker=True)\n"
        )
    settings = {"group_size": 8, "train_batch_size_per_learner": 32, "minibatch_size": 16, "max_new_tokens": 512,
                "max_prompt_tokens": 64, "test_interval": 0, "fast_steps": 1, "model_name_or_path": model,
                "max_tokens_per_micro_batch": 4096, "generation_batch_size": 32}
    env = dict(os.environ, PYTHONPATH=workdir + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "sfpo_rllib.cli", "train", "--env", "bench_plugin:bench/Any-v0", "--config",
           json.dumps(settings), "--stop-iters", "1", "--output", os.path.join(workdir, "run"), "--num-cpus", "2",
           "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    peak_total, peak_procs = 0.0, 0
    while proc.poll() is None:
        total, procs = process_tree_pss_mib(proc.pid)
        peak_total, peak_procs = max(peak_total, total), max(peak_procs, procs)
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"the CLI run failed (exit {proc.returncode})")
    peak_one = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    with open(os.path.join(workdir, "run", "metrics.jsonl")) as f:
        row = json.loads(f.readlines()[-1])
    return {"peak_rss_mib": peak_total, "largest_process_rss_mib": peak_one, "processes": peak_procs, "wall_s": wall,
            "tokens": row.get("completion_tokens"), "padding_efficiency": row.get("padding_efficiency"),
            "optimizer_steps": row.get("optimizer_steps")}


def process_tree_pss_mib(pid: int) -> tuple[float, int]:
    """Resident memory of a process and all its descendants (the CLI, Ray's daemons, the
    learner and env-runner workers), as the sum of their proportional set sizes: pages
    they share (libraries, Ray's object store) are counted once, not once per process."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20, len(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="rows up to 16 x 1024 only")
    parser.add_argument("--cli", action="store_true", help="also one SFPO iteration at 32 x 512 through the CLI")
    parser.add_argument("--cli-only", action="store_true", help="only the CLI iteration (no learner rows)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: model,path,completions,length
    args = parser.parse_args()
    if args.one:
        model, path, completions, length = args.one.split(",")
        print("RESULT " + json.dumps(run_one(model, path, int(completions), int(length))))
        return

    rows = [r for r in ROWS if not args.quick or r[1] * r[2] <= 16 * 1024] if not args.cli_only else []
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        model = os.path.join(workdir, "qwen2-real-vocab")
        build_model(model)
        print(f"{'path':8} {'rows x len':>11} {'tokens':>7} {'micro':>5} {'peak RSS MiB':>12} {'iter MiB':>9} "
              f"{'update tok/s':>12} {'pad eff':>7}", flush=True)
        for path, completions, length in rows:
            out = subprocess.run([sys.executable, __file__, "--one", f"{model},{path},{completions},{length}"],
                                 capture_output=True, text=True)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if out.returncode or not line:
                print(f"{path:8} {completions:>4} x {length:<5} failed (exit {out.returncode}): "
                      f"{out.stderr.strip().splitlines()[-1:] }", flush=True)
                continue
            r = json.loads(line[0][len("RESULT "):])
            results.append(r)
            print(f"{path:8} {completions:>4} x {length:<5} {r['tokens']:>7} {r['micro_batches']:>5} "
                  f"{r['peak_rss_mib']:>12.0f} {r['iter_mib']:>9.0f} "
                  f"{r['update_tok_s']:>12.0f} {r['padding_efficiency']:>7.2f}", flush=True)
        flat = [r for r in results if r["path"] == "bounded" and r["length"] == 1024]
        if len(flat) >= 2:
            lo, hi = flat[0], flat[-1]
            print(f"\npeak RSS {lo['completions']} -> {hi['completions']} completions x 1024 (budget {FLAT_BUDGET}): "
                  f"{lo['peak_rss_mib']:.0f} -> {hi['peak_rss_mib']:.0f} MiB ({hi['peak_rss_mib'] / lo['peak_rss_mib'] - 1:+.0%}; "
                  "must stay within 25%)")
        for r in results:
            if r["path"] == "bounded":
                print(f"per completion token, {r['completions']} x {r['length']}: "
                      f"{r['iter_mib'] * 1024 / r['tokens']:.1f} KiB above the learner's resting size")
        if args.cli or args.cli_only:
            r = run_cli(model, workdir)
            results.append({"path": "cli", **r})
            print(f"\nCLI, one SFPO iteration (K=1), 32 x 512 tokens, budget 4096: peak resident memory of all "
                  f"{r['processes']} processes {r['peak_rss_mib']:.0f} MiB (sum of PSS; "
                  f"{'within' if r['peak_rss_mib'] <= 6 * 1024 else 'OVER'} 6 GiB), largest process "
                  f"{r['largest_process_rss_mib']:.0f} MiB RSS, {r['wall_s']:.0f} s, {r['tokens']} completion tokens, "
                  f"padding efficiency {r['padding_efficiency']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
