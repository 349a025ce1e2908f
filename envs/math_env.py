"""``sfpo/Math-v0``: math word problems from a user's data, checked with math-verify.

    env = gymnasium.make("sfpo/Math-v0", data="math500_test.jsonl", split="test")
    prompt, info = env.reset(options={"index": 0})
    _, reward, terminated, truncated, info = env.step("... so the answer is \\boxed{3}.")
    # info: {'index': 0, 'correct': ..., 'extracted': '3', 'gold': ..., 'timed_out': False}
    env.close()

Rows are read by ``sfpo_envs.datasets.load_examples`` (file, directory, ``hf:`` name or a
list of dicts; layouts gsm8k, math, aime, amc, minerva, olympiadbench, verl, or
``columns=``). Completions are checked by ``MathVerifier`` in worker processes under a
hard per-call timeout; call ``env.close()`` to stop them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from sfpo_envs.base import DatasetEnv, Verdict
from sfpo_envs.math_verifier import MathCheck, MathVerifier


class MathEnv(DatasetEnv):
    """``sfpo/Math-v0``: one problem per episode, reward from math-verify.

    Args:
        data, split, prompt_template, and the keyword data options (layout, columns,
            on_bad_row, split_fraction, split_seed, format_score): see ``DatasetEnv``.
            prompt_template defaults to "math", except "plain" for verl data, whose
            prompt column already holds the instruction.
        timeout_s: the most seconds one check may take; past it the reward is 0 and
            ``info["timed_out"]`` is True (counted in ``verifier.stats["timed_out"]``).
        num_workers: verifier worker processes (default: CPU count, at most 4).
    """

    ENV_ID = "sfpo/Math-v0"
    KIND = "math"
    DATA_HINT = ("a .jsonl/.json/.parquet file, a directory with {split}.jsonl, 'hf:org/name', or a list of "
                 "dicts with question and answer.")
    WRONG_KIND_HINT = "math problems (question + answer). Use sfpo/Code-v0 for code"

    def __init__(
        self,
        data: Any = None,
        split: str = "train",
        prompt_template: str | None = None,
        *,
        timeout_s: float = 5.0,
        num_workers: int | None = None,
        **data_options: Any,
    ):
        self.require_data(data)
        # Checked before the data is read (it starts no process until the first check).
        self.verifier = MathVerifier(timeout_s=timeout_s, num_workers=num_workers)
        super().__init__(data, split, prompt_template, **data_options)

    def default_template(self, layout: str) -> str:
        return "plain" if layout == "verl" else "math"

    def messages(self, index: int) -> list[dict]:
        """The chat messages for example ``index``: verl data keeps its system messages."""
        example = self.examples[index]
        prompt = self.build_prompt(example)
        original = example["meta"].get("messages") if isinstance(example.get("meta"), Mapping) else None
        if not original:
            return [{"role": "user", "content": prompt}]
        messages = [dict(m) for m in original]
        last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
        messages[last_user]["content"] = prompt
        return messages

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        prompt, info = super().reset(seed=seed, options=options)
        info["messages"] = self.messages(info["index"])
        return prompt, info

    def verify_batch(
        self, completions: Sequence[str], examples: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        checks = self.verifier.check_many(list(completions), [e["answer"] for e in examples])
        return [self._verdict(check) for check in checks]

    def _verdict(self, check: MathCheck) -> Verdict:
        if check.correct:
            reward = 1.0
        elif check.extracted is not None:
            reward = self.format_score
        else:  # no answer found, timed out, or the worker crashed
            reward = 0.0
        info = {"extracted": check.extracted, "gold": check.gold, "timed_out": check.timed_out}
        if check.error is not None:
            info["error"] = check.error
        return Verdict(reward=reward, correct=check.correct, info=info)

    def close(self) -> None:
        if getattr(self, "verifier", None) is not None:
            self.verifier.close()
        super().close()
