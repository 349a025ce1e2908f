"""Start-up time and memory of a training run, phase by phase, for several Ray settings side by side.

Each arm runs in a fresh process, as the command-line tool would: import, ``ray.init``,
build the algorithm (model load, environments, learner, runners), the step-0 held-out test,
the first training iteration. This process samples the proportional set size (PSS: shared
pages split among the processes sharing them) of the arm's whole process tree (the driver
and every Ray process it starts) every 0.2 s and reports the peak.

  python benchmarks/startup.py                                # tuned_examples/arithmetic_sfpo.py
  python benchmarks/startup.py --repeats 3 --arms before,after
  python benchmarks/startup.py --config '{"num_env_runners": 1, "num_cpus_per_env_runner": 0.5}'

Arms (each a combination of the settings that changed):
  before     ray.init(include_dashboard=False) with Ray's defaults, and torch.distributed.tensor
             imported at start-up (as sharding.py used to)
  lean-ray   the CLI's Ray instance now (rllib_compat.local_ray_options: no pre-started idle
             workers, no metrics collection), torch.distributed.tensor still imported
  after      both changes: what the CLI does now
The embedded model must be built already (run any training once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("import_s", "ray_init_s", "build_algo_s", "step0_test_s", "first_iteration_s")
ARMS = {  # name -> (lean Ray instance, import torch.distributed.tensor at start-up)
    "before": (False, True),
    "lean-ray": (True, True),
    "after": (True, False),
}


def child(arm: str, config_json: str, test_problems: int) -> None:
    """One arm, in this (fresh) process: prints one JSON line of phase times."""
    lean, eager_dtensor = ARMS[arm]
    t0 = time.perf_counter()
    if eager_dtensor:
        import torch.distributed.tensor  # noqa: F401
    import runpy

    import ray

    from sfpo_rllib.rllib_compat import algorithm_logdir, local_ray_options

    config = runpy.run_path(os.path.join(REPO, "tuned_examples", "arithmetic_sfpo.py"))["config"]
    config.update_from_dict(json.loads(config_json))
    config.held_out_test(test_num_problems=test_problems)
    t1 = time.perf_counter()
    ray.init(num_cpus=2, configure_logging=False, log_to_driver=False, **local_ray_options(lean=lean))
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as logs, algorithm_logdir(logs):
        algo = config.build_algo()
        t3 = time.perf_counter()
        algo.run_test(iteration=0)
        t4 = time.perf_counter()
        algo.train()
        t5 = time.perf_counter()
        algo.stop()
    ray.shutdown()
    times = dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)))
    print("STARTUP " + json.dumps(times), flush=True)


def tree_pss(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_arm(arm: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", arm, "--config", args.config,
           "--test-problems", str(args.test_problems)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(root))
        time.sleep(0.2)
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.read().splitlines() if line.startswith("STARTUP ")]
    if proc.returncode or not lines:
        raise SystemExit(f"arm {arm!r} failed (exit {proc.returncode}); run it alone: {' '.join(cmd)}")
    return {**json.loads(lines[-1][len("STARTUP "):]), "total_s": wall, "peak_pss_gib": peak / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from: {', '.join(ARMS)}")
    parser.add_argument("--repeats", type=int, default=2, help="runs per arm, interleaved (default 2)")
    parser.add_argument("--config", default="{}", help="JSON settings on top of tuned_examples/arithmetic_sfpo.py")
    parser.add_argument("--test-problems", type=int, default=200, help="held-out problems in the step-0 test")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.config, args.test_problems)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    results = {arm: [] for arm in arms}
    for _ in range(args.repeats):  # interleaved, so a busy moment of the machine hits every arm
        for arm in arms:
            results[arm].append(run_arm(arm, args))
    columns = (*PHASES, "total_s", "peak_pss_gib")
    print(f"\nsettings {args.config}, step-0 test on {args.test_problems} problems, {args.repeats} run(s) per arm "
          "(min-max; one value when equal)\n")
    print("| arm | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for arm, runs in results.items():
        cells = []
        for c in columns:
            lo, hi = min(r[c] for r in runs), max(r[c] for r in runs)
            cells.append(f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}")
        print(f"| {arm} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
