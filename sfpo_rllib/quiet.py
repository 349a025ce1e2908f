"""Keep Ray's known start-up notices off a user's terminal, so our progress and errors show.

Each entry names the logger that emits a notice, a fragment of its text, and why it says
nothing a user of sfpo-rllib can act on. Only these exact notices are dropped; every other
record of those loggers (and Ray's own session logs under /tmp/ray) is untouched.
"""

from __future__ import annotations

import logging
import os

KNOWN_NOTICES = (
    # RLlib 2.60's own RLModule.__init__ always builds a deprecated RLModuleConfig for
    # backward compatibility, whatever the subclass does; CausalLMRLModule is built the new
    # way (RLModuleSpec with observation_space/action_space/model_config).
    ("ray._common.deprecation", "RLModule(config=[RLModuleConfig"),
    # SFPO only exists on the new API stack; there is no old stack to opt back into.
    ("ray.rllib.algorithms.algorithm_config", "on the new API stack"),
    # GPU monitoring for Tune's resource display; irrelevant to training.
    ("ray.tune.utils.util", "Install gputil"),
    # A local single-machine cluster started by `ray.init()`; the token stays enabled.
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this Ray cluster"),
)


class _DropKnownNotice(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def quiet_known_notices() -> None:
    """Install the filters (idempotent: a logger gets each filter once)."""
    for logger_name, fragment in KNOWN_NOTICES:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropKnownNotice) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropKnownNotice(fragment))


def quiet_model_load_bars() -> None:
    """For the CLI: drop transformers' per-load and per-save progress bars ("Loading weights",
    "Writing model shards"). A run loads the policy several times (the module, each learner, the
    final model), and those bars bury the run's own progress bar. The environment variable
    reaches the Ray workers this process starts; nothing is downloaded here, so no download
    progress is lost."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
