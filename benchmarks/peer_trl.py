"""Our GRPO against TRL's GRPOTrainer on SmolLM2-135M-Instruct, same settings: one table.

Each side runs as its own process tree (ours: ``sfpo-rllib train --algo GRPO``, Ray included;
TRL's: ``peer_trl_trl_side.py`` in TRL's own venv), one after the other, while this script
samples the summed PSS of that tree every 0.5 s. Both train on the task of
``peer_trl_task.py`` (additions, reward = the last integer is the sum) with the same prompts
in the same order (TRL gets the order our run drew), the same batch shape (P prompts x G
completions, one optimizer step per batch, one forward over the whole batch), lr, clip,
loss aggregation (TRL ``loss_type="dapo"`` = our ``loss_agg="token-mean"``), group-std
advantages, no KL, temperature, weight decay, gradient clipping, constant lr, LoRA (or full
fine-tuning), gradient checkpointing and fp32. One scoring function (this script's
``--score`` child, plain transformers) then scores the starting model and both trained
models greedily on the same held-out problems.

Run:  python benchmarks/peer_trl.py                               (4 prompts x 4, <= 64 tokens, 4 steps)
      python benchmarks/peer_trl.py --steps 20 --prompts 8 --group-size 8 --held-out 128
Needs: the model (``sfpo-rllib models fetch smollm2-135m-instruct``) and TRL in a separate venv
(default ``.venv-trl``: ``python -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0
'trl>=1.16,<2' peft``; see docs/peer_trl.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from peer_trl_task import ENV_ID, problems, reward  # noqa: E402

MODEL = "smollm2-135m-instruct"


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(2)


def run_sampled(cmd: list[str], env: dict, log_path: str) -> tuple[int, float, float]:
    """Run ``cmd``; its exit code, wall seconds and the peak summed PSS (MiB) of its process tree."""
    from learner_memory import process_tree_pss_mib

    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, process_tree_pss_mib(proc.pid)[0])
            time.sleep(0.5)
    return proc.returncode, time.perf_counter() - t0, peak


def tail(path: str, lines: int = 3) -> str:
    with open(path) as f:
        return " / ".join(f.read().strip().splitlines()[-lines:])[-300:]


def ours(s: dict, workdir: str) -> dict:
    order_file = os.path.join(workdir, "ours-order.jsonl")
    settings = {
        "model_name_or_path": s["model"], "seed": s["seed"], "chat_template": "always",
        "env_config": {"count": s["train_problems"], "order_file": order_file},
        "test_env_config": {"split": "test", "count": 1}, "test_interval": 0,
        "test_num_problems": 1, "test_samples_per_problem": 1,  # the CLI always tests the final model: keep it minimal
        "group_size": s["group_size"], "train_batch_size_per_learner": s["prompts"] * s["group_size"],
        "minibatch_size": s["prompts"] * s["group_size"], "num_epochs": 1,
        "max_new_tokens": s["max_new_tokens"], "temperature": s["temperature"], "top_p": 1.0, "top_k": 0,
        "lr": s["lr"], "clip_param": s["clip"], "loss_agg": "token-mean", "advantage_std_norm": True, "kl_coeff": 0.0,
        "optimizer": "adamw", "weight_decay": s["weight_decay"], "adam_betas": [0.9, 0.999], "grad_clip": s["grad_clip"],
        "lora_rank": s["lora_rank"], "lora_alpha": s["lora_alpha"], "lora_dropout": 0.0,
        "gradient_checkpointing": s["gradient_checkpointing"],
    }
    out = os.path.join(workdir, "ours")
    cmd = [sys.executable, "-m", "sfpo_rllib.cli", "train", "--algo", "GRPO", "--env", f"peer_trl_task:{ENV_ID}",
           "--config", json.dumps(settings), "--stop-iters", str(s["steps"]), "--output", out,
           "--num-cpus", str(s["threads"]), "--no-progress", "--checkpoint-every", str(10**6)]
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code, wall, peak = run_sampled(cmd, env, os.path.join(workdir, "ours.log"))
    if code:
        return {"error": f"exit {code}: {tail(os.path.join(workdir, 'ours.log'))}"}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(order_file) as f:
        order = [json.loads(line) for line in f if line.strip()]
    return {"wall_s": wall, "peak_mib": peak, "final_model": os.path.join(out, "final_model"), "order": order,
            "generation_s": [r["time_generate_s"] + r["time_verify_s"] for r in rows],
            "update_s": [r["time_update_s"] for r in rows],
            "step_s": [r["time_iteration_s"] for r in rows[:-1]] or [r["time_iteration_s"] for r in rows],
            "reward": [r["reward_mean"] for r in rows]}


def trl(s: dict, workdir: str, order: list[int]) -> dict:
    out = os.path.join(workdir, "trl")
    os.makedirs(out)
    cmd = [s["trl_python"], os.path.join(HERE, "peer_trl_trl_side.py"), json.dumps({**s, "output": out, "prompt_order": order})]
    code, wall, peak = run_sampled(cmd, dict(os.environ), os.path.join(workdir, "trl.log"))
    if code:
        return {"error": f"exit {code}: {tail(os.path.join(workdir, 'trl.log'))}"}
    with open(os.path.join(out, "steps.jsonl")) as f:
        steps = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(out, "log.jsonl")) as f:
        logs = [json.loads(line) for line in f if line.strip()]
    return {"wall_s": wall, "peak_mib": peak, "final_model": os.path.join(out, "final_model"),
            "generation_s": [r["generation_s"] for r in steps],
            "update_s": [r["step_s"] - r["generation_s"] for r in steps],
            "step_s": [r["step_s"] for r in steps], "reward": [r["reward"] for r in logs if "reward" in r]}


def score(model_path: str, held_out: int, max_new_tokens: int, threads: int) -> float:
    """Greedy accuracy on the first ``held_out`` held-out problems: the one scorer of all models."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    examples = problems("test", held_out)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": e["prompt"]}], add_generation_prompt=True,
                                           tokenize=False) for e in examples]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    completions = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(reward(c, e) for c, e in zip(completions, examples)) / len(examples)


def scored(model_path: str, s: dict) -> float | str:
    cmd = [sys.executable, __file__, "--score", json.dumps([model_path, s["held_out"], s["max_new_tokens"], s["threads"]])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        return f"error: {(out.stderr.strip().splitlines() or ['no output'])[-1][:120]}"
    return float(lines[0][len("RESULT "):])


def spread(values: list[float]) -> str:
    """Median and range of per-step seconds."""
    if not values:
        return ""
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (= batches) per side")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per batch")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--clip", type=float, default=0.2)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--lora-rank", type=int, default=8, help="0 = full fine-tuning on both sides")
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="(TRL's default is on)")
    parser.add_argument("--held-out", type=int, default=64, help="held-out problems scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (and Ray CPUs) per side")
    parser.add_argument("--trl-python", default=os.path.join(os.path.dirname(HERE), ".venv-trl", "bin", "python"),
                        help="the Python of the venv TRL is installed in")
    parser.add_argument("--keep", help="keep the runs' folders (logs, final models) here instead of a temporary folder")
    parser.add_argument("--out", help="also write the table as markdown to this file")
    parser.add_argument("--score", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score:
        print(f"RESULT {score(*json.loads(args.score))}")
        return
    if not os.path.exists(args.trl_python):
        fail(f"--trl-python: {args.trl_python} does not exist; install TRL in its own venv "
             "(python -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 'trl>=1.16,<2' peft) or pass its Python")
    os.environ["PEER_TRL_HELD_OUT"] = str(args.held_out)  # the task's held-out/train split, for every process
    from sfpo_rllib.models import cache_folder

    model = cache_folder(MODEL) / "float32"
    if not model.is_dir():
        fail(f"model {MODEL} is not in the cache ({model}); run `sfpo-rllib models fetch {MODEL}` once")
    s = {"model": str(model), "steps": args.steps, "prompts": args.prompts, "group_size": args.group_size,
         "train_problems": args.steps * args.prompts, "max_new_tokens": args.max_new_tokens, "lr": args.lr,
         "clip": args.clip, "temperature": args.temperature, "weight_decay": args.weight_decay,
         "grad_clip": args.grad_clip, "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
         "gradient_checkpointing": not args.no_gradient_checkpointing, "held_out": args.held_out, "seed": args.seed,
         "threads": args.threads, "trl_python": args.trl_python}
    try:  # too many steps x prompts (or held-out problems) for the task: one line, before any run
        problems("test", args.held_out)
        problems("train", s["train_problems"])
    except ValueError as err:
        fail(f"--steps x --prompts / --held-out: {err}")
    trl_version = subprocess.run([args.trl_python, "-c", "import trl; print(trl.__version__)"], capture_output=True,
                                 text=True).stdout.strip() or "?"
    import torch
    import transformers

    started = time.perf_counter()
    workdir = args.keep or tempfile.mkdtemp(prefix="peer_trl-")
    os.makedirs(workdir, exist_ok=True)
    results = {"sfpo-rllib GRPO": ours(s, workdir)}
    order = results["sfpo-rllib GRPO"].get("order")
    results["TRL GRPOTrainer"] = trl(s, workdir, order) if order else {"error": "needs our side's prompt order"}
    base = scored(str(model), s)
    headers = ["trainer", "step s", "generation s", "update s", "peak PSS GiB (tree)", "wall s", "train reward",
               "held-out before", "held-out after", "gain", "error"]
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "", "", "", "", "", "", "", "", "", r["error"]])
            continue
        after = scored(r["final_model"], s)
        gain = f"{(after - base) * 100:+.1f} pts" if isinstance(after, float) and isinstance(base, float) else ""
        pct = lambda v: f"{v:.1%}" if isinstance(v, float) else v  # noqa: E731
        rows.append([name, spread(r["step_s"]), spread(r["generation_s"]), spread(r["update_s"]),
                     f"{r['peak_mib'] / 1024:.2f}", f"{r['wall_s']:.0f}",
                     " ".join(f"{x:.2f}" for x in r["reward"]), pct(base), pct(after), gain, ""])
    shape = (f"{args.prompts} prompts x {args.group_size} completions, <= {args.max_new_tokens} new tokens, {args.steps} "
             f"steps, lr {args.lr:g}, {'LoRA r' + str(args.lora_rank) if args.lora_rank else 'full FT'}, "
             f"gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, fp32, {args.threads} threads; "
             f"held-out: {args.held_out} problems, greedy")
    lines = [
        f"# sfpo-rllib GRPO vs TRL GRPOTrainer on {MODEL}",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, transformers {transformers.__version__}, TRL {trl_version}; "
        f"command: `python {' '.join(sys.argv)}`",
        shape,
        "step, generation, update: median (min-max) seconds per step; generation includes scoring the rewards.",
        "| " + " | ".join(headers) + " |\n|" + "---|" * len(headers) + "\n"
        + "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
        f"Total time: {time.perf_counter() - started:.0f} s; runs in {workdir}.",
    ]
    text = "\n\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
