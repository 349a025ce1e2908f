"""Make the verifier environment a run names, with errors a user can act on.

``env`` is a gymnasium id. Ours (``sfpo/Arithmetic-v0``, ``sfpo/Math-v0``, ...) are
registered on import; a user's own is either registered by their package through
gymnasium's ``gymnasium.envs`` entry point, or named as ``"their_package:Their/Id-v0"``
(gymnasium imports ``their_package`` first, which registers it).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import gymnasium as gym

import sfpo_envs  # noqa: F401  (registers the sfpo/... ids)
from sfpo_envs.base import DatasetEnv
from sfpo_rllib.text_task import TextTask

logger = logging.getLogger(__name__)


def check_env_id(env_id: Any) -> None:
    """Raise a ValueError naming the fix when ``env_id`` cannot be made."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(
            f"`env` ({env_id!r}) must be a gymnasium id string such as 'sfpo/Arithmetic-v0' "
            "or 'your_package:Your/Id-v0'."
        )
    module, _, name = env_id.rpartition(":")
    try:
        if module:
            import importlib

            importlib.import_module(module)
        gym.spec(name)
    except ModuleNotFoundError as err:
        raise ValueError(
            f"`env` ({env_id!r}): cannot import module {module!r} ({err}). Install the package "
            "that registers this environment, or fix the module name before ':'."
        ) from None
    except gym.error.Error:
        ours = sorted(k for k in gym.registry if k.startswith("sfpo/"))
        raise ValueError(
            f"`env` ({env_id!r}) is not a registered gymnasium environment. Built in: "
            f"{', '.join(ours)}. For your own environment, register it with "
            "gymnasium.register(...) in your package and pass 'your_package:Your/Id-v0'."
        ) from None


def make_env(env_id: str, env_config: Mapping[str, Any] | None = None, **overrides: Any) -> gym.Env:
    """``gymnasium.make(env_id, **env_config, **overrides)`` after checking the id."""
    check_env_id(env_id)
    kwargs = {**dict(env_config or {}), **overrides}
    try:
        return gym.make(env_id, **kwargs)
    except TypeError as err:
        raise ValueError(
            f"`env_config` ({kwargs}) does not fit environment {env_id!r}: {err}. "
            "Check the keyword names against the environment's documentation."
        ) from None



def _make_checked(env_id: str, env_config: Mapping[str, Any], setting: str, **overrides: Any) -> gym.Env:
    try:
        return make_env(env_id, env_config, **overrides)
    except ValueError as err:
        raise ValueError(f"`{setting}` of {env_id!r}: {err}") from None
    except (TypeError, OSError, KeyError, ImportError, RuntimeError) as err:  # the environment's own checks
        raise ValueError(f"`{setting}` of {env_id!r}: {type(err).__name__}: {err}") from None


def _prompts(env: gym.Env) -> list[str]:
    """Every prompt as the env runner gives it to the policy (text_task.TextTask)."""
    task = TextTask(env)
    return [task.prompt(i)[0] for i in range(len(task))]


# Setting test_env_config replaces its default {"split": "test"}: adding e.g. a `size` drops the split.
SPLIT_DROPPED = ("test_env_config has no 'split', and setting test_env_config replaces its default "
                 "{'split': 'test'}. Add it: test_env_config={'split': 'test', ...}.")


def _why_no_held_out(env: Any, test_kwargs: Mapping[str, Any]) -> str:
    """Why the held-out environment got the training problems, in terms of what ``env`` has, and the fix."""
    if isinstance(env, DatasetEnv):
        data = test_kwargs.get("data")
        if isinstance(data, (list, tuple)):
            what = "the `data` list is used whole for every split"
        elif isinstance(data, (str, os.PathLike)) and os.path.isfile(data):
            what = f"a single data file ({str(data)!r}) is read whole for every split"
        else:
            what = f"`data` ({data!r}) gives the same problems for both splits"
        return (f"{what}. Give the held-out problems their own data (test_env_config={{'data': 'test.jsonl'}}), "
                "point `data` at a directory with train/test files, or add env_config 'split_fraction': 0.1 "
                "to hold out a seeded part of the data.")
    return (f"the environment ({type(env).__name__}) made with env_config updated by test_env_config "
            f"({dict(test_kwargs)!r}) returned the same problems as the training one: it does not choose "
            "its examples by these keywords. Make its factory return held-out examples for them (e.g. by "
            "`split`, as the README's plug-in example does), or set test_env_config to keywords that select "
            "other problems.")


def check_held_out_data(config) -> int:
    """Make the training and held-out environments once; return how many held-out prompts are
    training prompts too.

    Raises a ValueError naming the setting when either cannot be made (bad data, bad
    keywords), or when every held-out prompt is a training prompt: a held-out score would then
    silently measure training problems (e.g. one data file read whole for both splits, or a
    plug-in environment that ignores `split`).
    """
    train = _make_checked(config.env, config.env_config, "env_config")
    try:
        test = _make_checked(config.env, config.env_config, "test_env_config", **config.test_env_config)
        try:
            if not hasattr(train.unwrapped, "__len__") or not hasattr(test.unwrapped, "__len__"):
                return 0  # the runner explains this contract
            seen = set(_prompts(train))
            held_out = _prompts(test)
        finally:
            test.close()
    finally:
        train.close()
    overlap = sum(prompt in seen for prompt in held_out)
    if held_out and overlap == len(held_out):
        raise ValueError(
            f"All {len(held_out)} held-out problems of {config.env!r} are training problems (env_config "
            f"{dict(config.env_config)!r}, test_env_config {dict(config.test_env_config)!r}): "
            + (SPLIT_DROPPED if "split" not in config.test_env_config
               else _why_no_held_out(train.unwrapped, {**dict(config.env_config), **dict(config.test_env_config)}))
        )
    if overlap:
        logger.warning("%d of %d held-out problems of %r are also training problems; the metric "
                       "test_overlap_problems reports it.", overlap, len(held_out), config.env)
    return overlap
