"""``sfpo-rllib evaluate``: avg@n and unbiased pass@k of a model on held-out problems.

  sfpo-rllib evaluate --model runs/x/final_model --env sfpo/Arithmetic-v0 --n 4 --top-p 1.0 --output runs/x/eval
  sfpo-rllib evaluate --model /models/Qwen2.5-Math-1.5B --benchmarks math500,aime24 \\
      --benchmarks-dir data/benchmarks --n 4 --temperature 1 --top-p 0.7 --output eval/qwen
  sfpo-rllib evaluate --checkpoint runs/x --output runs/x/eval     # every checkpoint of a run

Generation and scoring go through the trainer's own env runner (``SFPOEnvRunner.evaluate``:
the same prompts, chat template, engine and verifier as the held-out test during
training), so a number here means what ``test_accuracy`` means in ``metrics.jsonl``.

Metrics: avg@n and unbiased pass@k (scoring.py, the same code as the held-out test).
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from typing import Any

from sfpo_rllib.model_cache import TINY_MODEL_NAME
from sfpo_rllib.scoring import ks_for, pass_at_k, score_counts  # noqa: F401  (evaluate's API)
from sfpo_rllib.models import PRETRAINED_MODELS

# Benchmark name -> (file in --benchmarks-dir, environment, prompt template). The files are
# the public releases' file names (docs/cli.md, "Evaluating a model").
BENCHMARKS = {
    "math500": ("math500_test.jsonl", "sfpo/Math-v0", "math"),
    "aime24": ("aime24_test.jsonl", "sfpo/Math-v0", "math"),
    "aime25": ("aime25_test.jsonl", "sfpo/Math-v0", "math"),
    "amc23": ("amc23_test.jsonl", "sfpo/Math-v0", "math"),
    "minerva": ("minerva_math_test.jsonl", "sfpo/Math-v0", "math"),
    "olympiadbench": ("olympiadbench_test.jsonl", "sfpo/Math-v0", "math"),
    "gsm8k": ("gsm8k_test.jsonl", "sfpo/Math-v0", "math"),
    "humaneval": ("humaneval.jsonl.gz", "sfpo/Code-v0", "code"),
    "mbpp": ("mbpp_sanitized_test.jsonl", "sfpo/Code-v0", "code"),
}
# The SFPO authors' validation protocol, the default for a model given by --model.
DEFAULT_PROTOCOL = {"n": 4, "temperature": 1.0, "top_p": 0.7}
_CHECKPOINT_RE = re.compile(r"^iteration_(\d+)$")


# ----- what to evaluate -------------------------------------------------------------------
def benchmark_tasks(names: str, directory: str | None) -> dict[str, tuple[str, dict]]:
    """--benchmarks a,b,c -> {name: (env id, env_config)}; errors name the fix."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BENCHMARKS]
    if unknown or not wanted:
        raise ValueError(f"--benchmarks: unknown name(s) {unknown or names!r}; known: {', '.join(BENCHMARKS)}.")
    if not directory or not os.path.isdir(directory):
        raise ValueError(f"--benchmarks-dir ({directory!r}) must be the folder holding the benchmark files "
                         f"(e.g. {BENCHMARKS['math500'][0]}).")
    tasks = {}
    for name in wanted:
        file, env_id, template = BENCHMARKS[name]
        path = os.path.join(directory, file)
        if not os.path.isfile(path):
            raise ValueError(f"--benchmarks {name}: {path} does not exist; --benchmarks-dir must hold {file}.")
        tasks[name] = (env_id, {"data": os.path.abspath(path), "split": "test", "prompt_template": template})
    return tasks


def load_checkpoint_policy(runner, path: str) -> None:
    """Give ``runner`` (module and rollout engine) the policy of an algorithm checkpoint.

    The policy's folder is RLlib's documented checkpoint layout (learner group / learner /
    RL module / module id), read by RLlib's own ``RLModule.restore_from_path``."""
    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_LEARNER_GROUP, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID

    runner.module.restore_from_path(  # absolute: RLlib reads the path as a URI (pyarrow)
        os.path.join(os.path.abspath(path), COMPONENT_LEARNER_GROUP, COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID)
    )
    runner.set_state({COMPONENT_RL_MODULE: {DEFAULT_MODULE_ID: runner.module.get_state()}})  # and to the engine


def find_checkpoints(path: str) -> list[str]:
    """An RLlib checkpoint folder itself, or every ``iteration_N`` checkpoint of a run folder."""
    if os.path.isfile(os.path.join(path, "rllib_checkpoint.json")):
        return [path]
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    found = sorted((int(m.group(1)), name) for name in (os.listdir(root) if os.path.isdir(root) else [])
                   if (m := _CHECKPOINT_RE.match(name)))
    if not found:
        raise ValueError(f"--checkpoint {path!r} is neither an RLlib checkpoint (no rllib_checkpoint.json) nor a run "
                         "folder with checkpoints/iteration_N; give one of those, or a model folder with --model.")
    return [os.path.join(root, name) for _, name in found]


# ----- running --------------------------------------------------------------------------
def _runner(config):
    from sfpo_rllib.env_runner import SFPOEnvRunner

    return SFPOEnvRunner(config=config)


def evaluate_runner(runner, tasks: dict[str, tuple[str, dict]], *, n: int, seed: int, num_problems: int | None,
                    chunk: int, progress: bool, label: str = "") -> dict[str, Any]:
    """Per task: per-problem correct counts and the metrics; plus their unweighted average."""
    from tqdm import tqdm

    from sfpo_rllib.sfpo import _seed

    per_task = {}
    for t, (name, (env_id, env_config)) in enumerate(tasks.items()):
        runner.use_held_out_env(env_id, env_config)
        total = runner.num_problems("test")
        count = min(total, num_problems or total)
        correct: dict[int, int] = {}
        started = time.perf_counter()
        with tqdm(total=count, desc=f"{label}{name}", unit="problem", disable=not progress) as bar:
            for c, start in enumerate(range(0, count, chunk)):
                indices = list(range(start, min(count, start + chunk)))
                out = runner.evaluate(indices=indices, samples_per_problem=n, seed=_seed(seed, 4, t, c))
                correct.update(out["correct"])
                bar.update(len(indices))
        counts = [correct[i] for i in range(count)]
        per_task[name] = {"problems": count, **score_counts(counts, n), "seconds": time.perf_counter() - started,
                          "correct_counts": counts}
    keys = [k for k in next(iter(per_task.values())) if k.startswith(("avg@", "pass@"))]
    average = {k: sum(r[k] for r in per_task.values()) / len(per_task) for k in keys}
    return {"benchmarks": per_task, "average": average}


def _metric_keys(result: dict) -> list[str]:
    return list(result["average"])


def table(result: dict, protocol: dict) -> str:
    keys = _metric_keys(result)
    head = "| benchmark | problems | " + " | ".join(keys) + " |"
    lines = [head, "|---|---|" + "---|" * len(keys)]
    for name, r in result["benchmarks"].items():
        lines.append(f"| {name} | {r['problems']} | " + " | ".join(f"{100 * r[k]:.1f}" for k in keys) + " |")
    if len(result["benchmarks"]) > 1:
        lines.append("| **average** | | " + " | ".join(f"**{100 * result['average'][k]:.1f}**" for k in keys) + " |")
    return "\n".join(lines) + (
        f"\n\nPercent. {protocol['n']} samples per problem at temperature {protocol['temperature']}, top-p "
        f"{protocol['top_p']}, top-k {protocol['top_k']}, at most {protocol['max_new_tokens']} new tokens, "
        f"engine {protocol['engine']}, seed {protocol['seed']}."
    )


def write_outputs(output: str, payload: dict, results: list[tuple[str, dict]]) -> None:
    """results.json (everything), results.csv (one row per model x benchmark), results.md (tables)."""
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(payload, f, indent=1)
    keys = _metric_keys(results[0][1])
    with open(os.path.join(output, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "benchmark", "problems", *keys])
        for model, result in results:
            for name, r in result["benchmarks"].items():
                writer.writerow([model, name, r["problems"], *(r[k] for k in keys)])
            if len(result["benchmarks"]) > 1:
                writer.writerow([model, "average", "", *(result["average"][k] for k in keys)])
    with open(os.path.join(output, "results.md"), "w") as f:
        for model, result in results:
            f.write(f"### {model}\n\n{table(result, payload['protocol'])}\n\n")
        if payload.get("best"):
            f.write(f"Best checkpoint by average avg@{payload['protocol']['n']}: `{payload['best']}`\n")


def run_evaluate(*, model: str | None, checkpoint: str | None, env: str | None, env_config: dict | None,
                 split: str, benchmarks: str | None, benchmarks_dir: str | None, n: int | None,
                 temperature: float | None, top_p: float | None, top_k: int | None, max_new_tokens: int | None,
                 engine: str | None, num_problems: int | None, seed: int, settings: dict, output: str | None,
                 progress: bool = True, chunk: int = 64, log=print) -> dict:
    """Evaluate a model folder, or each checkpoint of a run; returns (and writes) the results."""
    from sfpo_rllib import SFPOConfig
    from sfpo_rllib.rllib_compat import checkpoint_config

    if (model is None) == (checkpoint is None):
        raise ValueError("Give exactly one of --model DIR (a Hugging Face model folder) or --checkpoint DIR.")
    checkpoints = find_checkpoints(checkpoint) if checkpoint else []
    base = checkpoint_config(checkpoints[-1]) if checkpoints else SFPOConfig()
    if model is not None:
        if not os.path.isdir(model) and model != TINY_MODEL_NAME and model not in PRETRAINED_MODELS:
            raise ValueError(f"--model ({model!r}) is not a folder; give a final_model/, a local Hugging Face checkpoint "
                             f"or a model name ({', '.join([TINY_MODEL_NAME, *PRETRAINED_MODELS])}).")
        base.generation(model_name_or_path=model)
        defaults = DEFAULT_PROTOCOL
    else:  # the run's own protocol unless overridden
        defaults = {"n": base.test_samples_per_problem, "temperature": base.temperature, "top_p": base.top_p}
    if benchmarks:
        if env:
            raise ValueError("Give either --env (with --env-config) or --benchmarks, not both.")
        tasks = benchmark_tasks(benchmarks, benchmarks_dir)
    elif env or checkpoints:
        env_id = env or base.env
        cfg = dict(env_config if env_config is not None else (base.env_config if not env else {}))
        cfg.update({"split": split} if env or not checkpoints else base.test_env_config)
        tasks = {env_id.split(":")[-1]: (env_id, cfg)}
    else:
        raise ValueError("Say what to evaluate on: --env ID [--env-config JSON], or --benchmarks NAMES --benchmarks-dir DIR.")
    protocol = {
        "n": n or defaults["n"],
        "temperature": defaults["temperature"] if temperature is None else temperature,
        "top_p": defaults["top_p"] if top_p is None else top_p,
        "top_k": base.top_k if top_k is None else top_k,
        "max_new_tokens": max_new_tokens or base.max_new_tokens,
        "engine": engine or base.rollout_engine,
        "seed": seed,
        "num_problems": num_problems or (base.test_num_problems if checkpoints and not benchmarks and not env else None),
    }
    if protocol["n"] < 1:
        raise ValueError(f"--n ({protocol['n']}) must be >= 1.")
    first_env, first_cfg = next(iter(tasks.values()))
    config = (
        base.copy(copy_frozen=False)
        .environment(first_env, env_config=first_cfg)
        .generation(temperature=protocol["temperature"], top_p=protocol["top_p"], top_k=protocol["top_k"],
                    max_new_tokens=protocol["max_new_tokens"], rollout_engine=protocol["engine"])
        .env_runners(num_env_runners=0)
        .learners(num_learners=0)
    )
    config.update_from_dict(settings)
    config.validate()
    runner = _runner(config)
    try:
        results: list[tuple[str, dict]] = []
        if checkpoints:
            for path in checkpoints:
                load_checkpoint_policy(runner, path)
                label = os.path.basename(path)
                results.append((path, evaluate_runner(runner, tasks, n=protocol["n"], seed=seed, num_problems=protocol["num_problems"],
                                                      chunk=chunk, progress=progress, label=f"{label} ")))
        else:
            results.append((model, evaluate_runner(runner, tasks, n=protocol["n"], seed=seed, num_problems=protocol["num_problems"],
                                                   chunk=chunk, progress=progress)))
    finally:
        runner.stop()
    key = f"avg@{protocol['n']}"
    best = max(results, key=lambda r: r[1]["average"][key])[0] if len(results) > 1 else None
    payload = {"protocol": protocol, "tasks": {k: {"env": e, "env_config": c} for k, (e, c) in tasks.items()},
               "models": [{"model": m, **r} for m, r in results], "best": best}
    for m, r in results:
        log(f"\n{m}\n{table(r, protocol)}")
    if best:
        log(f"\nbest checkpoint by average {key}: {best}")
    if output:
        write_outputs(output, payload, results)
        log(f"wrote {os.path.join(output, 'results.json')}, results.csv, results.md")
    return payload
