"""DAPO's dynamic sampling and soft overlong penalty: which rollouts an iteration trains on.

``collect_batch`` is called once per iteration by ``SFPO.training_step``. It asks for
generation rounds (round 0 is the iteration's ordinary prompts; extra rounds draw prompts
from a stream keyed by (seed, iteration, round), so a resumed run samples the same),
shapes rewards, and, with ``filter_groups``, keeps only groups whose rewards are not all
equal (an all-equal group has zero advantage: it only dilutes the batch).

If ``max_sampling_rounds`` extra rounds still leave the batch short, it is filled by
repeating the informative groups already kept, in order (``groups_repeated``); only if
not one informative group was found is it filled with uninformative ones
(``groups_uninformative``, and ``groups_all_equal_reward`` > 0). The batch size never
changes silently, and both fills are reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from sfpo_rllib.columns import Rollout

Records = list[Rollout]


def overlong_penalty(length: int, *, max_new_tokens: int, buffer: int, penalty: float) -> float:
    """DAPO's soft overlong punishment: 0 up to max − buffer tokens, then down linearly to −penalty.

    >>> [overlong_penalty(n, max_new_tokens=10, buffer=4, penalty=1.0) for n in (6, 8, 10)]
    [0.0, -0.5, -1.0]
    """
    exceed = length - (max_new_tokens - buffer)
    return -min(max(exceed, 0) / buffer, 1.0) * penalty


def shape_rewards(records: Records, config) -> None:
    """Add the overlong penalty to each record's ``reward`` (its verdict keeps the verifier's)."""
    if config.overlong_buffer is None:
        return
    for r in records:
        r.reward = r.verifier_reward + overlong_penalty(
            len(r.completion_ids),
            max_new_tokens=config.max_new_tokens,
            buffer=config.overlong_buffer,
            penalty=config.overlong_penalty,
        )


def extra_round_prompts(run_seed: int, iteration: int, round_: int, *, num_prompts: int, train_size: int) -> np.ndarray:
    """Prompts of extra round ``round_`` (>= 1): a permutation keyed by (seed, iteration, round)."""
    perm = np.random.default_rng([run_seed, 4, iteration, round_]).permutation(train_size)
    return np.resize(perm, num_prompts)  # repeats the permutation if the data set is smaller


def _groups(records: Records, group_size: int) -> list[Records]:
    return [records[i : i + group_size] for i in range(0, len(records), group_size)]


def is_informative(group: Records) -> bool:
    """Not all rewards equal: the group's advantages are not all zero."""
    return len({r.reward for r in group}) > 1


@dataclass
class SamplingStats:
    """Dynamic sampling's metrics (filter_groups=True; the row's fields are null otherwise)."""

    sampling_rounds: int | None = None  # rounds sampled, the first included
    groups_sampled: int | None = None
    groups_dropped: int | None = None  # uninformative groups left out
    groups_repeated: int | None = None  # informative groups used twice to fill the batch
    groups_uninformative: int | None = None  # uninformative groups trained on (none was informative)


def collect_batch(
    sample_round: Callable[[int], Records], config, *, num_groups: int
) -> tuple[Records, Records, dict[str, Any]]:
    """(records to train on, every record sampled, metrics) for one iteration.

    ``sample_round(r)`` generates and scores round r's groups (consecutive records).
    Without ``filter_groups`` there is exactly one round and every group is kept.
    """
    g = config.group_size
    kept: list[Records] = []
    dropped: list[Records] = []
    sampled: Records = []
    rounds = 0
    max_rounds = 1 + (config.max_sampling_rounds if config.filter_groups else 0)
    while rounds < max_rounds and len(kept) < num_groups:
        records = sample_round(rounds)
        rounds += 1
        shape_rewards(records, config)
        sampled.extend(records)
        for group in _groups(records, g):
            (kept if not config.filter_groups or is_informative(group) else dropped).append(group)
    stats: dict[str, Any] = {}
    if config.filter_groups:
        informative = len(kept)
        repeated = uninformative = 0
        if informative == 0:
            uninformative = num_groups
            kept = [dropped[i % len(dropped)] for i in range(num_groups)]
        elif informative < num_groups:
            repeated = num_groups - informative
            kept = [kept[i % informative] for i in range(num_groups)]
        stats = asdict(SamplingStats(sampling_rounds=rounds, groups_sampled=len(sampled) // g,
                                     groups_dropped=len(dropped), groups_repeated=repeated,
                                     groups_uninformative=uninformative))
    train = [r for group in kept[:num_groups] for r in group]
    return train, sampled, stats
