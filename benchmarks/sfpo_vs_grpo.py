"""SFPO vs GRPO side by side: rollouts and wall-clock to reach GRPO's best held-out accuracy.

The paper's headline ("up to 4.93x fewer rollouts, 4.19x less wall-clock to reach GRPO's
best accuracy"), measured in spirit on this machine. Every arm trains from the same
starting model with the same seed, prompts and settings, and differs only in K and α. The
arms run one after another in one invocation. Each arm is evaluated on the same held-out
problems every `--test-every` iterations.

Run:  python benchmarks/sfpo_vs_grpo.py --iters 60 --test-every 5
Prints one table; `--json PATH` also writes every arm's per-iteration metrics.
"""

from __future__ import annotations

import argparse
import json
import statistics

import ray

from sfpo_rllib import GRPOConfig, SFPOConfig

ARMS = {
    "GRPO": dict(cls=GRPOConfig, training={}),
    "SFPO K=3 a=0.8": dict(cls=SFPOConfig, training=dict(fast_steps=3, reposition_alpha=0.8)),
    "GRPO 4 epochs": dict(cls=GRPOConfig, training=dict(num_epochs=4)),
}


def arm_config(arm: dict, args) -> SFPOConfig:
    return (
        arm["cls"]()
        .environment("sfpo/Arithmetic-v0")
        .training(group_size=8, train_batch_size_per_learner=args.batch, minibatch_size=args.batch // 2,
                  lr=args.lr, weight_decay=0.0, entropy_trigger=args.trigger, **arm["training"])
        .generation(model_name_or_path="sfpo-tiny-arithmetic", max_new_tokens=16)
        .held_out_test(test_interval=args.test_every, test_num_problems=200, test_samples_per_problem=4)
        .debugging(seed=args.seed)
    )


def run_arm(config, iters: int) -> list[dict]:
    algo = config.build_algo()
    try:
        rows = []
        for s in range(1, iters + 1):
            algo.test_due = s == iters
            row = {k: v for k, v in algo.train()["sfpo"].items() if v is not None}
            rows.append(row)
        return rows
    finally:
        algo.stop()


def first_reaching(rows: list[dict], target: float) -> dict | None:
    elapsed = 0.0
    for row in rows:
        elapsed += row["time_generate_s"] + row["time_update_s"]  # training time; held-out tests excluded
        if row.get("test_accuracy", -1.0) >= target:
            return {"rollouts": row["rollouts"], "seconds": elapsed, "iteration": row["iteration"]}
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--test-every", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256, help="completions per iteration")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--trigger", default="rise", choices=["abs", "rise"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    results = {name: run_arm(arm_config(arm, args), args.iters) for name, arm in ARMS.items()}
    ray.shutdown()

    start = next(r["test_accuracy_initial"] for r in results["GRPO"] if "test_accuracy_initial" in r)
    grpo_best = max(r["test_accuracy"] for r in results["GRPO"] if "test_accuracy" in r)
    base = first_reaching(results["GRPO"], grpo_best)
    print(f"\nstart accuracy {start:.3f}; GRPO's best {grpo_best:.3f} "
          f"(200 held-out problems x 4 samples, temperature 1; {args.iters} iterations of {args.batch} completions)")
    print(f"{'arm':<16} {'best acc':>8} {'final acc':>9} {'rollouts to GRPO best':>22} {'x fewer':>7} "
          f"{'train s to GRPO best':>21} {'x faster':>8} {'s/iter (median)':>15}")
    for name, rows in results.items():
        tests = [r["test_accuracy"] for r in rows if "test_accuracy" in r]
        hit = first_reaching(rows, grpo_best)
        per_iter = statistics.median(r["time_generate_s"] + r["time_update_s"] for r in rows)
        if hit:
            ratio_r = f"{base['rollouts'] / hit['rollouts']:.2f}"
            ratio_t = f"{base['seconds'] / hit['seconds']:.2f}"
            reached = f"{hit['rollouts']:>22d}"
            secs = f"{hit['seconds']:>21.1f}"
        else:
            ratio_r = ratio_t = "-"
            reached, secs = f"{'not reached':>22}", f"{'-':>21}"
        print(f"{name:<16} {max(tests):>8.3f} {tests[-1]:>9.3f} {reached} {ratio_r:>7} {secs} {ratio_t:>8} {per_iter:>15.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
