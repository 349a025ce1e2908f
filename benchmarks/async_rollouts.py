"""One-step-off rollouts (rollout_lag=1) against generate-then-update (lag 0), same resources.

Timing (default): GRPO and SFPO (K=3, α=0.8), lag 0 and lag 1, each with one env runner of
``--runner-threads`` torch threads and one learner in the driver with ``--learner-threads``
torch threads, on the embedded model (``--model sfpo-tiny-arithmetic``) or a fetched one
(``--model smollm2-135m-instruct``, after ``sfpo-rllib models fetch smollm2-135m-instruct``).
Prints, per arm, the median over iterations 2.. of: seconds per iteration, generation
(the batch trained on), update, the overlap of the update with the next batch's generation,
and lag 1's time as a fraction of lag 0's; then, per algorithm, the least ratio lag 0's split
allows (max(G, U) / (G + U): overlapped, an iteration takes max(G, U) instead of G + U) and
whether it permits the 0.75 target.

Lag 1 can only hide generation behind the update when the two really run at once: the
runner and the learner need cores of their own. The table therefore also prints how many
cores the machine has and the load average when it started; on a machine with fewer free
cores than runner + learner threads the "overlap" is time-sliced, not parallel, and the
ratio shows it.

Accuracy (``--accuracy``): held-out gain of lag 1 against lag 0 over seeds, through
``sfpo-rllib compare`` on the LoRA tuned example (tis_cap 2.0 in both arms).

Run:  python benchmarks/async_rollouts.py --iters 6
      python benchmarks/async_rollouts.py --model smollm2-135m-instruct --algos SFPO --iters 2 --prompts 2 --tokens 32 --lora-rank 8
      python benchmarks/async_rollouts.py --accuracy --seeds 0,1,2 --output runs/async_accuracy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import sfpo_rllib  # noqa: F401  before torch, as in the CLI: the package's host memory settings (allocator.py)

TUNED_LORA = os.path.join(os.path.dirname(__file__), "..", "tuned_examples", "arithmetic_sfpo_lora.py")
ALGOS = {"GRPO": {"fast_steps": 0}, "SFPO": {"fast_steps": 3, "reposition_alpha": 0.8}}


def config_for(args, algo: str, lag: int):
    from sfpo_rllib import SFPOConfig

    group = 8
    return (
        SFPOConfig()
        .environment("sfpo/Arithmetic-v0", env_config={"num_operands": 3, "max_operand": 20})
        .training(**ALGOS[algo], group_size=group, train_batch_size_per_learner=args.prompts * group,
                  minibatch_size=args.prompts * group // 2, lr=3e-5, entropy_trigger="rise",
                  tis_cap=2.0, rollout_lag=lag, lora_rank=args.lora_rank)
        .generation(model_name_or_path=args.model, max_new_tokens=args.tokens, temperature=1.0,
                    chat_template="none", torch_threads_per_runner=args.runner_threads)
        .held_out_test(test_interval=0)
        .env_runners(num_env_runners=1, num_cpus_per_env_runner=args.runner_threads)
        .learners(num_learners=0)
        .debugging(seed=0)
    )


def time_arm(args, algo: str, lag: int) -> dict:
    import torch

    torch.set_num_threads(args.learner_threads)  # the local learner runs in this process
    algo_ = config_for(args, algo, lag).build_algo()
    try:
        rows = [algo_.train()["sfpo"] for _ in range(args.iters)]
    finally:
        algo_.stop()
    later = rows[1:] or rows  # iteration 1 of lag 1 generates its batch before updating
    med = lambda name: statistics.median((r[name] or 0.0) for r in later)  # noqa: E731
    return {"algo": algo, "lag": lag, "iteration_s": med("time_iteration_s"), "generate_s": med("time_rollout_s"),
            "update_s": med("time_update_s"), "overlap_s": med("time_overlap_s"),
            "spread_s": (min(r["time_iteration_s"] for r in later), max(r["time_iteration_s"] for r in later))}


TARGET_RATIO = 0.75  # the issue's criterion: lag 1 takes at most this fraction of lag 0's time


def overlap_bound(generate_s: float, update_s: float) -> float:
    """The least lag 1 / lag 0 ratio the split allows: overlapped, an iteration takes at best
    max(G, U) instead of G + U (weight sync and bookkeeping only add to both)."""
    return max(generate_s, update_s) / (generate_s + update_s)


def why_lines(rows: list[dict], *, cores: int, load: float, threads: int) -> list[str]:
    """What the measured split allows, per algorithm, from its lag-0 generation and update."""
    lines = [f"{cores} cores, load average {load:.1f} at the start, runner + learner need {threads} threads: "
             + ("cores to spare" if cores - load >= threads else
                f"only {max(cores - load, 0.0):.1f} cores free, so generation and update are time-sliced, not parallel")]
    for r in rows:
        if r["lag"]:
            continue
        gen, upd = r["generate_s"], r["update_s"]
        bound = overlap_bound(gen, upd)
        verdict = (f"lag 1 cannot reach {TARGET_RATIO} here whatever the cores: the shorter part would have to be at "
                   f"least {(1 - TARGET_RATIO) / TARGET_RATIO:.2f}x the longer one, it is {min(gen, upd) / max(gen, upd):.2f}x"
                   if bound > TARGET_RATIO else f"lag 1 can reach {TARGET_RATIO} only with a core each for runner and learner")
        lines.append(f"{r['algo']}: generation {gen:.2f} s + update {upd:.2f} s at lag 0, so lag 1 takes at least "
                     f"max/sum = {max(gen, upd):.2f}/{gen + upd:.2f} = {bound:.2f} of lag 0; {verdict}")
    return lines


def timing(args) -> None:
    import ray

    ray.init(num_cpus=args.runner_threads + args.learner_threads, include_dashboard=False,
             configure_logging=False, log_to_driver=False)
    load = os.getloadavg()[0]
    rows = []
    try:
        for algo in args.algos.split(","):
            for lag in (0, 1):
                rows.append(time_arm(args, algo, lag))
                # Each arm as it ends: at the real model's full shape one arm takes most of an hour.
                print("arm done: " + json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    print(f"model {args.model}, {args.prompts} prompts x 8, {args.tokens} new tokens, lora_rank {args.lora_rank}; "
          f"runner {args.runner_threads} thread(s), learner {args.learner_threads}; {os.cpu_count()} cores, "
          f"load average {load:.1f} at the start; medians over iterations 2..{args.iters}")
    print(f"{'arm':<12}{'s/iter':>9}{'range':>15}{'generate':>10}{'update':>9}{'overlap':>9}{'lag1/lag0':>11}")
    base = {}
    for r in rows:
        if r["lag"] == 0:
            base[r["algo"]] = r["iteration_s"]
        ratio = f"{r['iteration_s'] / base[r['algo']]:.2f}" if r["lag"] else ""
        spread = f"{r['spread_s'][0]:.1f}-{r['spread_s'][1]:.1f}"
        print(f"{r['algo'] + ' lag ' + str(r['lag']):<12}{r['iteration_s']:>9.2f}{spread:>15}{r['generate_s']:>10.2f}"
              f"{r['update_s']:>9.2f}{r['overlap_s']:>9.2f}{ratio:>11}")
    for line in why_lines(rows, cores=os.cpu_count(), load=load, threads=args.runner_threads + args.learner_threads):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def accuracy(args) -> None:
    from sfpo_rllib.cli import main as cli

    arms = {"lag 0": {"tis_cap": 2.0, "num_env_runners": 1}, "lag 1": {"tis_cap": 2.0, "rollout_lag": 1, "num_env_runners": 1}}
    argv = ["compare", "--base", TUNED_LORA, "--seeds", args.seeds, "--output", args.output]
    for name, settings in arms.items():
        argv += ["--arm", f"{name}={json.dumps(settings)}"]
    if args.accuracy_iters:
        argv += ["--iters", str(args.accuracy_iters)]
    cli(argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sfpo-tiny-arithmetic")
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per iteration (8 completions each)")
    parser.add_argument("--tokens", type=int, default=16, help="max_new_tokens")
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--algos", default="GRPO,SFPO", help=f"comma-separated, from {', '.join(ALGOS)}")
    parser.add_argument("--runner-threads", type=int, default=1)
    parser.add_argument("--learner-threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--accuracy", action="store_true", help="held-out gain over seeds instead of timing")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--accuracy-iters", type=int, help="iterations per run (default: the tuned example's 40)")
    parser.add_argument("--output", default="runs/async_accuracy")
    args = parser.parse_args()
    t0 = time.perf_counter()
    accuracy(args) if args.accuracy else timing(args)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
