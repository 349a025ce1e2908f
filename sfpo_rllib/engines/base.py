"""The rollout-engine interface: turn prompt token ids into sampled completion token ids.

An engine is owned by one env runner. The runner hands it the learners' weights after
every iteration (``load_weights``) and asks for G completions per prompt (``generate``).
Every sampling parameter is passed explicitly: a model's own generation config (e.g. a
``top_k=50`` default) must never change the distribution the loss assumes.
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


class RolloutEngine(abc.ABC):
    """Samples completions; implementations: ``HFGenerateEngine`` (CPU/GPU), ``VLLMEngine`` (GPU)."""

    # True when the engine samples from the runner's own module (no copy to refresh).
    shares_policy_weights: bool = False

    @abc.abstractmethod
    def generate(
        self, prompt_ids: Sequence[Sequence[int]], n: int, params: SamplingParams, seed: int
    ) -> list[list[int]]:
        """``n`` completions per prompt, grouped by prompt: ``len(prompt_ids) * n`` lists.

        A completion that stopped ends with the eos token (kept: the loss must learn to
        stop); one cut at ``max_new_tokens`` has no eos. No padding is returned.
        """

    @abc.abstractmethod
    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Replace the engine's weights with the policy's (Hugging Face parameter names)."""

    def close(self) -> None:
        """Free the engine's resources (GPU memory, worker processes)."""
