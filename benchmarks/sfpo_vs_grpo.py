"""SFPO vs fair GRPO baselines, over seeds: a thin front end to `sfpo-rllib compare`.

Arms (all on top of --base, default tuned_examples/arithmetic_sfpo.py, at the learning rate --lr):
  GRPO                      one pass per batch (K = 0)
  SFPO K=3 a=0.8            the tuned example's fast-reposition-slow
  GRPO 4 epochs             the same number of optimizer steps as SFPO K=3, no reposition (α = 1)
  GRPO 4x lr                one pass per batch at 4 x lr (a tuned-lr GRPO; --no-lr-arm drops it)

With --trigger, the entropy trigger's rules instead (docs/results.md, "The entropy trigger's default"):
  GRPO, and the tuned SFPO with entropy_trigger "rise" at tau=1 and "abs" at tau=1 and tau=2.

With --family, the slow-fast family side by side (docs/slow_fast_family.md):
  GRPO, GRPO 4 epochs, SFPO K=3 a=0.8, GXPO (fast_stage "gxpo": two fast steps extrapolated to
  K=5, a=0.5, its preceding-window entropy gate at tau=3; the GXPO authors' defaults) and
  SFPO+DGG (the tuned SFPO with reuse gated on the lm_head gradient norm instead of entropy).

Each (arm, seed) is an ordinary training run kept under --output/runs/, so an interrupted or
extended comparison re-uses what finished. Prints the table; --output gets report.md,
results.json and the plots.

Run:  python benchmarks/sfpo_vs_grpo.py --lr 3e-5 --seeds 0,1,2 --iters 40 --output runs/sfpo_vs_grpo_lr3e-5
"""

from __future__ import annotations

import argparse
import json
import os

from sfpo_rllib.cli import main as cli

TUNED = os.path.join(os.path.dirname(__file__), "..", "tuned_examples", "arithmetic_sfpo.py")


def tuned_sfpo(lr: float) -> dict:
    """The tuned example's SFPO (K=3, α=0.8) at ``lr``."""
    return {"algo": "SFPO", "fast_steps": 3, "reposition_alpha": 0.8, "lr": lr}


def trigger_arms(lr: float) -> dict[str, dict]:
    sfpo = tuned_sfpo(lr)
    return {
        "GRPO": {"algo": "GRPO", "lr": lr},
        "SFPO rise tau=1": {**sfpo, "entropy_trigger": "rise", "entropy_z_threshold": 1.0},
        "SFPO abs tau=1": {**sfpo, "entropy_trigger": "abs", "entropy_z_threshold": 1.0},
        "SFPO abs tau=2": {**sfpo, "entropy_trigger": "abs", "entropy_z_threshold": 2.0},
    }


def gxpo(lr: float) -> dict:
    """GXPO with the authors' defaults (dp_actor.py: gxpo_k 5, gxpo_alpha 0.5, gxpo_tau 3.0,
    gxpo_zscore_w 30; its gate scores entropy against the preceding window)."""
    return {"algo": "SFPO", "fast_stage": "gxpo", "fast_steps": 2, "gxpo_virtual_steps": 5, "reposition_alpha": 0.5,
            "entropy_trigger": "preceding", "entropy_z_threshold": 3.0, "entropy_window": 30, "lr": lr}


def family_arms(lr: float) -> dict[str, dict]:
    return {
        "GRPO": {"algo": "GRPO", "lr": lr},
        "GRPO 4 epochs": {"algo": "GRPO", "num_epochs": 4, "lr": lr},
        "SFPO K=3 a=0.8": tuned_sfpo(lr),
        "GXPO K=5 a=0.5": gxpo(lr),
        "SFPO+DGG": {**tuned_sfpo(lr), "reuse_gate": "lm_head_grad"},
    }


def arms(lr: float, *, lr_arm: bool) -> dict[str, dict]:
    out = {
        "GRPO": {"algo": "GRPO", "lr": lr},
        "SFPO K=3 a=0.8": tuned_sfpo(lr),
        "GRPO 4 epochs": {"algo": "GRPO", "num_epochs": 4, "lr": lr},
    }
    if lr_arm:
        out["GRPO 4x lr"] = {"algo": "GRPO", "lr": 4 * lr}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=TUNED, help="tuned-example file every arm starts from")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--no-lr-arm", action="store_true", help="leave out the GRPO-at-4x-lr arm")
    parser.add_argument("--trigger", action="store_true", help="compare the entropy trigger's rules instead")
    parser.add_argument("--family", action="store_true", help="GRPO, GRPO 4 epochs, SFPO, GXPO and SFPO+DGG")
    parser.add_argument("--arm-names", default=None, help="comma-separated subset of the arms, in this order")
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    arms_file = os.path.join(args.output, "arms.json")
    with open(arms_file, "w") as f:
        if args.family:
            chosen = family_arms(args.lr)
        elif args.trigger:
            chosen = trigger_arms(args.lr)
        else:
            chosen = arms(args.lr, lr_arm=not args.no_lr_arm)
        if args.arm_names:
            chosen = {name: chosen[name] for name in args.arm_names.split(",")}
        json.dump(chosen, f, indent=1)
    cli(["compare", "--base", args.base, "--arms", arms_file, "--seeds", args.seeds, "--iters", str(args.iters),
         "--baseline", "GRPO", "--output", args.output, "--num-cpus", str(args.num_cpus), "--no-progress"])
    print(costs_table(args.output, list(chosen), [int(s) for s in args.seeds.split(",")]))


def costs_table(output: str, names: list[str], seeds: list[int]) -> str:
    """What each arm paid per run: optimizer steps, learner-update seconds, and where its fast stage stopped."""
    from sfpo_rllib.compare import _slug
    from sfpo_rllib.run_logger import read_metrics

    lines = ["| arm | optimizer steps per run | update seconds per run | fast stage off from iteration |", "|---|---|---|---|"]
    for name in names:
        steps, seconds, off = [], [], []
        for seed in seeds:
            path = os.path.join(output, "runs", _slug(name), f"seed_{seed}", "metrics.jsonl")
            rows = [r for r in read_metrics(path) if r["iteration"] > 0] if os.path.exists(path) else []
            if rows:
                steps.append(sum(r["optimizer_steps"] for r in rows))
                seconds.append(sum(r["time_update_s"] for r in rows))
                off.append(rows[-1]["switch_off_iteration"])
        span = lambda xs, f: f"{f(min(xs))}–{f(max(xs))}" if xs else "n/a"  # noqa: E731
        lines.append(f"| {name} | {span(steps, str)} | {span(seconds, lambda x: f'{x:.0f}')} | "
                     f"{', '.join('never' if o is None else str(o) for o in off) or 'n/a'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
