"""Make the verifier environment a run names, with errors a user can act on.

``env`` is a gymnasium id. Ours (``sfpo/Arithmetic-v0``, ``sfpo/Math-v0``, ...) are
registered on import; a user's own is either registered by their package through
gymnasium's ``gymnasium.envs`` entry point, or named as ``"their_package:Their/Id-v0"``
(gymnasium imports ``their_package`` first, which registers it).
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym

import sfpo_envs  # noqa: F401  (registers the sfpo/... ids)


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

