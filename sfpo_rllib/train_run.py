"""A training run as the command-line tool does it: iterate, log, checkpoint, resume, export.

Output folder layout:
  metrics.jsonl            one JSON object per iteration (see run_logger.py)
  tensorboard/             the same scalars as TensorBoard events
  checkpoints/iteration_N/ RLlib checkpoints (Algorithm.save_to_path), the last few kept
  final_model/             the trained policy, save_pretrained (model + tokenizer)
  run_config.json          the settings the run used
  rllib_logs/              RLlib's own result logs
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import ray
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID

from sfpo_rllib.run_logger import RunLogger
from sfpo_rllib.sfpo import METRIC_FIELDS

_CHECKPOINT_RE = re.compile(r"^iteration_(\d+)$")


def check_resources(config) -> None:
    """Fail fast instead of waiting forever for CPUs the cluster does not have."""
    per_learner = config.num_cpus_per_learner if config.num_cpus_per_learner != "auto" else 1
    need = config.num_env_runners * config.num_cpus_per_env_runner + config.num_learners * per_learner
    have = ray.cluster_resources().get("CPU", 0)
    if need > have:
        raise ValueError(
            f"The run asks for {need:g} CPUs ({config.num_env_runners} env runners x "
            f"`num_cpus_per_env_runner`={config.num_cpus_per_env_runner} + {config.num_learners} learners x "
            f"`num_cpus_per_learner`={per_learner}) but the Ray cluster has {have:g}. Lower those settings "
            "(fractions such as 0.5 are fine) or add nodes."
        )


def latest_checkpoint(root: str) -> str | None:
    if not os.path.isdir(root):
        return None
    found = [(int(m.group(1)), name) for name in os.listdir(root) if (m := _CHECKPOINT_RE.match(name))]
    return os.path.join(root, max(found)[1]) if found else None


def save_final_model(algo, path: str) -> None:
    """The learners' policy as a plain Hugging Face checkpoint (loadable by transformers/vLLM)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    component = f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}"
    state = algo.learner_group.get_state(components=component)[COMPONENT_LEARNER][COMPONENT_RL_MODULE]
    state = state[DEFAULT_MODULE_ID]
    weights = {k[len("lm.") :]: v for k, v in state.items() if k.startswith("lm.")}
    source = algo.config.resolved_model_path()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=weights[next(iter(weights))].dtype)
    model.load_state_dict(weights, strict=True)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)


def _plain_settings(config) -> dict[str, Any]:
    out = {}
    for key, value in sorted(config.to_dict().items()):
        try:
            json.dumps(value)
            out[key] = value
        except TypeError:
            out[key] = repr(value)
    return out


def run_training(
    config,
    *,
    stop_iters: int,
    output_dir: str,
    resume: bool = False,
    checkpoint_every: int = 10,
    keep_checkpoints: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``stop_iters`` iterations into ``output_dir``; returns the last metrics row."""
    from tqdm import tqdm

    if stop_iters < 1:
        raise ValueError(f"`--stop-iters` ({stop_iters}) must be >= 1.")
    check_resources(config)
    output_dir = os.path.abspath(output_dir)  # RLlib checkpoints need absolute paths
    checkpoints = os.path.join(output_dir, "checkpoints")
    restore_from = latest_checkpoint(checkpoints) if resume else None
    if resume and restore_from is None:
        raise ValueError(f"--resume: no checkpoint under {checkpoints!r}. Run once without --resume.")
    os.makedirs(output_dir, exist_ok=True)

    # Outside Tune, RLlib's Trainable logs to a fresh folder under ~/ray_results; keep a
    # run's files together in its output folder instead.
    import ray.tune.trainable.trainable as trainable_module

    trainable_module.DEFAULT_STORAGE_PATH = os.path.join(output_dir, "rllib_logs")
    algo = config.build_algo()
    try:
        if restore_from:
            algo.restore_from_path(restore_from)
        start = algo.sfpo_iteration
        logger = RunLogger(output_dir, fields=METRIC_FIELDS, resume_after=start if restore_from else None)
        with open(os.path.join(output_dir, "run_config.json"), "w") as f:
            json.dump({"algorithm": type(algo).__name__, "stop_iters": stop_iters, **_plain_settings(config)}, f, indent=1)
        last: dict[str, Any] = {}
        if start == 0 and config.test_interval:  # iteration 0: the starting model
            logger.log({"iteration": 0, "rollouts": 0, **algo.run_test(iteration=0)})
        bar = tqdm(range(start + 1, stop_iters + 1), initial=start, total=stop_iters, disable=not progress, unit="it")
        for s in bar:
            algo.test_due = s == stop_iters  # always measure the final model
            row = dict(algo.train()["sfpo"])
            logger.log(row)
            last = row
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", test=row.get("test_accuracy") or "-", alpha=row["alpha"])
            if s % checkpoint_every == 0 or s == stop_iters:
                algo.save_to_path(os.path.join(checkpoints, f"iteration_{s:06d}"))
                _prune(checkpoints, keep_checkpoints)
        logger.close()
        save_final_model(algo, os.path.join(output_dir, "final_model"))
        return last
    finally:
        algo.stop()


def _prune(root: str, keep: int) -> None:
    found = sorted(int(m.group(1)) for name in os.listdir(root) if (m := _CHECKPOINT_RE.match(name)))
    for number in found[:-keep]:
        shutil.rmtree(os.path.join(root, f"iteration_{number:06d}"), ignore_errors=True)
