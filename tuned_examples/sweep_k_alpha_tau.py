"""A Ray Tune sweep over SFPO's own knobs: K (fast_steps), α (reposition_alpha), τ (entropy_z_threshold).

Task:     sfpo/Arithmetic-v0 with the embedded tiny model (swap in your env and model).
Hardware: 2 CPU cores run one trial at a time; on a cluster, raise --max-concurrent and give
          trials GPUs with .learners(num_gpus_per_learner=1).
Expected: a table of final held-out accuracy per (K, α, τ); K=0 rows are the GRPO baseline.
Time:     about 1 minute per trial at the default 8 iterations on 2 cores.

Run:  python tuned_examples/sweep_k_alpha_tau.py --iters 8 --storage runs/sweep
"""

import argparse
import os

import ray
from ray import tune

from sfpo_rllib import SFPOConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--storage", default="runs/sweep")
    parser.add_argument("--max-concurrent", type=int, default=1)
    args = parser.parse_args()

    config = (
        SFPOConfig()
        .environment("sfpo/Arithmetic-v0")
        .training(
            fast_steps=tune.grid_search([0, 1, 3]),  # <- crucial: K = 0 is GRPO
            reposition_alpha=tune.grid_search([0.5, 0.8]),  # <- crucial
            entropy_z_threshold=tune.grid_search([1.0, 2.0]),  # <- crucial
            group_size=8,
            train_batch_size_per_learner=128,
            minibatch_size=128,
            lr=1e-4,
            weight_decay=0.0,
        )
        .generation(model_name_or_path="sfpo-tiny-arithmetic", max_new_tokens=16)
        .held_out_test(test_interval=args.iters, test_num_problems=200, test_samples_per_problem=4)
        .debugging(seed=0)
    )
    config.resolved_model_path()  # build the tiny model once, before trials race for it
    ray.init(include_dashboard=False)
    tuner = tune.Tuner(
        "SFPO",
        param_space=config,
        run_config=tune.RunConfig(
            stop={"training_iteration": args.iters}, storage_path=os.path.abspath(args.storage), verbose=1
        ),
        tune_config=tune.TuneConfig(max_concurrent_trials=args.max_concurrent),
    )
    results = tuner.fit()
    print(f"{'K':>3} {'alpha':>6} {'tau':>5} {'test_accuracy':>14}")
    for result in sorted(results, key=lambda r: -r.metrics["sfpo"].get("test_accuracy", 0.0)):
        c = result.config
        print(f"{c['fast_steps']:>3} {c['reposition_alpha']:>6} {c['entropy_z_threshold']:>5} "
              f"{result.metrics['sfpo'].get('test_accuracy', float('nan')):>14.3f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
