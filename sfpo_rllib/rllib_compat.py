"""Every use of Ray/RLlib internals, in one place (docs/ray.md lists them and says why).

Everything else in the package uses RLlib's public API only. What is here has no public
equivalent in the Ray versions this project supports (setup.cfg); each piece is a small
named function (or, for private hooks the learner overrides, an entry of
``LEARNER_PRIVATE_HOOKS``), and tests/test_rllib_compat.py checks each one against the
installed Ray, so an upgrade that removes or changes one fails there with a message naming
the missing attribute and the Ray version, not deep inside a training run.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from typing import Any, Iterator

import ray


class RLlibInternalsChanged(RuntimeError):
    """An RLlib internal this package relies on is gone or changed in the installed Ray."""


def require(owner: Any, name: str, why: str) -> Any:
    """``getattr(owner, name)``, or an error naming the attribute, the Ray version and the fix."""
    if not hasattr(owner, name):
        label = getattr(owner, "__qualname__", None) or type(owner).__qualname__
        raise RLlibInternalsChanged(
            f"{label}.{name} does not exist in Ray {ray.__version__} (sfpo-rllib uses it: {why}). "
            "Install a supported Ray (pip install -e . picks one; docs/ray.md) or update "
            "sfpo_rllib/rllib_compat.py for this version."
        )
    return getattr(owner, name)


# ----- private TorchLearner hooks that SFPOTorchLearner overrides --------------------------
# RLlib calls these itself; a public hook that runs at the same moment does not exist.
LEARNER_PRIVATE_HOOKS = {
    # Learner.build() makes the module, builds the optimizers on its parameters, then wraps
    # it for DDP. FSDP2 shards the module as it is made (the optimizer must hold the sharded
    # parameters) and must not let RLlib wrap it in DDP; neither step has a public hook.
    "_make_module": "learner_strategy='fsdp2' shards the policy before its optimizer is built",
    "_make_modules_ddp_if_necessary": "learner_strategy='fsdp2' must not also wrap the policy in DDP",
    # Learner.get_state/set_state read and write the optimizer state through these two only;
    # overriding get_state/set_state instead would repeat RLlib's component logic.
    "_get_optimizer_state": "fsdp2 checkpoints gather the sharded optimizer state",
    "_set_optimizer_state": "optimizer states sent to several learners are copied, and fsdp2 re-shards them",
}


def check_learner_hooks(learner_class: type) -> None:
    """Fail with a clear message if RLlib no longer has a private hook the learner overrides."""
    from ray.rllib.core.learner.torch.torch_learner import TorchLearner

    for name, why in LEARNER_PRIVATE_HOOKS.items():
        require(TorchLearner, name, why)
        if name not in learner_class.__dict__:  # keep this list and the learner in step
            raise RLlibInternalsChanged(f"{learner_class.__name__} no longer overrides {name}; remove it from "
                                        "LEARNER_PRIVATE_HOOKS and docs/ray.md.")


# ----- a lighter local Ray instance ---------------------------------------------------------
# RLlib needs a Ray instance even when everything runs in the driver (num_env_runners=0,
# num_learners=0): its EnvRunnerGroup puts the config into the object store. These Ray core
# settings (``ray.init(_system_config=...)``, no public equivalent) trim that instance
# without changing what a run computes: no idle worker processes started ahead of need
# (actors start their own worker when created), and no metrics collection (there is no
# dashboard to show it). benchmarks/startup.py measures the difference.
LEAN_LOCAL_RAY = {
    "prestart_worker_first_driver": False,
    "enable_worker_prestart": False,
    "enable_metrics_collection": False,
}


def local_ray_options(lean: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``ray.init`` of a one-machine instance that this process owns."""
    # address="local": always a new instance, never one that another process on this
    # machine started (ray.init() alone joins the last one started here).
    options: dict[str, Any] = {"address": "local", "include_dashboard": False}
    if lean:
        options["_system_config"] = dict(LEAN_LOCAL_RAY)
    return options


# ----- joining a running cluster ------------------------------------------------------------
def find_ray_cluster(address: str) -> str:
    """The HOST:PORT ``ray.init(address=address)`` would join: ``auto`` as Ray resolves it
    (``RAY_ADDRESS``, else the last cluster ``ray start`` started on this machine), a host name
    as an IP. Raises ConnectionError when ``auto`` finds none."""
    from ray._private.services import canonicalize_bootstrap_address  # no public resolver

    found = canonicalize_bootstrap_address(address)
    if found is None:
        raise ConnectionError(f"no Ray cluster for address {address!r}")
    return found


# ----- mixed precision (fp16) ------------------------------------------------------------
def set_grad_scaler(learner, module_id: str, scaler) -> None:
    """Make RLlib's ``TorchLearner.apply_gradients`` step the optimizer through ``scaler``.

    ``apply_gradients`` reads ``TorchLearner._grad_scalers``. The only public way to fill
    it, ``config.experimental(_torch_grad_scaler_class=...)``, calls the class without
    arguments, so the scaler would not know the learner's device (torch's default is
    "cuda"), and it would enter the run's recorded settings.
    """
    require(learner, "_grad_scalers", "fp16 mixed precision steps the optimizer through a GradScaler")
    learner._grad_scalers = {module_id: scaler}


def grad_scaler(learner, module_id: str):
    """The scaler set by ``set_grad_scaler`` (None without fp16)."""
    scalers = require(learner, "_grad_scalers", "fp16 mixed precision steps the optimizer through a GradScaler")
    return scalers[module_id] if scalers is not None else None


# ----- where RLlib's own result logs go ---------------------------------------------------
@contextlib.contextmanager
def algorithm_logdir(folder: str) -> Iterator[None]:
    """Algorithms built inside this block keep RLlib's result logs under ``folder``.

    Outside Tune, ``Trainable`` puts them in a fresh folder under
    ``ray.tune.trainable.trainable.DEFAULT_STORAGE_PATH`` (``~/ray_results``), read when the
    algorithm is built. ``build_algo()`` takes no log folder, and the alternative
    (``Algorithm(config, storage=StorageContext(...))``) is Ray Train's internal class.
    """
    import ray.tune.trainable.trainable as trainable_module

    before = require(trainable_module, "DEFAULT_STORAGE_PATH", "a run's RLlib logs go into its output folder")
    trainable_module.DEFAULT_STORAGE_PATH = folder
    try:
        yield
    finally:
        trainable_module.DEFAULT_STORAGE_PATH = before


# ----- reading an algorithm checkpoint without building the algorithm ----------------------
def checkpoint_config(path: str):
    """The algorithm config saved in an RLlib algorithm checkpoint folder.

    ``Algorithm.from_checkpoint`` reads the same file, then builds the whole algorithm
    (Ray, learners, env runners, every model copy) just to give back its config; evaluation
    needs only the config. The file name is RLlib's public ``Checkpointable`` constant; its
    content, ``{"class": ..., "ctor_args_and_kwargs": ((config_state,), {})}``, is what
    ``Checkpointable.from_checkpoint`` reads and ``Algorithm.get_ctor_args_and_kwargs``
    writes.
    """
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.utils.checkpoints import Checkpointable

    name = require(Checkpointable, "CLASS_AND_CTOR_ARGS_FILE_NAME", "evaluate reads a checkpoint's config")
    with open(os.path.join(path, name), "rb") as f:  # the user's own checkpoint
        ctor = pickle.load(f)
    try:
        state = ctor["ctor_args_and_kwargs"][0][0]
    except (KeyError, IndexError, TypeError) as err:
        raise RLlibInternalsChanged(
            f"{os.path.join(path, name)} does not hold {{'ctor_args_and_kwargs': ((config, ...), ...)}} "
            f"({type(err).__name__}: {err}); Ray {ray.__version__} writes checkpoints differently. "
            "Update sfpo_rllib/rllib_compat.py.checkpoint_config."
        ) from None
    return AlgorithmConfig.from_state(state) if isinstance(state, dict) else state
