"""The data vocabulary: every training-batch column, and the record of one rollout.

A rollout flows env runner -> ``Rollout`` records -> ``batch.build_learner_batches``
(columns below, one row per completion) -> the learner, which adds the θ⁰ and
reference log-probs. Shapes: B rows, P the padded prompt width, C the padded
completion width; each row is [left-padded prompt | right-padded completion].
Grep a constant's name to find everything that reads or writes its column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the column names import without the environments (and gymnasium)
    from sfpo_envs.base import Verdict

# ----- built by batch.py from the rollouts ----------------------------------------------
INPUT_IDS = "input_ids"  # (B, P + C) int64: prompt and completion token ids, pad elsewhere
ATTENTION_MASK = "attention_mask"  # (B, P + C) int64: 1 on prompt and completion tokens, 0 on padding
COMPLETION_MASK = "completion_mask"  # (B, C) float32: 1 on completion tokens (eos included) that enter the loss
ADVANTAGES = "advantages"  # (B,) float32: the row's group advantage
MB_INDEX = "mb_index"  # (B,) int64: the global minibatch this row belongs to
MB_NUM_TOKENS = "mb_num_tokens"  # (B,) float32: completion tokens in that whole minibatch (all learners)
MB_NUM_SEQS = "mb_num_seqs"  # (B,) float32: completions in that whole minibatch (all learners)
# (B, C) float32, 0 on padding: log π of each sampled token as the rollout engine computed it
# (temperature-scaled; see engines/base.py). The learner compares it with θ⁰'s recompute
# (rollout_logp_diff); a truncated-importance-sampling loss weights by exp(old_logp - rollout_logp).
# Absent when the engine reports no log-probs.
ROLLOUT_LOGP = "rollout_logp"

# ----- added by the learner -------------------------------------------------------------
# (B, C) float32: log π under θ⁰, the learner's weights at the iteration's start, by the θ⁰ pass:
# the weights the rollouts came from (rollout_lag=0), or the proximal policy one update newer (lag 1)
OLD_LOGP = "old_logp"
OLD_ENTROPY = "old_entropy"  # (B, C) float32: the entropy under θ⁰ (the trigger's H_s), beside OLD_LOGP
REF_LOGP = "ref_logp"  # (B, C) float32: log π under the frozen reference model (only when kl_coeff > 0)

# ----- the module's forward output ------------------------------------------------------
LOGP = "logp"  # (B, C) float32: log π(sampled token) at the sampling temperature
ENTROPY = "entropy"  # (B, C) float32: entropy of π at the sampling temperature


def _unscored() -> Verdict:
    from sfpo_envs.base import Verdict

    return Verdict(reward=0.0, correct=False)


@dataclass
class Rollout:
    """One completion as the env runner sampled and the verifier scored it.

    ``verdict`` is the environment's ``Verdict`` as it returned it (for a verifier that
    failed under ``on_reward_error='zero'``: reward 0, ``info["reward_error"]``).
    ``reward`` is what the advantages are computed from: the verdict's reward plus any
    shaping (DAPO's overlong penalty, ``dynamic_sampling.shape_rewards``).
    """

    prompt_ids: list[int]
    completion_ids: list[int]  # eos included when the completion stopped
    # Unscored by default (only tests and benchmarks that lay out tokens build one so).
    verdict: Verdict = field(default_factory=lambda: _unscored())
    rollout_logp: list[float] | None = None  # the engine's log π of each completion token, if it reports them
    stopped: bool = True  # ended with eos (False: cut at max_new_tokens)
    prompt_index: int = -1  # the example of the training data set
    reward: float | None = None  # None: the verdict's reward

    def __post_init__(self):
        if self.reward is None:
            self.reward = float(self.verdict.reward)

    @property
    def verifier_reward(self) -> float:
        """The verifier's reward, before any shaping."""
        return float(self.verdict.reward)

    @property
    def correct(self) -> bool:
        return bool(self.verdict.correct)

    @property
    def timed_out(self) -> bool:
        return bool(self.verdict.info.get("timed_out", False))

    @property
    def reward_error(self) -> bool:
        """The verifier failed on this completion (scored 0 under ``on_reward_error='zero'``)."""
        return "reward_error" in self.verdict.info
