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

from sfpo_envs.base import Verdict, VerifierEnv
from sfpo_envs.datasets import load_examples
from sfpo_envs.math_verifier import MathCheck, MathVerifier
from sfpo_envs.templates import render, resolve_template


class MathEnv(VerifierEnv):
    """``sfpo/Math-v0``: one problem per episode, reward from math-verify.

    Args:
        data: path (.jsonl, .jsonl.gz, .json, .parquet, or a directory with
            ``{split}.jsonl``/``{split}.parquet``), ``"hf:org/name"``, or a list of dicts.
        split: which split of a directory or hub dataset (a single file is read whole,
            unless ``split_fraction`` carves it).
        split_fraction: hold out about this share of the rows (by a hash of the question,
            seeded by ``split_seed``) as the "test" split; the rest is "train". Use it to
            train and test on one file; None reads the data as it is.
        split_seed: which rows the carve holds out (the same seed, the same rows).
        prompt_template: "math", "plain", or a string with ``{question}``. Default: "math",
            except "plain" for verl data, whose prompt column already holds the instruction.
        layout: "auto" (detect from the columns) or a name from ``datasets.LAYOUTS``.
        columns: map our field names to yours, e.g. ``{"question": "q", "answer": "a"}``.
        on_bad_row: "error" (raise, naming file and row) or "skip" (count them in
            ``skipped_rows`` and log a warning).
        format_score: reward for an answer that was extracted but is wrong.
        timeout_s: the most seconds one check may take; past it the reward is 0 and
            ``info["timed_out"]`` is True (counted in ``verifier.stats["timed_out"]``).
        num_workers: verifier worker processes (default: CPU count, at most 4).
    """

    def __init__(
        self,
        data: Any = None,
        split: str = "train",
        prompt_template: str | None = None,
        *,
        layout: str = "auto",
        columns: Mapping[str, str] | None = None,
        on_bad_row: str = "error",
        split_fraction: float | None = None,
        split_seed: int = 0,
        format_score: float = 0.0,
        timeout_s: float = 5.0,
        num_workers: int | None = None,
    ):
        if data is None:
            raise ValueError(
                "sfpo/Math-v0 needs `data=`: a .jsonl/.json/.parquet file, a directory with "
                "{split}.jsonl, 'hf:org/name', or a list of dicts with question and answer."
            )
        # Checked first (it starts no process until the first check), so bad settings fail fast.
        self.verifier = MathVerifier(timeout_s=timeout_s, num_workers=num_workers)
        loaded = load_examples(data, split=split, layout=layout, columns=columns, on_bad_row=on_bad_row,
                               split_fraction=split_fraction, split_seed=split_seed)
        if loaded.kind != "math":
            raise ValueError(
                f"`data` ({data!r}) has the {loaded.layout!r} layout, which holds code problems; "
                "sfpo/Math-v0 needs math problems (question + answer). Use the code environment, "
                "or pass layout= / columns= if the layout was detected wrongly."
            )
        if prompt_template is None:
            prompt_template = "plain" if loaded.layout == "verl" else "math"
        self.prompt_template = resolve_template(prompt_template)
        self.layout = loaded.layout
        self.skipped_rows = loaded.skipped
        self.num_skipped = loaded.num_skipped
        super().__init__(loaded.examples, format_score=format_score)

    def build_prompt(self, example: Mapping[str, Any]) -> str:
        return render(self.prompt_template, example["question"])

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

    def verify(self, completion: str, example: Mapping[str, Any]) -> Verdict:
        return self.verify_batch([completion], [example])[0]

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
