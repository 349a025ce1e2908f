"""PPO (GRPO's loss) vs GSPO vs CISPO under SFPO, over seeds: a thin front end to `sfpo-rllib compare`.

Arms (all on top of --base, default tuned_examples/arithmetic_sfpo.py: SFPO K=3, α=0.8):
  PPO     policy_loss="ppo", the default token-level clipped surrogate
  GSPO    policy_loss="gspo" with the paper's aggregation (seq-mean-token-mean) and clip range
          (low 3e-4, high 4e-4; arXiv 2507.18071)
  CISPO   policy_loss="cispo", the lower side of the IS-weight clip almost open
          (clip_param_low=0.99) as in the paper (arXiv 2506.13585), the upper at clip_param

Each (arm, seed) is an ordinary training run kept under --output/runs/. Prints the table;
--output gets report.md, results.json and the plots (docs/policy_losses.md).

Run:  python benchmarks/policy_losses.py --seeds 0,1,2 --iters 40 --output runs/policy_losses
"""

from __future__ import annotations

import argparse
import json
import os

from sfpo_rllib.cli import main as cli

TUNED = os.path.join(os.path.dirname(__file__), "..", "tuned_examples", "arithmetic_sfpo.py")

ARMS = {
    "PPO": {"policy_loss": "ppo"},
    "GSPO": {"policy_loss": "gspo", "loss_agg": "seq-mean-token-mean", "clip_param_low": 3e-4, "clip_param_high": 4e-4},
    "CISPO": {"policy_loss": "cispo", "clip_param_low": 0.99},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=TUNED, help="tuned-example file every arm starts from")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    arms_file = os.path.join(args.output, "arms.json")
    with open(arms_file, "w") as f:
        json.dump(ARMS, f, indent=1)
    cli(["compare", "--base", args.base, "--arms", arms_file, "--seeds", args.seeds, "--iters", str(args.iters),
         "--baseline", "PPO", "--output", args.output, "--num-cpus", str(args.num_cpus), "--no-progress"])


if __name__ == "__main__":
    main()
