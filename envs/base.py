"""The single-step text environment contract shared by every sfpo environment.

One episode is one problem: ``reset()`` returns the prompt text, ``step(completion)``
returns the verifier's reward and ends the episode (``terminated=True``).

Reward convention (every environment in this package follows it):
  * 1.0  the completion's answer is correct,
  * ``format_score`` (default 0.0)  an answer could be extracted but it is wrong,
  * 0.0  no answer could be extracted, the verifier timed out, or the code crashed.

The trainer samples G completions for one prompt, so besides ``reset``/``step`` the
environment offers ``score(completions, indices)``, which verifies many completions at
once (the code environment runs them in a bounded pool).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np

from sfpo_envs.datasets import load_examples
from sfpo_envs.templates import render, resolve_template


class TextSpace(gym.Space[str]):
    """Any Python string up to ``max_length`` characters.

    gymnasium's ``Text`` space only admits a fixed charset; prompts and model output
    can hold any unicode character, so this space only checks type and length.
    """

    def __init__(self, max_length: int = 1_000_000, seed: int | None = None):
        self.max_length = max_length
        super().__init__(shape=None, dtype=None, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        length = int(self.np_random.integers(0, 16))
        chars = self.np_random.integers(32, 127, size=length)
        return "".join(chr(c) for c in chars)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length


# A verifier that reports only a reward (a plain reward function, a plain gymnasium env)
# is read as "correct" exactly when the reward reaches this (the reward convention above).
CORRECT_REWARD = 1.0


@dataclass
class Verdict:
    """What a verifier concluded about one completion.

    It travels unchanged from the environment to the trainer's rollout record.
    """

    reward: float
    correct: bool
    # Explains the verdict: e.g. "extracted", "gold", "timed_out", "error".
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_reward(cls, reward: float, info: Mapping[str, Any] | None = None) -> "Verdict":
        """The verdict of a verifier that reports a reward (and maybe ``info``), as a gymnasium
        ``step()`` does: correct is ``info["correct"]`` where given, else reward >= CORRECT_REWARD."""
        info = dict(info or {})
        correct = bool(info.pop("correct")) if "correct" in info else reward >= CORRECT_REWARD
        return cls(reward=reward, correct=correct, info=info)


class VerifierEnv(gym.Env, abc.ABC):
    """Base class: a list of examples, a prompt template and a verifier.

    Subclasses implement ``build_prompt(example)`` and ``verify(completion, example)``
    and fill ``self.examples`` (a list of dicts) in ``__init__`` before calling
    ``super().__init__``.
    """

    metadata = {"render_modes": []}

    def __init__(self, examples: Sequence[Mapping[str, Any]], *, format_score: float = 0.0):
        if not examples:
            raise ValueError(
                f"{type(self).__name__} got no examples: the data it was given is empty. "
                "Pass `data=` pointing at a file with at least one row."
            )
        if not 0.0 <= format_score < 1.0:
            raise ValueError(
                f"`format_score` ({format_score}) must be in [0, 1): it is the reward for a "
                "well-formed but wrong answer and must stay below a correct answer's 1.0."
            )
        self.examples = list(examples)
        self.format_score = float(format_score)
        self.observation_space = TextSpace()
        self.action_space = TextSpace()
        self._index: int | None = None

    # ----- what a subclass provides -------------------------------------------------
    @abc.abstractmethod
    def build_prompt(self, example: Mapping[str, Any]) -> str:
        """The prompt text the policy sees for this example."""

    @abc.abstractmethod
    def verify(self, completion: str, example: Mapping[str, Any]) -> Verdict:
        """Score one completion against one example (reward per the module docstring)."""

    def verify_batch(
        self, completions: Sequence[str], examples: Sequence[Mapping[str, Any]]
    ) -> list[Verdict]:
        """Score many completions; override to verify in parallel."""
        return [self.verify(c, e) for c, e in zip(completions, examples)]

    # ----- gymnasium API ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.examples)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "index" in options:
            index = int(options["index"])
            if not 0 <= index < len(self.examples):
                raise IndexError(
                    f"`options['index']` ({index}) is out of range: this environment has "
                    f"{len(self.examples)} examples (valid: 0..{len(self.examples) - 1})."
                )
        else:
            index = int(self.np_random.integers(len(self.examples)))
        self._index = index
        prompt = self.build_prompt(self.examples[index])
        return prompt, {"index": index, "messages": [{"role": "user", "content": prompt}]}

    def step(self, action: str):
        if self._index is None:
            raise RuntimeError("Call reset() before step(): there is no current problem.")
        if not isinstance(action, str):
            raise TypeError(
                f"step() takes the completion text (str), got {type(action).__name__}."
            )
        example = self.examples[self._index]
        verdict = self.verify_batch([action], [example])[0]
        info = {"index": self._index, "correct": verdict.correct, **verdict.info}
        prompt = self.build_prompt(example)
        self._index = None
        return prompt, float(verdict.reward), True, False, info

    # ----- what the trainer calls ---------------------------------------------------
    def prompt(self, index: int) -> str:
        return self.build_prompt(self.examples[index])

    def score(self, completions: Sequence[str], indices: Sequence[int]) -> list[Verdict]:
        """Verify ``completions[i]`` against example ``indices[i]``, all at once."""
        if len(completions) != len(indices):
            raise ValueError(
                f"score() got {len(completions)} completions but {len(indices)} indices; "
                "pass one index per completion."
            )
        return self.verify_batch(completions, [self.examples[i] for i in indices])


RewardFn = Callable[[str, Mapping[str, Any]], float]


class RewardFnEnv(VerifierEnv):
    """A verifier environment from a plain reward function: the quickest way to plug in.

    ``reward_fn(completion, example) -> float`` gets the completion text and the example
    dict; ``prompt_fn(example) -> str`` (default: ``example["prompt"]``) renders the prompt.

    >>> env = RewardFnEnv(
    ...     examples=[{"prompt": "Say hi.", "target": "hi"}],
    ...     reward_fn=lambda completion, ex: float(ex["target"] in completion),
    ... )
    >>> prompt, info = env.reset(options={"index": 0})
    >>> env.step("hi there")[1]
    1.0
    """

    def __init__(
        self,
        examples: Sequence[Mapping[str, Any]],
        reward_fn: RewardFn,
        prompt_fn: Callable[[Mapping[str, Any]], str] | None = None,
        format_score: float = 0.0,
    ):
        if not callable(reward_fn):
            raise TypeError(
                f"`reward_fn` must be a callable (completion, example) -> float, "
                f"got {type(reward_fn).__name__}."
            )
        self.reward_fn = reward_fn
        self.prompt_fn = prompt_fn
        super().__init__(examples, format_score=format_score)

    def build_prompt(self, example: Mapping[str, Any]) -> str:
        if self.prompt_fn is not None:
            return self.prompt_fn(example)
        if "prompt" not in example:
            raise KeyError(
                f"Example has no 'prompt' field (fields: {sorted(example)}); give the "
                "environment a `prompt_fn` or add a 'prompt' column."
            )
        return str(example["prompt"])

    def verify(self, completion: str, example: Mapping[str, Any]) -> Verdict:
        value = self.reward_fn(completion, example)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(
                f"`reward_fn` returned {value!r:.60} ({type(value).__name__}) for completion "
                f"{completion[:80]!r}; it must return a finite float."
            )
        reward = float(value)
        if not np.isfinite(reward):
            raise ValueError(
                f"`reward_fn` returned {reward} for completion {completion[:80]!r}; "
                "rewards must be finite floats."
            )
        return Verdict.from_reward(reward)


class DatasetEnv(VerifierEnv):
    """Base of the environments over a user's data (math, code): loading, the layout check,
    the prompt template. A subclass calls ``require_data(data)``, builds its verifier (so
    bad verifier settings fail before the data is read), then calls ``super().__init__``;
    it implements ``verify_batch`` and ``default_template``.

    Data options, the same for every subclass:
        data: path (.jsonl, .jsonl.gz, .json, .parquet, or a directory with
            ``{split}.jsonl``/``{split}.parquet``), ``"hf:org/name"``, or a list of dicts.
        split: which split of a directory or hub dataset (a single file is read whole,
            unless ``split_fraction`` carves it).
        split_fraction: hold out about this share of the rows (by a hash of the question,
            seeded by ``split_seed``) as the "test" split; the rest is "train". Use it to
            train and test on one file; None reads the data as it is.
        split_seed: which rows the carve holds out (the same seed, the same rows).
        prompt_template: a template name ("math", "code", "plain") or a string with
            ``{question}``; None: the subclass's ``default_template``.
        layout: "auto" (detect from the columns) or a name from ``datasets.LAYOUTS``.
        columns: map our field names to yours, e.g. ``{"question": "q", "answer": "a"}``.
        on_bad_row: "error" (raise, naming file and row) or "skip" (count them in
            ``skipped_rows`` and log a warning).
        format_score: reward for an answer that was extracted (or code from a fenced
            block) but is wrong.
    """

    ENV_ID: str  # e.g. "sfpo/Math-v0", for messages
    KIND: str  # the kind of problem it needs: "math" or "code" (``datasets.LoadedData.kind``)
    DATA_HINT: str  # what `data=` may be, for the message when it is missing
    WRONG_KIND_HINT: str  # what it needs and where the other kind goes, when the layout is wrong

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
    ):
        self.require_data(data)
        loaded = load_examples(data, split=split, layout=layout, columns=columns, on_bad_row=on_bad_row,
                               split_fraction=split_fraction, split_seed=split_seed)
        if loaded.kind != self.KIND:
            raise ValueError(
                f"`data` ({data!r}) has the {loaded.layout!r} layout, which holds {loaded.kind} problems; "
                f"{self.ENV_ID} needs {self.WRONG_KIND_HINT}, or pass layout= / columns= if the layout "
                "was detected wrongly."
            )
        self.layout = loaded.layout
        self.skipped_rows = loaded.skipped
        self.num_skipped = loaded.num_skipped
        self.prompt_template = resolve_template(
            self.default_template(loaded.layout) if prompt_template is None else prompt_template
        )
        super().__init__(loaded.examples, format_score=format_score)

    def require_data(self, data: Any) -> None:
        """A subclass calls this before building its verifier: a missing `data=` is the first error."""
        if data is None:
            raise ValueError(f"{self.ENV_ID} needs `data=`: {self.DATA_HINT}")

    @abc.abstractmethod
    def default_template(self, layout: str) -> str:
        """The prompt template when the user names none."""

    def build_prompt(self, example: Mapping[str, Any]) -> str:
        return render(self.prompt_template, example["question"])

    def verify(self, completion: str, example: Mapping[str, Any]) -> Verdict:
        return self.verify_batch([completion], [example])[0]
