"""The rollout-engine interface: turn prompt token ids into sampled completion token ids.

An engine is owned by one env runner. The runner hands it the learners' weights after
every iteration (``load_weights``) and asks for G completions per prompt (``generate``).
Every sampling parameter is passed explicitly: a model's own generation config (e.g. a
``top_k=50`` default) must never change the distribution the loss assumes.

Every engine also reports, per sampled token, the log-probability the engine itself gave
it under the temperature-scaled distribution (``Completion.logprobs``). The learner
compares them with its own recompute under θ⁰ (``rollout_logp_diff``): an engine that
kept stale weights, or computes differently, shows up there at once.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k truncation


class Completion(list):
    """One completion's token ids (a plain ``list[int]``, so it compares, slices and
    decodes as one), plus ``logprobs``: the engine's log π(token) for each of them, at the
    sampling temperature, one float per token."""

    def __init__(self, token_ids: Sequence[int], logprobs: Sequence[float]):
        super().__init__(int(t) for t in token_ids)
        self.logprobs = [float(x) for x in logprobs]
        if len(self.logprobs) != len(self):
            raise ValueError(f"{len(self)} tokens but {len(self.logprobs)} log-probs")


class RolloutEngine(abc.ABC):
    """Samples completions; implementations: ``HFGenerateEngine`` and ``VLLMEngine`` (CPU or GPU)."""

    # True when the engine samples from the runner's own module (no copy to refresh).
    shares_policy_weights: bool = False

    @abc.abstractmethod
    def generate(
        self, prompt_ids: Sequence[Sequence[int]], n: int, params: SamplingParams, seed: int
    ) -> list[Completion]:
        """``n`` completions per prompt, grouped by prompt: ``len(prompt_ids) * n`` of them.

        A completion that stopped ends with the eos token (kept: the loss must learn to
        stop); one cut at ``max_new_tokens`` has no eos. No padding is returned. The same
        ``seed`` on the same weights gives the same completions (see each engine for limits).
        """

    @abc.abstractmethod
    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> float:
        """Replace the engine's weights with the policy's (Hugging Face parameter names);
        returns the seconds it took."""

    def close(self) -> None:
        """Free the engine's resources (GPU memory, worker processes)."""
