"""A user's own verifier, in a package of theirs, trained on by id: no edit to ours."""

import json
import sys
import textwrap

import pytest

from sfpo_rllib.cli import main
from sfpo_rllib.run_logger import read_metrics

PLUGIN = '''
import gymnasium as gym
from sfpo_envs import RewardFnEnv

CALLS = []

def make_env(data=None, split="train", **kwargs):
    examples = [{"prompt": f"{a}+{a}=", "target": str(2 * a)} for a in range(10)]
    def reward_fn(completion, example):
        reward = float(example["target"] in completion)
        CALLS.append(reward)
        return reward
    return RewardFnEnv(examples, reward_fn=reward_fn)

gym.register(id="my/Double-v0", entry_point=make_env, disable_env_checker=True)
'''


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    pkg = tmp_path / "my_verifiers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_verifiers"
    sys.modules.pop("my_verifiers", None)


@pytest.mark.slow
def test_training_on_a_plugged_in_reward_function(plugin_package, tmp_path):
    out = tmp_path / "run"
    settings = {"group_size": 4, "train_batch_size_per_learner": 16, "minibatch_size": 16,
                "max_new_tokens": 8, "test_interval": 0}
    main(["train", "--env", f"{plugin_package}:my/Double-v0", "--config", json.dumps(settings),
          "--stop-iters", "1", "--output", str(out), "--num-cpus", "2", "--no-progress"])
    rewards = sys.modules[plugin_package].CALLS
    assert len(rewards) == 16  # the plugin's reward function scored every completion
    row = read_metrics(str(out / "metrics.jsonl"))[-1]
    assert row["rollouts"] == 16
    assert row["reward_mean"] == pytest.approx(sum(rewards) / 16)  # its rewards are the ones trained on


def test_unknown_plugin_id_in_a_real_package_is_a_clear_error(plugin_package, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--env", f"{plugin_package}:my/Nope-v0"])
    assert "is not a registered gymnasium environment" in capsys.readouterr().err
