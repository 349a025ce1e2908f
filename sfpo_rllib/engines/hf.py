"""Rollouts with transformers' ``generate``: batched, left-padded, with KV cache."""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from sfpo_rllib.engines.base import Completion, RolloutEngine, SamplingParams


class SampledLogprobRecorder(LogitsProcessor):
    """Records log π(sampled token) at ``temperature`` at every generate step.

    ``generate`` runs custom processors before its temperature/top-k/top-p warpers and
    never hands a processor the token it then samples. So each call keeps this step's
    ``log_softmax(scores / temperature)`` and, on the next call, gathers it at the token
    that was appended (``input_ids[:, -1]``); ``finish`` gathers the last step. Only one
    (rows, vocab) tensor is alive at a time, unlike ``output_scores`` (one per step).
    The processor changes no score.
    """

    def __init__(self, temperature: float):
        self.temperature = float(temperature)
        self._pending: torch.Tensor | None = None  # (B, V) log-probs of the last step
        self.steps: list[torch.Tensor] = []  # (B,) per step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids[:, -1])
        self._pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        if self._pending is not None:
            self.steps.append(self._pending.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).cpu())
            self._pending = None

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, T_new) log-probs, given the full output sequences of ``generate``."""
        self._take(sequences[:, -1])
        if not self.steps:
            return torch.zeros(sequences.shape[0], 0)
        return torch.stack(self.steps, dim=1)


class HFGenerateEngine(RolloutEngine):
    """Samples with ``model.generate`` on the model the env runner holds.

    Args:
        model: a causal LM (shared with the runner, not copied).
        pad_token_id / eos_token_id: from the tokenizer; pad may equal eos (Qwen).
        max_batch_size: rows (prompt x sample) per ``generate`` call, bounds memory.
    """

    # The runner's module and this engine hold the same model object: a weight sync
    # into the module is already a sync into the engine.
    shares_policy_weights = True

    def __init__(self, model: PreTrainedModel, *, pad_token_id: int, eos_token_id: int, max_batch_size: int = 256):
        self.model = model
        self.pad_token_id = int(pad_token_id)
        self.eos_token_id = int(eos_token_id)
        self.max_batch_size = int(max_batch_size)

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        # Built from scratch (not from model.generation_config) so no checkpoint default
        # (top_k=50, repetition_penalty, suppress_tokens, ...) leaks into sampling.
        return GenerationConfig(
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=0,
            num_beams=1,
            repetition_penalty=1.0,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            bos_token_id=None,
            use_cache=True,
        )

    @torch.no_grad()
    def generate(
        self, prompt_ids: Sequence[Sequence[int]], n: int, params: SamplingParams, seed: int
    ) -> list[Completion]:
        rows = [list(p) for p in prompt_ids for _ in range(n)]
        config = self._generation_config(params)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        # Seeded per call, so a run's rollouts depend only on its seed and iteration.
        torch.manual_seed(seed)
        out: list[Completion] = []
        try:
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start : start + self.max_batch_size]
                width = max(len(r) for r in chunk)
                input_ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long)
                attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, r in enumerate(chunk):  # left padding: completions start at one column
                    input_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
                    attention_mask[i, width - len(r) :] = 1
                recorder = SampledLogprobRecorder(params.temperature)
                sequences = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                    logits_processor=LogitsProcessorList([recorder]),
                )
                logprobs = recorder.finish(sequences).tolist()  # (B, T_new)
                generated = sequences[:, width:].tolist()  # (B, T_new), ragged rows padded after eos
                for row, row_logprobs in zip(generated, logprobs):
                    kept = self._strip(row, params.max_new_tokens)
                    out.append(Completion(kept, row_logprobs[: len(kept)]))
        finally:
            self.model.train(was_training)
        return out

    def _strip(self, row: list[int], max_new_tokens: int) -> list[int]:
        """Keep tokens up to and including the first eos; drop generate's padding."""
        if self.eos_token_id in row:
            return row[: row.index(self.eos_token_id) + 1]
        return row[:max_new_tokens]

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> float:
        t0 = time.perf_counter()
        self.model.load_state_dict(state_dict, strict=True)
        return time.perf_counter() - t0
