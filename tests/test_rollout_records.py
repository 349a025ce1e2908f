"""How a verifier's Verdict reaches the rollout record: unchanged from a VerifierEnv, built
by the one "correct if reward >= 1" rule from a plain gymnasium env's step()."""

import dataclasses

import gymnasium as gym
import pytest

from sfpo_envs import RewardFnEnv, TextSpace, Verdict
from sfpo_envs.base import CORRECT_REWARD
from sfpo_rllib.columns import Rollout
from sfpo_rllib.dynamic_sampling import shape_rewards
from sfpo_rllib.env_runner import TextTask


class Scored(RewardFnEnv):
    """Keeps the Verdict objects it returned, to check they arrive unchanged."""

    def __init__(self):
        super().__init__([{"prompt": "a"}, {"prompt": "b"}], reward_fn=lambda c, ex: float(c == "yes"))
        self.returned = []

    def verify(self, completion, example):
        verdict = Verdict(reward=float(completion == "yes"), correct=completion == "yes", info={"timed_out": completion == "slow"})
        self.returned.append(verdict)
        return verdict


class PlainStepEnv(gym.Env):
    """A user's gymnasium env with only reset/step (no score()); rewards from a table."""

    def __init__(self, rewards, infos=None):
        self.rewards, self.infos = rewards, infos or [{}] * len(rewards)
        self.observation_space = self.action_space = TextSpace()
        self.index = None

    def __len__(self):
        return len(self.rewards)

    def reset(self, *, seed=None, options=None):
        self.index = options["index"]
        return f"problem {self.index}", {}

    def step(self, action):
        return "", self.rewards[self.index], True, False, self.infos[self.index]


def test_a_verifier_envs_verdicts_arrive_unchanged():
    env = Scored()
    verdicts = TextTask(env).score(["yes", "no", "slow"], [0, 1, 0])
    assert all(got is sent for got, sent in zip(verdicts, env.returned))
    records = [Rollout([1], [2], v) for v in verdicts]
    assert [r.reward for r in records] == [1.0, 0.0, 0.0] and [r.correct for r in records] == [True, False, False]
    assert [r.timed_out for r in records] == [False, False, True] and not any(r.reward_error for r in records)


def test_a_plain_step_env_is_read_by_the_one_correct_rule():
    task = TextTask(PlainStepEnv([CORRECT_REWARD, 0.99, 2, 0.0], [{}, {}, {}, {"correct": True}]))
    verdicts = task.score(["x"] * 4, [0, 1, 2, 3])
    assert [v.correct for v in verdicts] == [True, False, True, True]  # an info "correct" wins
    assert [v.reward for v in verdicts] == [1.0, 0.99, 2.0, 0.0] and all(type(v.reward) is float for v in verdicts)


@pytest.mark.parametrize("reward", [float("nan"), True, "1", None])
def test_a_reward_that_is_not_a_finite_number_is_a_reward_error(reward):
    (verdict,) = TextTask(PlainStepEnv([reward])).score(["x"], [0])
    record = Rollout([1], [2], verdict)
    assert record.reward_error and record.reward == 0.0 and not record.correct
    assert "not a finite number" in verdict.info["reward_error"]


def test_a_verifier_that_raises_fails_only_its_own_completion():
    def reward_fn(completion, example):
        if completion == "boom":
            raise ZeroDivisionError("bad")
        return 1.0

    verdicts = TextTask(RewardFnEnv([{"prompt": "p"}], reward_fn=reward_fn)).score(["ok", "boom"], [0, 0])
    assert verdicts[0].reward == 1.0 and verdicts[0].correct and "reward_error" not in verdicts[0].info
    assert verdicts[1].reward == 0.0 and verdicts[1].info["reward_error"] == "ZeroDivisionError: bad"


def test_shaping_changes_the_training_reward_never_the_verdict():
    class Settings:
        overlong_buffer, overlong_penalty, max_new_tokens = 2, 1.0, 4

    record = Rollout([1], [3, 3, 3, 3], Verdict.from_reward(1.0))
    shape_rewards([record], Settings())
    assert record.reward == 0.0 and record.verifier_reward == 1.0 and record.verdict.reward == 1.0
    assert dataclasses.replace(record, stopped=False).reward == 0.0  # a copy keeps the shaped reward


class _SplitEnv(gym.Env):
    """Its ``prompt()`` ignores the split; what ``reset`` gives the policy does not."""

    observation_space = action_space = TextSpace()

    def __init__(self, split="train"):
        self.split = split

    def __len__(self):
        return 3

    def prompt(self, index):
        return f"problem {index}"

    def reset(self, *, seed=None, options=None):
        return f"{self.split} problem {options['index']}", {}

    def step(self, action):
        return "", 0.0, True, False, {}


def test_held_out_check_compares_the_prompts_the_policy_is_given():
    """One prompt path: the held-out check reads prompts as the env runner does (TextTask), so
    it neither misses nor invents an overlap that the policy would not see."""
    from types import SimpleNamespace

    from sfpo_rllib.env_factory import check_held_out_data

    gym.register(id="sfpo_test/SplitPrompts-v0", entry_point=_SplitEnv)
    try:
        config = SimpleNamespace(env="sfpo_test/SplitPrompts-v0", env_config={}, test_env_config={"split": "test"})
        assert check_held_out_data(config) == 0
        assert TextTask(_SplitEnv("test")).prompt(1)[0] == "test problem 1"
    finally:
        gym.registry.pop("sfpo_test/SplitPrompts-v0")
