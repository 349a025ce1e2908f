"""A training run as the command-line tool does it: iterate, log, checkpoint, resume, export.

Output folder layout:
  metrics.jsonl            one JSON object per iteration (see run_logger.py)
  tensorboard/             the same scalars as TensorBoard events
  checkpoints/iteration_N/ RLlib checkpoints (Algorithm.save_to_path), the last few kept
  final_model/             the trained policy, save_pretrained (model + tokenizer); with LoRA,
                           the adapters merged in
  final_adapter/           with LoRA only: the adapters alone (PEFT's save_pretrained)
  run_config.json          the settings the run started with, and every resume after (history)
  rllib_logs/              RLlib's own result logs

A run cannot be lost:
  * a folder that holds files is never reused without ``resume`` or ``overwrite``;
  * a checkpoint is written to ``checkpoints/.partial-iteration_N`` and renamed when complete,
    with the run's settings and its metrics rows inside, so a kill at any moment leaves the
    previous complete checkpoint, and ``resume`` rewrites ``metrics.jsonl`` from it;
  * pruning deletes only checkpoints of this run (same ``run_id``);
  * ``resume`` on a folder that holds no run yet (killed before its first record) starts the
    run, so a supervisor that always restarts with ``--resume`` recovers;
  * ``resume`` refuses settings that change the run's meaning unless told to apply them, and
    records each resume in ``run_config.json``'s ``history``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from typing import Any

import ray
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID

from sfpo_rllib import ray_session, rllib_compat
from sfpo_rllib.run_logger import RunLogger
from sfpo_rllib.sfpo import METRIC_FIELDS

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^iteration_(\d+)$")
PARTIAL_PREFIX = ".partial-"
CHECKPOINT_INFO = "sfpo_run.json"  # written last inside a checkpoint: the run it belongs to
CHECKPOINT_METRICS = "metrics.jsonl"  # the run's metrics rows up to the checkpoint
# What a run writes into its output folder (what --overwrite deletes, nothing else).
RUN_FILES = (
    "metrics.jsonl", "tensorboard", "checkpoints", "final_model", "final_adapter", "run_config.json", "rllib_logs",
    "run_config.json.tmp",  # left by a kill during its atomic write
)
# Settings that may differ on resume without changing what the run computes.
MAY_CHANGE_ON_RESUME = frozenset({
    "test_interval", "log_level", "log_sys_usage", "logger_config", "num_cpus_per_env_runner",
    "num_cpus_per_learner", "num_cpus_for_main_process", "restart_failed_env_runners",
    "max_num_env_runner_restarts", "env_runner_health_probe_timeout_s", "env_runner_restore_timeout_s",
    "sample_timeout_s", "min_time_s_per_iteration", "min_sample_timesteps_per_iteration",
    "min_train_timesteps_per_iteration", "create_local_env_runner",
})
# Test-only: SFPO_RLLIB_TEST_CRASH_AT="point:iteration" ends the process with os._exit(137), as
# a kill -9 would, at a named point (see _crash_point); the crash-and-resume tests use it.
CRASH_ENV = "SFPO_RLLIB_TEST_CRASH_AT"


def check_resources(config) -> None:
    """Fail fast instead of waiting forever for CPUs or custom resources the cluster does not have."""
    per_learner = config.num_cpus_per_learner if config.num_cpus_per_learner != "auto" else 1
    need = config.num_env_runners * config.num_cpus_per_env_runner + config.num_learners * per_learner
    cluster = ray.cluster_resources()
    have = cluster.get("CPU", 0)
    if need > have:
        raise ValueError(
            f"The run asks for {need:g} CPUs ({config.num_env_runners} env runners x "
            f"`num_cpus_per_env_runner`={config.num_cpus_per_env_runner} + {config.num_learners} learners x "
            f"`num_cpus_per_learner`={per_learner}) but the Ray cluster has {have:g}. Lower those settings "
            "(fractions such as 0.5 are fine) or add nodes."
        )
    for setting, wanted, count in (
        ("custom_resources_per_env_runner", config.custom_resources_per_env_runner, config.num_env_runners),
        ("custom_resources_per_learner", config.custom_resources_per_learner, config.num_learners),
    ):
        missing = [] if not count else sorted(name for name in (wanted or {}) if name not in cluster)
        if missing:
            raise ValueError(
                f"`{setting}` asks for {', '.join(map(repr, missing))}, which no node of the Ray cluster has "
                f"(it has {', '.join(sorted(n for n in cluster if not n.startswith('node:')))}). Start the nodes with `ray start "
                "--resources='{...}'` and join them (--ray-address), or drop the setting."
            )


# ----- the output folder ------------------------------------------------------------------


def check_output_dir(output_dir: str, *, resume: bool, overwrite: bool) -> None:
    """Raise a one-line ValueError when ``output_dir`` cannot take this run (touches nothing)."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: pick one.")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output {output_dir!r} is a file, not a folder. Pick a folder path.")
    parent = output_dir
    while not os.path.exists(parent):
        parent = os.path.dirname(parent) or "."
    if not os.path.isdir(parent):
        raise ValueError(f"--output {output_dir!r}: {parent!r} is a file, so no folder can be made there.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--output {output_dir!r}: {parent!r} is not writable. Pick a folder you can write to.")
    try:  # root passes os.access everywhere, but cannot make folders in /proc or /sys
        tempfile.TemporaryDirectory(dir=parent, prefix=".sfpo-write-check-").cleanup()
    except OSError as err:
        raise ValueError(f"--output {output_dir!r}: no folder can be made in {parent!r} ({err.strerror}). "
                         "Pick a folder you can write to.") from None
    present = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    if resume:
        # No run yet (killed before its first record): --resume starts it, so a supervisor
        # that always restarts with --resume recovers; files a run did not write stay.
        foreign = [name for name in present if name not in RUN_FILES]
        if not holds_run(output_dir) and foreign:
            raise ValueError(
                f"--resume: {output_dir!r} holds no run but holds files a run did not write "
                f"({', '.join(foreign[:4])}); they are left alone and the folder is not used. "
                "Pick an empty or new folder, or the folder of a run."
            )
        return
    if not present:
        return
    if not overwrite:
        raise ValueError(
            f"--output {output_dir!r} already holds files ({', '.join(present[:4])}"
            f"{', ...' if len(present) > 4 else ''}). Pass --resume to continue that run, --overwrite to "
            "delete its files and start over, or pick another folder."
        )
    foreign = [name for name in present if name not in RUN_FILES]
    if foreign:
        raise ValueError(
            f"--overwrite: --output {output_dir!r} holds files a run did not write ({', '.join(foreign[:4])}); "
            "they are left alone and the folder is not reused. Pick an empty or new folder."
        )


def holds_run(output_dir: str) -> bool:
    """Whether ``output_dir`` holds a run to resume (its run_config.json or a complete checkpoint)."""
    return (latest_checkpoint(os.path.join(output_dir, "checkpoints"), quiet=True) is not None
            or _read_run_config(os.path.join(output_dir, "run_config.json")) is not None)


def _clear_previous_run(output_dir: str) -> None:
    removed = [name for name in RUN_FILES if os.path.lexists(os.path.join(output_dir, name))]
    for name in removed:
        path = os.path.join(output_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    if removed:
        logger.warning("Deleted the previous run's %s in %s", ", ".join(removed), output_dir)


# ----- checkpoints ------------------------------------------------------------------------


def _checkpoint_info(path: str) -> dict | None:
    try:
        with open(os.path.join(path, CHECKPOINT_INFO)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def latest_checkpoint(root: str, *, quiet: bool = False) -> str | None:
    """The newest complete checkpoint under ``root``; incomplete ones are skipped with a warning."""
    if not os.path.isdir(root):
        return None
    found = sorted(((int(m.group(1)), name) for name in os.listdir(root) if (m := _CHECKPOINT_RE.match(name))),
                   reverse=True)
    for _, name in found:
        path = os.path.join(root, name)
        if _checkpoint_info(path) is not None:
            return path
        if not quiet:
            logger.warning("Skipping checkpoint %s: it is incomplete (no %s); the run was stopped while "
                           "writing it, or an older version wrote it.", path, CHECKPOINT_INFO)
    return None


def _save_checkpoint(algo, root: str, iteration: int, info: dict, metrics_path: str) -> None:
    """Write the checkpoint under a temporary name and rename it when complete (atomic)."""
    final = os.path.join(root, f"iteration_{iteration:06d}")
    partial = os.path.join(root, PARTIAL_PREFIX + os.path.basename(final))
    shutil.rmtree(partial, ignore_errors=True)
    algo.save_to_path(partial)
    _crash_point("mid_checkpoint", iteration)
    shutil.copyfile(metrics_path, os.path.join(partial, CHECKPOINT_METRICS))
    with open(os.path.join(partial, CHECKPOINT_INFO), "w") as f:
        json.dump({**info, "iteration": iteration}, f, indent=1)
    if os.path.exists(final):  # an incomplete or superseded one of the same number
        shutil.rmtree(final)
    os.replace(partial, final)


def _prune(root: str, keep: int, run_id: str) -> None:
    """Keep this run's ``keep`` newest checkpoints; never delete another run's."""
    ours = sorted(
        int(m.group(1)) for name in os.listdir(root)
        if (m := _CHECKPOINT_RE.match(name)) and (_checkpoint_info(os.path.join(root, name)) or {}).get("run_id") == run_id
    )
    for number in ours[:-keep]:
        shutil.rmtree(os.path.join(root, f"iteration_{number:06d}"), ignore_errors=True)


def _remove_partials(root: str) -> None:
    for name in os.listdir(root) if os.path.isdir(root) else []:
        if name.startswith(PARTIAL_PREFIX):
            logger.warning("Deleting %s: a checkpoint the previous process did not finish writing.", name)
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _crash_point(point: str, iteration: int) -> None:
    """Test-only: die like ``kill -9`` when SFPO_RLLIB_TEST_CRASH_AT names this point and iteration."""
    if os.environ.get(CRASH_ENV) == f"{point}:{iteration}":
        os._exit(137)


# ----- settings and resume ----------------------------------------------------------------


# RLlib's to_dict() holds some settings under their private attribute; a record shows the name
# users set. (Only those whose private value is the setting's value once set.)
PUBLIC_NAMES = {"_train_batch_size_per_learner": "train_batch_size_per_learner"}
# RLlib's legacy batch size: not read on the new API stack (total_train_batch_size is), so a
# record would show a size the run never used.
NOT_RECORDED = ("train_batch_size",)


def _public(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings under their public names, without the legacy ones (also applied to settings
    recorded before this rule, so their resumes compare like with like)."""
    out = {PUBLIC_NAMES.get(key, key): value for key, value in settings.items() if key not in NOT_RECORDED}
    return dict(sorted(out.items()))


def plain_settings(config) -> dict[str, Any]:
    """The config as JSON values (anything else as its repr), sorted by name."""
    out = {}
    for key, value in config.to_dict().items():
        try:
            out[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            out[key] = re.sub(r" at 0x[0-9a-f]+", "", repr(value))  # memory addresses differ per process
    return _public(out)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def settings_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Settings whose value changed, except those that may change on resume."""
    names = sorted((set(saved) | set(current)) - MAY_CHANGE_ON_RESUME)
    return {n: (saved.get(n), current.get(n)) for n in names if not _same(saved.get(n), current.get(n))}


def _describe(differences: dict[str, tuple[Any, Any]]) -> str:
    def short(value: Any) -> str:
        text = json.dumps(value) if not isinstance(value, str) else repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return "; ".join(f"{name} {short(old)} -> {short(new)}" for name, (old, new) in differences.items())


def _effective_settings(run_config: dict) -> dict[str, Any]:
    """The run's settings after the changes its resumes applied."""
    settings = dict(run_config["settings"])
    for entry in run_config["history"]:
        settings.update({name: change["new"] for name, change in entry.get("changed", {}).items()})
    return settings


def check_resume(output_dir: str, config, *, stop_iters: int, allow_config_change: bool):
    """``(checkpoint, record, changes)``: the checkpoint to resume from (None when the run was
    stopped before its first one: it starts again), the run's record (run_id, algorithm,
    iteration, settings), and the settings that differ from the record's.

    ``(None, None, {})`` when the folder holds no run yet (``--resume`` then starts it).
    Raises a one-line ValueError listing the differences unless they may change on resume or
    ``allow_config_change`` is set (the algorithm itself never changes).
    """
    restore_from = latest_checkpoint(os.path.join(output_dir, "checkpoints"))
    if restore_from is not None:
        record = _checkpoint_info(restore_from)
    else:
        run_config = _read_run_config(os.path.join(output_dir, "run_config.json"))
        if run_config is None:  # no run yet: --resume starts one
            return None, None, {}
        record = {"run_id": run_config["run_id"], "algorithm": run_config["algorithm"], "iteration": 0,
                  "settings": _effective_settings(run_config)}
    algorithm = type(config).__name__.removesuffix("Config")
    if record["algorithm"] != algorithm:
        raise ValueError(f"--resume: the run is a {record['algorithm']} run, not {algorithm}; "
                         f"resume it with --algo {record['algorithm']}.")
    if stop_iters < record["iteration"]:
        raise ValueError(f"--stop-iters ({stop_iters}) is below the checkpoint's iteration ({record['iteration']}); "
                         "a run cannot go back. Pass a larger --stop-iters.")
    changes = settings_differences(_public(record["settings"]), plain_settings(config))
    if changes and not allow_config_change:
        raise ValueError(
            f"--resume: the settings differ from the run's (iteration {record['iteration']}): "
            f"{_describe(changes)}. Resume with the same settings, pass --allow-config-change to apply "
            "the new values from the next iteration on, or start a new run in another --output."
        )
    return restore_from, record, changes


def _apply_lr(algo) -> None:
    """Set every optimizer's lr from the config's lr (or schedule) at the restored timestep.

    A checkpoint's optimizer state carries the lr it was saved with, which RLlib would only
    replace after the next update; resuming with a new lr must use it from the next update on.
    """
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

    timesteps = {NUM_ENV_STEPS_SAMPLED_LIFETIME: algo.rollouts}
    # RLlib's own hook that sets each optimizer's lr from its schedule at these timesteps.
    algo.learner_group.foreach_learner(lambda learner: learner.after_gradient_based_update(timesteps=timesteps))


def _read_run_config(path: str) -> dict | None:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) and "history" in data else None
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def save_final_model(algo, path: str) -> None:
    """The learners' policy as a plain Hugging Face checkpoint (loadable by transformers/vLLM).

    With LoRA, ``path`` holds the merged model and ``final_adapter/`` beside it the adapters.
    Each folder is written under a partial name and renamed when complete.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    component = f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}"
    state = algo.learner_group.get_state(components=component)[COMPONENT_LEARNER][COMPONENT_RL_MODULE]
    state = state[DEFAULT_MODULE_ID]
    weights = {k[len("lm.") :]: v for k, v in state.items() if k.startswith("lm.")}
    adapter_path = os.path.join(os.path.dirname(path), "final_adapter")
    partial_model, partial_adapter = _partial(path), _partial(adapter_path)
    for partial in (partial_model, partial_adapter):
        shutil.rmtree(partial, ignore_errors=True)
    if algo.config.lora_rank:
        from sfpo_rllib.lora import save_final

        save_final(weights, algo.config, partial_model, partial_adapter)
        _replace(partial_adapter, adapter_path)
    else:
        source = algo.config.resolved_model_path()
        model = AutoModelForCausalLM.from_pretrained(source, dtype=weights[next(iter(weights))].dtype)
        model.load_state_dict(weights, strict=True)
        model.save_pretrained(partial_model)
        AutoTokenizer.from_pretrained(source).save_pretrained(partial_model)
    _replace(partial_model, path)


def _partial(path: str) -> str:
    return os.path.join(os.path.dirname(path), PARTIAL_PREFIX + os.path.basename(path))


def _replace(partial: str, path: str) -> None:
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(partial, path)


# ----- the run ----------------------------------------------------------------------------


def run_training(
    config,
    *,
    stop_iters: int,
    output_dir: str,
    resume: bool = False,
    overwrite: bool = False,
    allow_config_change: bool = False,
    checkpoint_every: int = 10,
    keep_checkpoints: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Train until iteration ``stop_iters`` into ``output_dir``; returns the last metrics row."""
    from tqdm import tqdm

    for name, value in (("--stop-iters", stop_iters), ("--checkpoint-every", checkpoint_every),
                        ("keep_checkpoints", keep_checkpoints)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` ({value!r}) must be an int >= 1.")
    config.validate()  # idempotent; settings are recorded and compared as validate() leaves them
    output_dir = os.path.abspath(output_dir)  # RLlib checkpoints need absolute paths
    check_output_dir(output_dir, resume=resume, overwrite=overwrite)
    check_resources(config)
    checkpoints = os.path.join(output_dir, "checkpoints")
    run_config_path = os.path.join(output_dir, "run_config.json")
    algorithm = type(config).__name__.removesuffix("Config")
    settings = plain_settings(config)  # after validate(), which build_algo repeats (no change)

    restore_from, record, changes = None, None, {}
    if resume and not holds_run(output_dir):
        logger.warning("--resume: %s holds no run yet (stopped before its first record); starting it.", output_dir)
        resume, overwrite = False, True  # a new run; only files a run writes are removed
    if resume:
        _remove_partials(checkpoints)
        restore_from, record, changes = check_resume(output_dir, config, stop_iters=stop_iters,
                                                     allow_config_change=allow_config_change)
        if restore_from is None:
            logger.warning("--resume: %s has no complete checkpoint yet; the run starts again from iteration 0.",
                           output_dir)
    run_id = record["run_id"] if record else uuid.uuid4().hex
    _crash_point("before_output", 0)
    os.makedirs(output_dir, exist_ok=True)
    run_config = _read_run_config(run_config_path) if resume else None
    if overwrite or (resume and restore_from is None):
        _clear_previous_run(output_dir)
    if run_config is None:  # a new run (or a resumed one whose file was lost: rebuilt from the checkpoint)
        run_config = {"algorithm": algorithm, "run_id": run_id,
                      "settings": _public(record["settings"]) if record else settings, "history": []}
    entry = {"event": "resume" if resume else "start", "iteration": record["iteration"] if restore_from else 0,
             "stop_iters": stop_iters, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    entry["ray"] = ray_session.describe()  # where it ran: the local instance or the cluster it joined
    if changes:
        entry["changed"] = {name: {"old": old, "new": new} for name, (old, new) in changes.items()}
    run_config["history"].append(entry)
    _write_json_atomic(run_config_path, run_config)
    info = {"run_id": run_id, "algorithm": algorithm, "settings": settings}

    # Outside Tune, RLlib's Trainable logs to a fresh folder under ~/ray_results; keep a
    # run's files together in its output folder instead.
    with rllib_compat.algorithm_logdir(os.path.join(output_dir, "rllib_logs")):
        algo = config.build_algo()
    try:
        if restore_from:
            algo.restore_from_path(restore_from)
            if "seed" in changes and config.seed is not None:
                algo.run_seed = config.seed  # allowed change: the new seed from the next iteration on
            _apply_lr(algo)
        start = algo.sfpo_iteration
        log = RunLogger(output_dir, fields=METRIC_FIELDS, resume_after=start if restore_from else None,
                        restore_rows_from=os.path.join(restore_from, CHECKPOINT_METRICS) if restore_from else None)

        last: dict[str, Any] = {}
        if start == 0 and config.test_interval:  # iteration 0: the starting model
            log.log({"iteration": 0, "rollouts": 0, **algo.run_test(iteration=0), "time_unix": time.time()})
        bar = tqdm(range(start + 1, stop_iters + 1), initial=start, total=stop_iters, disable=not progress, unit="it")
        for s in bar:
            algo.test_due = s == stop_iters  # always measure the final model
            row = dict(algo.train()["sfpo"])
            log.log(row)
            last = row
            _crash_point("after_metrics", s)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", test=row.get("test_accuracy") or "-", alpha=row["alpha"])
            if s % checkpoint_every == 0 or s == stop_iters:
                _save_checkpoint(algo, checkpoints, s, info, log.path)
                _crash_point("after_checkpoint", s)
                _prune(checkpoints, keep_checkpoints, run_id)
        log.close()
        _crash_point("before_final_model", stop_iters)
        save_final_model(algo, os.path.join(output_dir, "final_model"))
        return last
    finally:
        algo.stop()
