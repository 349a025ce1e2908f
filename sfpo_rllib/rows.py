"""Training rows: rollouts laid out as ``[left-padded prompt | right-padded completion]``,
and one minibatch of them cut into micro-batches (what one forward/backward holds).

Pure numpy and PyTorch (no Ray): shared by the learner, plain training loops and benchmarks.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from sfpo_rllib.columns import ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS, ROLLOUT_LOGP, Rollout


def pad_rows(records: Sequence[Rollout], pad_token_id: int) -> dict[str, np.ndarray]:
    """[left-padded prompt | right-padded completion] rows, as the module expects."""
    prompt_width = max(len(r.prompt_ids) for r in records)
    completion_width = max(1, max(len(r.completion_ids) for r in records))
    n = len(records)
    input_ids = np.full((n, prompt_width + completion_width), pad_token_id, dtype=np.int64)
    attention = np.zeros((n, prompt_width + completion_width), dtype=np.int64)
    completion_mask = np.zeros((n, completion_width), dtype=np.float32)
    # An engine that reports no log-probs (a plugged-in one) leaves the column out.
    has_engine_logp = all(r.rollout_logp is not None for r in records)
    rollout_logp = np.zeros((n, completion_width), dtype=np.float32)
    for i, r in enumerate(records):
        p, c = r.prompt_ids, r.completion_ids
        input_ids[i, prompt_width - len(p) : prompt_width] = p
        input_ids[i, prompt_width : prompt_width + len(c)] = c
        attention[i, prompt_width - len(p) : prompt_width + len(c)] = 1
        # The mask comes from lengths, never from `ids != pad`: where pad == eos (Qwen)
        # that would drop the eos and the model would never learn to stop.
        completion_mask[i, : len(c)] = 1.0
        if has_engine_logp:
            rollout_logp[i, : len(c)] = r.rollout_logp
    columns = {INPUT_IDS: input_ids, ATTENTION_MASK: attention, COMPLETION_MASK: completion_mask}
    if has_engine_logp:  # else no column: a loss that needs it (tis_cap) says so, never reads zeros
        columns[ROLLOUT_LOGP] = rollout_logp
    return columns


def plan_micro_batches(
    prompt_lengths: Sequence[int],
    completion_lengths: Sequence[int],
    *,
    max_tokens: int | None = None,
    max_rows: int | None = None,
) -> list[np.ndarray]:
    """Cut one minibatch's rows into micro-batches; returns each micro-batch's row indices.

    With neither limit the whole minibatch is one micro-batch in its own order (today's
    layout). Otherwise rows are sorted by length, longest first (rows of similar length
    share a micro-batch, so little padding is computed, and the largest micro-batch runs
    first), then packed greedily while ``rows x (longest prompt + longest completion)``
    stays within ``max_tokens`` and the row count within ``max_rows`` (verl's dynamic
    batch size). A row that alone exceeds ``max_tokens`` is a ``RowTooLongError``.
    """
    prompts = np.asarray(prompt_lengths, dtype=np.int64)
    completions = np.maximum(np.asarray(completion_lengths, dtype=np.int64), 1)
    n = len(prompts)
    if max_tokens is None and max_rows is None:
        return [np.arange(n)]
    lengths = prompts + completions
    if max_tokens is not None:
        check_row_lengths(prompts, completions, max_tokens)
    order = np.argsort(-lengths, kind="stable")
    groups, current, widest_p, widest_c = [], [], 0, 0
    for row in order:
        p, c = max(widest_p, prompts[row]), max(widest_c, completions[row])
        too_many_tokens = max_tokens is not None and (len(current) + 1) * (p + c) > max_tokens
        too_many_rows = max_rows is not None and len(current) >= max_rows
        if current and (too_many_tokens or too_many_rows):
            groups.append(np.array(current))
            current, p, c = [], prompts[row], completions[row]
        current.append(int(row))
        widest_p, widest_c = p, c
    if current:
        groups.append(np.array(current))
    return groups


def check_row_lengths(prompt_lengths, completion_lengths, max_tokens: int, where: str = "this minibatch") -> None:
    """A row (prompt + completion, counted as at least 1 token) that alone exceeds ``max_tokens``
    is a ``RowTooLongError`` naming the longest such row: no micro-batch can hold it."""
    prompts = np.asarray(prompt_lengths, dtype=np.int64)
    completions = np.maximum(np.asarray(completion_lengths, dtype=np.int64), 1)
    lengths = prompts + completions
    if len(lengths) and lengths.max() > max_tokens:
        row = int(lengths.argmax())
        raise RowTooLongError(row, int(prompts[row]), int(completions[row]), max_tokens, where)


class RowTooLongError(ValueError):
    """A row longer than ``max_tokens_per_micro_batch``: the user's setting, not a bug. The
    CLI reports it as one line also when a remote learner raised it (inside a RayTaskError)."""

    def __init__(self, row: int, prompt: int, completion: int, budget: int, where: str = "this minibatch"):
        self.row, self.prompt, self.completion, self.budget, self.where = row, prompt, completion, budget, where
        self.length = prompt + completion
        super().__init__(
            f"`max_tokens_per_micro_batch` ({budget}) is smaller than row {row} of {where} "
            f"({prompt} prompt + {completion} completion = {prompt + completion} tokens); a row cannot "
            f"be split across micro-batches. Set max_tokens_per_micro_batch to at least {prompt + completion} "
            f"(max_prompt_tokens + max_new_tokens; setting max_prompt_tokens lets the config check this "
            f"before training), or lower max_new_tokens."
        )

    def __reduce__(self):  # pickled across Ray with its fields, not only its message
        return type(self), (self.row, self.prompt, self.completion, self.budget, self.where)


def cut_micro_batches(
    minibatch: dict[str, Any], *, max_tokens: int | None = None, max_rows: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One minibatch (torch columns, [prompt P | completion C] layout) -> its micro-batches.

    Each micro-batch is cut to its own widths: its longest prompt (the left padding of
    shorter prompts beyond that is dropped) and its longest completion. Columns are
    recognised by shape: (B, P + C) row layouts, (B, C) per-completion-token columns
    (log-probs of any source), anything else per row. Returns the micro-batches and
    ``real_tokens`` / ``computed_tokens`` (padding included) for the padding efficiency.
    """
    attention, completion_mask = minibatch[ATTENTION_MASK], minibatch[COMPLETION_MASK]
    width = attention.shape[1]
    c_width = completion_mask.shape[1]
    p_width = width - c_width
    prompt_lengths = attention[:, :p_width].sum(dim=1).tolist()
    completion_lengths = completion_mask.sum(dim=1).long().tolist()
    groups = plan_micro_batches(prompt_lengths, completion_lengths, max_tokens=max_tokens, max_rows=max_rows)
    real = float(attention.sum())
    if len(groups) == 1 and max_tokens is None and max_rows is None:
        return [minibatch], {"real_tokens": real, "computed_tokens": float(attention.numel())}
    micro_batches, computed = [], 0.0
    for rows in groups:
        index = torch.as_tensor(rows, device=attention.device)
        p = int(max(prompt_lengths[r] for r in rows))
        c = int(max(1, max(completion_lengths[r] for r in rows)))
        micro = {}
        for name, column in minibatch.items():
            column = column[index]
            if column.dim() == 2 and column.shape[1] == width:
                column = column[:, p_width - p : p_width + c]
            elif column.dim() == 2 and column.shape[1] == c_width:
                column = column[:, :c]
            micro[name] = column
        micro_batches.append(micro)
        computed += len(rows) * (p + c)
    return micro_batches, {"real_tokens": real, "computed_tokens": computed}
