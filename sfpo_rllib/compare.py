"""``sfpo-rllib compare``: several arms x several seeds on the same prompts and held-out problems.

  sfpo-rllib compare --base tuned_examples/arithmetic_sfpo.py --arms benchmarks/arms_sfpo_vs_grpo.json \\
      --seeds 0,1,2 --iters 40 --output runs/compare

An *arm* is a name and a dict of settings applied on top of the base config (a tuned-example
file and/or ``--config``); ``"algo": "GRPO"`` switches the fast stage off. Arms come from a
JSON file (``{"GRPO": {"algo": "GRPO"}, ...}``), a Python file defining ``arms = {...}``, or
``--arm 'NAME={...}'`` flags. Every (arm, seed) run is an ordinary training run (the CLI's
``run_training``) in ``OUTPUT/runs/<arm>/seed_<s>/``; a finished run is kept and not re-run,
an interrupted one resumes from its last checkpoint. The seed fixes the prompts of every
iteration and the held-out problems, so arms with the same seed see the same data.

Output: ``report.md`` (the table, the protocol, the command), ``results.json`` (everything,
per-run curves included) and ``accuracy_vs_rollouts.png`` / ``accuracy_vs_seconds.png``
(mean over seeds, band from the lowest to the highest seed).

The target accuracy (default: the best point of the baseline arm's mean-over-seeds curve)
is what "rollouts / seconds to target" measure, as in the paper's "to reach GRPO's best".
Training seconds exclude the held-out tests.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import statistics
import time
from typing import Any

DONE_FILE = "done.json"  # written last: a run with it is finished and is never re-run


# ----- arms ----------------------------------------------------------------------------------
def load_arms(path: str | None, flags: list[str]) -> dict[str, dict[str, Any]]:
    """Arms from a JSON / Python file and ``NAME=JSON`` flags, in the order given."""
    arms: dict[str, dict[str, Any]] = {}
    if path:
        if not os.path.isfile(path):
            raise ValueError(f"--arms: file {path!r} does not exist.")
        if path.endswith(".py"):
            found = runpy.run_path(path).get("arms")
            if found is None:
                raise ValueError(f"--arms: {path} defines no `arms` dict (name -> settings).")
        else:
            try:
                with open(path) as f:
                    found = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"--arms: {path} is not valid JSON ({err}).") from None
        if not isinstance(found, dict) or not all(isinstance(v, dict) for v in found.values()):
            raise ValueError(f"--arms: {path} must hold an object of arm name -> settings object.")
        arms.update(found)
    for flag in flags:
        cut = flag.find("={")  # names may hold '=' ("SFPO K=3"); the settings start at '={'
        name, settings = (flag[:cut], flag[cut + 1 :]) if cut >= 0 else (flag, "")
        try:
            parsed = json.loads(settings) if settings else None
        except json.JSONDecodeError as err:
            raise ValueError(f"--arm {flag!r}: the settings are not valid JSON ({err}).") from None
        if not name or not isinstance(parsed, dict):
            raise ValueError(f"--arm {flag!r} must be NAME='{{\"setting\": value, ...}}', e.g. GRPO='{{\"algo\": \"GRPO\"}}'.")
        arms[name] = parsed
    if not arms:
        raise ValueError("No arms: give --arms FILE and/or --arm NAME=JSON (at least one).")
    return arms


def arm_config(base, name: str, settings: dict[str, Any], seed: int):
    """The base config with the arm's settings and the seed applied (a copy)."""
    from sfpo_rllib import ALGORITHMS, config_of

    settings = dict(settings)
    algo = settings.pop("algo", None)
    if algo is not None and algo not in ALGORITHMS:
        raise ValueError(f"arm {name!r}: `algo` ({algo!r}) must be one of {', '.join(ALGORITHMS)}.")
    config = config_of(algo, base.to_dict()) if algo else base.copy(copy_frozen=False)
    for key in settings:
        if not hasattr(config, key):
            from sfpo_rllib.sfpo_config import closest_setting

            close = closest_setting(key, config)
            hint = f" Did you mean {close!r}?" if close else ""
            raise ValueError(f"arm {name!r}: unknown setting {key!r}.{hint}")
    config.update_from_dict(settings)
    config.debugging(seed=seed)
    config.validate()
    return config


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "arm"


# ----- running -------------------------------------------------------------------------------
def run_all(base, arms: dict, seeds: list[int], iters: int, output: str, *, progress: bool = True, log=print) -> dict:
    """Train every (arm, seed) not finished yet; returns {arm: {seed: run folder}}."""
    from sfpo_rllib.train_run import latest_checkpoint, run_training

    folders: dict[str, dict[int, str]] = {}
    # Seed-major: an interrupted comparison has every arm on the seeds it finished.
    configs = {(name, seed): arm_config(base, name, settings, seed) for seed in seeds for name, settings in arms.items()}
    for name in arms:
        folders[name] = {}
    for (name, seed), config in configs.items():
        folder = os.path.join(output, "runs", _slug(name), f"seed_{seed}")
        folders[name][seed] = folder
        identity = {"arm": name, "settings": arms[name], "seed": seed, "iters": iters}
        done = os.path.join(folder, DONE_FILE)
        if os.path.exists(done):
            with open(done) as f:
                recorded = json.load(f)
            if {k: recorded.get(k) for k in identity} != json.loads(json.dumps(identity)):
                raise ValueError(
                    f"{folder} holds a finished run with other settings ({ {k: recorded.get(k) for k in identity} }); "
                    "use another --output, or delete that folder to re-run it."
                )
            log(f"[compare] {name} seed {seed}: finished earlier, kept ({folder})")
            continue
        resume = latest_checkpoint(os.path.join(folder, "checkpoints")) is not None
        if not resume and os.path.isdir(folder):
            shutil.rmtree(folder)  # a run interrupted before its first checkpoint: start it again
        log(f"[compare] {name} seed {seed}: {'resuming' if resume else 'training'} {iters} iterations -> {folder}")
        t0 = time.perf_counter()
        run_training(config, stop_iters=iters, output_dir=folder, resume=resume, checkpoint_every=10,
                     keep_checkpoints=1, progress=progress)
        with open(done, "w") as f:
            json.dump({**identity, "wall_s": time.perf_counter() - t0}, f, indent=1)
    return folders


# ----- summarising ---------------------------------------------------------------------------
def run_curve(rows: list[dict]) -> list[dict]:
    """Held-out test points of one run: iteration, rollouts, training seconds so far, accuracy."""
    points, seconds = [], 0.0
    for row in sorted(rows, key=lambda r: r["iteration"]):
        if row["iteration"] > 0:
            seconds += row.get("time_iteration_s") or 0.0  # the held-out test is not in it
            if "time_unix" not in row:  # rows written before time_iteration_s left the test out
                seconds -= row.get("time_test_s") or 0.0
        if row.get("test_accuracy") is not None:
            points.append({"iteration": row["iteration"], "rollouts": row["rollouts"], "seconds": seconds,
                           "accuracy": row["test_accuracy"], "pass_at_k": row.get("test_pass_at_k")})
    return points


def _first_reaching(points: list[dict], target: float) -> dict | None:
    return next((p for p in points if p["accuracy"] >= target - 1e-12), None)


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "sd": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarise(curves: dict[str, dict[int, list[dict]]], *, baseline: str, target: float | None = None) -> dict:
    """Per arm: start, final, best and gain over seeds; rollouts and seconds to the target."""
    mean_curves = {}
    for name, runs in curves.items():
        iterations = [p["iteration"] for p in next(iter(runs.values()))]
        if any([p["iteration"] for p in pts] != iterations for pts in runs.values()):
            raise ValueError(f"arm {name!r}: its seeds were tested at different iterations; cannot average them.")
        mean_curves[name] = [
            {key: statistics.fmean(pts[i][key] for pts in runs.values()) for key in ("rollouts", "seconds", "accuracy")}
            | {"iteration": iterations[i]}
            for i in range(len(iterations))
        ]
    if baseline not in curves:
        raise ValueError(f"--baseline {baseline!r} is not an arm; arms: {', '.join(curves)}.")
    if target is None:
        target = max(p["accuracy"] for p in mean_curves[baseline])
    base_hit = _first_reaching(mean_curves[baseline], target)
    arms = {}
    for name, runs in curves.items():
        per_seed = list(runs.values())
        hit = _first_reaching(mean_curves[name], target)
        seed_hits = [_first_reaching(pts, target) for pts in per_seed]
        reached = [h for h in seed_hits if h is not None]
        arms[name] = {
            "start": _spread([pts[0]["accuracy"] for pts in per_seed]),
            "final": _spread([pts[-1]["accuracy"] for pts in per_seed]),
            "best": _spread([max(p["accuracy"] for p in pts) for pts in per_seed]),
            "gain": _spread([pts[-1]["accuracy"] - pts[0]["accuracy"] for pts in per_seed]),
            "final_pass_at_k": _spread([pts[-1]["pass_at_k"] for pts in per_seed if pts[-1]["pass_at_k"] is not None]),
            "train_seconds": _spread([pts[-1]["seconds"] for pts in per_seed]),
            "mean_curve_to_target": hit,
            "seeds_reaching_target": len(reached),
            "rollouts_to_target": _spread([h["rollouts"] for h in reached]),
            "seconds_to_target": _spread([h["seconds"] for h in reached]),
            "rollout_ratio_vs_baseline": (base_hit["rollouts"] / hit["rollouts"]) if hit and base_hit and hit["rollouts"] else None,
            "seconds_ratio_vs_baseline": (base_hit["seconds"] / hit["seconds"]) if hit and base_hit and hit["seconds"] else None,
        }
    return {"target": target, "baseline": baseline, "mean_curves": mean_curves, "arms": arms}


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def table_markdown(summary: dict, num_seeds: int) -> str:
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines = [
        f"| arm | start % | final % (mean ± sd) | gain, points: mean ± sd [min, max] | best %, mean of the seeds' best | "
        f"rollouts to {100 * summary['target']:.1f}% | x fewer | train s to target | x faster | "
        "seeds reaching target | train s in all |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in summary["arms"].items():
        hit = a["mean_curve_to_target"] or {}
        gain = a["gain"]
        lines.append(
            f"| {name} | {_pct(a['start']['mean'])} | {_pct(a['final']['mean'])} ± {_pct(a['final']['sd'])} | "
            f"{_pct(gain['mean'], True)} ± {_pct(gain['sd'])} [{_pct(gain['min'], True)}, {_pct(gain['max'], True)}] | "
            f"{_pct(a['best']['mean'])} | {num(hit.get('rollouts'), '.0f') if hit else 'not reached'} | "
            f"{num(a['rollout_ratio_vs_baseline'], '.2f')} | {num(hit.get('seconds'), '.0f')} | "
            f"{num(a['seconds_ratio_vs_baseline'], '.2f')} | {a['seeds_reaching_target']}/{num_seeds} | "
            f"{num(a['train_seconds']['mean'], '.0f')} |"
        )
    return "\n".join(lines)


def plot(curves: dict, output: str) -> list[str]:
    """accuracy against rollouts and against training seconds: mean line, min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for x_key, label in (("rollouts", "rollouts (completions sampled)"), ("seconds", "training seconds (tests excluded)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, runs in curves.items():
            per_seed = list(runs.values())
            n = len(per_seed[0])
            xs = [statistics.fmean(pts[i][x_key] for pts in per_seed) for i in range(n)]
            accs = [[100 * pts[i]["accuracy"] for pts in per_seed] for i in range(n)]
            line, = ax.plot(xs, [statistics.fmean(a) for a in accs], marker="o", markersize=3, label=name)
            ax.fill_between(xs, [min(a) for a in accs], [max(a) for a in accs], color=line.get_color(), alpha=0.15)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out accuracy, % (mean over seeds; band: min-max)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(output, f"accuracy_vs_{x_key}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def compare(base, arms: dict, *, seeds: list[int], iters: int, output: str, baseline: str | None = None,
            target: float | None = None, command: str = "", progress: bool = True, log=print) -> dict:
    """Run what is missing, then write report.md, results.json and the plots into ``output``."""
    from sfpo_rllib.run_logger import read_metrics

    output = os.path.abspath(output)
    os.makedirs(output, exist_ok=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    folders = run_all(base, arms, seeds, iters, output, progress=progress, log=log)
    wall = time.perf_counter() - t0
    curves = {name: {seed: run_curve(read_metrics(os.path.join(folder, "metrics.jsonl"))) for seed, folder in runs.items()}
              for name, runs in folders.items()}
    for name, runs in curves.items():
        for seed, points in runs.items():
            if len(points) < 2 or points[0]["iteration"] != 0:
                raise ValueError(
                    f"arm {name!r} seed {seed}: needs held-out tests at iteration 0 and later; set test_interval > 0."
                )
    summary = summarise(curves, baseline=baseline or next(iter(arms)), target=target)
    plots = plot(curves, output)
    c = base
    protocol = {
        "env": c.env, "env_config": c.env_config, "test_env_config": c.test_env_config,
        "test_num_problems": c.test_num_problems, "test_samples_per_problem": c.test_samples_per_problem,
        "temperature": c.temperature, "top_p": c.top_p, "max_new_tokens": c.max_new_tokens,
        "test_interval": c.test_interval, "iters": iters, "seeds": seeds,
    }
    machine = {"cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "wall_s_this_invocation": wall}
    results = {"command": command, "protocol": protocol, "machine": machine, "arms_settings": arms,
               "target": summary["target"], "baseline": summary["baseline"], "arms": summary["arms"],
               "mean_curves": summary["mean_curves"],
               "runs": {name: {str(seed): pts for seed, pts in runs.items()} for name, runs in curves.items()}}
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = table_markdown(summary, len(seeds))
    target_source = "given" if target is not None else f"the best point of the mean curve of {summary['baseline']!r}"
    report = [
        "# compare", "",
        f"Command: `{command}`" if command else "", "",
        f"{len(arms)} arms x {len(seeds)} seeds ({', '.join(map(str, seeds))}), {iters} iterations each. "
        f"Held-out accuracy: the mean over {c.test_samples_per_problem} samples per problem at temperature "
        f"{c.temperature} (top-p {c.top_p}) on {c.test_num_problems or 'all'} test problems of `{c.env}`, "
        f"every {c.test_interval} iterations and at the end. Target: {100 * summary['target']:.1f}% "
        f"({target_source}). "
        "Rollouts and seconds to target are read off the mean-over-seeds curve; training seconds exclude the tests.",
        "", table, "",
        "Arms (settings on top of the base config):", "",
        *[f"- **{name}**: `{json.dumps(settings)}`" for name, settings in arms.items()], "",
        f"Machine: {machine['cpus']} CPUs, load average {load_before[0]:.1f} before and "
        f"{machine['load_average_after'][0]:.1f} after; this invocation ran {wall / 60:.1f} min "
        "(runs kept from earlier invocations are not counted).", "",
        *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots], "",
    ]
    with open(os.path.join(output, "report.md"), "w") as f:
        f.write("\n".join(report))
    log(table)
    log(f"[compare] wrote {os.path.join(output, 'report.md')}, results.json and {len(plots)} plots")
    return results


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds ({text!r}) must be comma-separated integers, e.g. 0,1,2.") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds ({text!r}) must list at least one seed, each once.")
    return seeds
