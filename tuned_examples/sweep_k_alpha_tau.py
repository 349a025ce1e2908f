"""A Ray Tune sweep with ASHA over SFPO's knobs K, α, τ and the learning rate, selected on a
validation split; the chosen config is tested once and written out as a tuned example.

Task:     sfpo/Arithmetic-v0 with the embedded tiny model, starting from arithmetic_sfpo.py.
Selection: held-out accuracy on split="validation" (a fixed tenth of the train split's
          problems, disjoint from test). Trials are ranked on it, never on test.
Test:     the chosen trial's final checkpoint is evaluated once on the test split
          (`sfpo-rllib evaluate`, the run's own protocol) and that number is reported.
Hardware: 2 CPU cores run --max-concurrent trials (default 1) at a time; on a cluster raise it.
Output:   --output DIR gets sweep_results.md (every trial) and best_config.py, a tuned
          example you run with `sfpo-rllib train file DIR/best_config.py`.
Time:     one trial at the defaults (40 iterations x 256 completions) takes 1.5-3 minutes
          on 2 idle cores; ASHA stops poor trials at --grace iterations.

Run:  python tuned_examples/sweep_k_alpha_tau.py --trials 16 --iters 40 --grace 10 --output runs/sweep
"""

from __future__ import annotations

import argparse
import json
import os
import runpy

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sfpo_rllib.tune_progress import TrialLines

HERE = os.path.dirname(os.path.abspath(__file__))
METRIC = "sfpo/test_accuracy"  # measured on the env named by test_env_config: validation here
SEARCH_SPACE = {
    "fast_steps": tune.choice([0, 1, 3]),  # <- crucial: K = 0 is GRPO
    "reposition_alpha": tune.choice([0.5, 0.8, 1.0]),  # <- crucial
    "entropy_z_threshold": tune.choice([1.0, 2.0, 3.0]),  # <- crucial
    "lr": tune.loguniform(1e-5, 3e-4),
}


class ASHAOnTests(ASHAScheduler):
    """ASHA that skips iterations without a held-out test (their accuracy is null)."""

    def on_trial_result(self, tune_controller, trial, result):
        if result.get(self._metric) is None:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if result.get(self._metric) is None:
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)


def base_config(args):
    config = runpy.run_path(os.path.join(HERE, "arithmetic_sfpo.py"))["config"].copy(copy_frozen=False)
    config.update_from_dict(json.loads(args.config))
    return config.held_out_test(
        test_interval=args.grace,  # a test at every ASHA rung (grace x 2^k)
        test_num_problems=args.test_problems,
        test_env_config={"split": "validation"},
    ).debugging(seed=args.seed)


def best_config_file(config, chosen: dict, validation: float, test: dict, args) -> str:
    c = config
    return f'''"""Chosen by tuned_examples/sweep_k_alpha_tau.py (ASHA, {args.trials} trials, seed {args.seed}).

Selection: validation accuracy {100 * validation:.1f}% (split="validation", {args.test_problems} problems x
          {c.test_samples_per_problem} samples at iteration {args.iters}).
Test, measured once on the chosen trial: {100 * test["accuracy"]:.1f}% ({test["problems"]} test problems x
          {c.test_samples_per_problem} samples, temperature {c.temperature}, top-p {c.top_p}).
One seed: re-measure over seeds with `sfpo-rllib compare` before trusting a difference.

Run:  sfpo-rllib train file {os.path.join(args.output, "best_config.py")} --output runs/best
"""

from sfpo_rllib import SFPOConfig

stop_iters = {args.iters}

config = (
    SFPOConfig()
    .environment({c.env!r}, env_config={c.env_config!r})
    .training(
        fast_steps={chosen["fast_steps"]},  # <- swept
        reposition_alpha={chosen["reposition_alpha"]},  # <- swept
        entropy_z_threshold={chosen["entropy_z_threshold"]},  # <- swept
        lr={chosen["lr"]!r},  # <- swept
        entropy_window={c.entropy_window},
        entropy_trigger={c.entropy_trigger!r},
        group_size={c.group_size},
        train_batch_size_per_learner={c.train_batch_size_per_learner},
        minibatch_size={c.minibatch_size},
        grad_clip={c.grad_clip},
        weight_decay={c.weight_decay},
    )
    .generation(model_name_or_path={c.model_name_or_path!r}, max_new_tokens={c.max_new_tokens}, temperature={c.temperature})
    .held_out_test(test_interval=10, test_num_problems={c.test_num_problems}, test_samples_per_problem={c.test_samples_per_problem})
    .debugging(seed={args.seed})
)
'''


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--iters", type=int, default=40, help="iterations of a trial that ASHA never stops")
    parser.add_argument("--grace", type=int, default=10, help="ASHA's first rung, and the test interval")
    parser.add_argument("--test-problems", type=int, default=200)
    parser.add_argument("--config", default="{}", help="JSON settings on top of arithmetic_sfpo.py (e.g. smaller batches)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-concurrent", type=int, default=1)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--output", default="runs/sweep")
    parser.add_argument("--tune-verbose", type=int, default=0, choices=[0, 1, 2],
                        help="Tune's own output: 0 (default) one line per trial event from us, errors and the final "
                             "table from Tune; 1 adds Tune's per-trial config and result tables; 2 every result")
    args = parser.parse_args(argv)
    if args.iters % args.grace:
        parser.error(f"--iters ({args.iters}) must be a multiple of --grace ({args.grace}) so the last rung is tested.")
    output = args.output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)

    config = base_config(args)
    config.resolved_model_path()  # build the tiny model once, before trials race for it
    param_space = config.copy(copy_frozen=False)
    for name, domain in SEARCH_SPACE.items():
        setattr(param_space, name, domain)

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        import sfpo_rllib
        from sfpo_rllib.evaluate import run_evaluate

        sfpo_rllib.register()
        # Tune warns about its own experiment snapshots whenever short trials checkpoint
        # often (each test rung); nothing a user of this sweep can act on.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        tuner = tune.Tuner(
            "SFPO",
            param_space=param_space,
            run_config=tune.RunConfig(
                stop={"training_iteration": args.iters},
                storage_path=os.path.join(output, "tune"),
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=args.grace, num_to_keep=1,
                                                        checkpoint_at_end=True),
                # 0: no 150-line config table per trial; errors and the final table still show.
                verbose=args.tune_verbose,
                callbacks=[TrialLines(metric=METRIC)] if args.tune_verbose == 0 else [],
            ),
            tune_config=tune.TuneConfig(
                num_samples=args.trials,
                scheduler=ASHAOnTests(metric=METRIC, mode="max", time_attr="training_iteration", max_t=args.iters,
                                      grace_period=args.grace, reduction_factor=2),
                # The generator limits concurrency itself: TuneConfig's max_concurrent_trials is
                # ignored (with a warning) when the search algorithm is a generator.
                search_alg=tune.search.BasicVariantGenerator(random_state=args.seed, max_concurrent=args.max_concurrent),
            ),
        )
        results = tuner.fit()
        rows = []
        for result in results:
            history = result.metrics_dataframe
            tested = history[history[METRIC].notna()] if METRIC in history else history.iloc[0:0]
            rows.append({
                **{name: result.config[name] for name in SEARCH_SPACE},
                "iterations": int(result.metrics.get("training_iteration", 0)),
                "validation_accuracy": float(tested[METRIC].iloc[-1]) if len(tested) else None,
                "checkpoint": result.checkpoint.path if result.checkpoint else None,
                "error": repr(result.error) if result.error else None,
            })
        ranked = sorted((r for r in rows if r["validation_accuracy"] is not None),
                        key=lambda r: (-r["iterations"], -r["validation_accuracy"]))
        if not ranked:
            raise RuntimeError(f"No trial reported a validation accuracy; errors: {[r['error'] for r in rows]}")
        best = ranked[0]  # the best of the trials that ran longest (ASHA's survivors)
        test = run_evaluate(
            model=None, checkpoint=best["checkpoint"], env=config.env, env_config=config.env_config, split="test",
            benchmarks=None, benchmarks_dir=None, n=config.test_samples_per_problem, temperature=config.temperature,
            top_p=config.top_p, top_k=None, max_new_tokens=None, engine=None, num_problems=args.test_problems,
            seed=args.seed, settings={}, output=os.path.join(output, "best_test"), progress=False,
        )
        result = test["models"][0]["benchmarks"]
        bench = next(iter(result.values()))
        test_summary = {"accuracy": bench[f"avg@{config.test_samples_per_problem}"], "problems": bench["problems"]}
    finally:
        ray.shutdown()

    lines = ["| K | alpha | tau | lr | iterations | validation accuracy % |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (-r["iterations"], -(r["validation_accuracy"] or -1))):
        acc = "-" if r["validation_accuracy"] is None else f"{100 * r['validation_accuracy']:.1f}"
        lines.append(f"| {r['fast_steps']} | {r['reposition_alpha']} | {r['entropy_z_threshold']} | {r['lr']:.2g} | "
                     f"{r['iterations']} | {acc} |")
    summary = (f"Chosen on validation: K={best['fast_steps']} alpha={best['reposition_alpha']} "
               f"tau={best['entropy_z_threshold']} lr={best['lr']:.3g} (validation {100 * best['validation_accuracy']:.1f}%); "
               f"its test accuracy, measured once: {100 * test_summary['accuracy']:.1f}% on {test_summary['problems']} problems.")
    with open(os.path.join(output, "sweep_results.md"), "w") as f:
        f.write("\n".join(lines) + "\n\n" + summary + "\n")
    with open(os.path.join(output, "best_config.py"), "w") as f:
        f.write(best_config_file(config, best, best["validation_accuracy"], test_summary, args))
    print("\n".join(lines) + "\n\n" + summary + f"\nwrote {output}/sweep_results.md and best_config.py")
    return {"rows": rows, "best": best, "test": test_summary}


if __name__ == "__main__":
    main()
