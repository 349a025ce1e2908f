"""End-to-end training on Ray with the embedded tiny model: exactness across algorithms,
learner counts, seeds and resumption. Sizes are tiny; what is checked is exact."""

import subprocess
import sys

import pytest

import torch
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID

from sfpo_rllib import GRPOConfig, SFPOConfig
from sfpo_rllib.run_logger import read_metrics, without_timings
from sfpo_rllib.train_run import run_training


def tiny_config(cls=SFPOConfig, *, learners=0, runners=0, **training):
    per_learner = max(1, learners)
    settings = dict(lr=3e-4, group_size=4, train_batch_size_per_learner=32 // per_learner,
                    minibatch_size=16 // per_learner, entropy_window=2)
    settings.update(training)
    return (
        cls()
        .environment("sfpo/Arithmetic-v0", env_config={"size": 2000})
        .training(**settings)
        .generation(max_new_tokens=12, torch_threads_per_runner=1)
        .held_out_test(test_interval=0)
        .env_runners(num_env_runners=runners, num_cpus_per_env_runner=0.3)
        .learners(num_learners=learners, num_cpus_per_learner=0.3)
        .debugging(seed=7)
    )


def policy_weights(algo) -> dict[str, torch.Tensor]:
    component = f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}"
    state = algo.learner_group.get_state(components=component)
    return state[COMPONENT_LEARNER][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]


def train(config, iterations):
    algo = config.build_algo()
    try:
        rows = [algo.train()["sfpo"] for _ in range(iterations)]
        return policy_weights(algo), rows
    finally:
        algo.stop()


def max_abs_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
def test_two_ddp_learners_and_two_remote_runners_match_a_local_learner(ray_session):
    local, local_rows = train(tiny_config(learners=0, runners=2), iterations=2)
    ddp, ddp_rows = train(tiny_config(learners=2, runners=2), iterations=2)
    assert local_rows[0]["reward_mean"] > 0 and local_rows[0]["reward_mean"] < 1, "need a learning signal"
    assert max_abs_diff(local, ddp) < 1e-5
    assert local_rows[0]["reposition_distance"] > 0
    # The trigger's entropy is the mean over all learners' tokens: the same as one learner's.
    assert abs(local_rows[1]["entropy"] - ddp_rows[1]["entropy"]) < 1e-5
    assert [r["optimizer_steps"] for r in ddp_rows] == [8, 8]  # (K + 1) passes x 2 minibatches


def test_alpha_one_equals_grpo_with_k_plus_one_epochs(ray_session):
    sfpo, _ = train(tiny_config(fast_steps=3, reposition_alpha=1.0), iterations=2)
    grpo, _ = train(tiny_config(GRPOConfig, num_epochs=4), iterations=2)
    assert all(torch.equal(sfpo[k], grpo[k]) for k in sfpo)


def test_resumed_run_ends_where_an_uninterrupted_run_ends(ray_session, tmp_path):
    config = tiny_config(entropy_window=2, entropy_z_threshold=0.5)
    straight = run_training(config, stop_iters=4, output_dir=str(tmp_path / "a"), checkpoint_every=2, progress=False)
    run_training(config, stop_iters=2, output_dir=str(tmp_path / "b"), checkpoint_every=2, progress=False)
    resumed = run_training(config, stop_iters=4, output_dir=str(tmp_path / "b"), resume=True, checkpoint_every=2, progress=False)
    a = read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
    b = read_metrics(str(tmp_path / "b" / "metrics.jsonl"))
    assert without_timings(a) == without_timings(b)
    assert [r["iteration"] for r in b] == [1, 2, 3, 4]
    assert straight["entropy_z"] is not None and straight["entropy_z"] == resumed["entropy_z"]
    assert straight.get("switch_off_iteration") == resumed.get("switch_off_iteration")
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "final_model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final_model" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_importing_the_package_registers_the_trainables():
    code = (
        "import ray, sfpo_rllib; ray.init(num_cpus=1, include_dashboard=False);"
        "from ray.tune.registry import get_trainable_cls;"
        "assert get_trainable_cls('SFPO') is sfpo_rllib.SFPO and get_trainable_cls('GRPO') is sfpo_rllib.GRPO;"
        "ray.shutdown()"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0


def test_tune_runs_sfpo_by_its_registered_name(ray_session, tmp_path):
    from ray import tune

    import sfpo_rllib

    sfpo_rllib.register()  # this test process has run earlier Ray sessions
    config = tiny_config(fast_steps=tune.grid_search([0, 2]))
    tuner = tune.Tuner(
        "SFPO",
        param_space=config,
        run_config=tune.RunConfig(stop={"training_iteration": 1}, storage_path=str(tmp_path), verbose=0),
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
    )
    results = tuner.fit()
    assert not results.errors
    steps = sorted(r.metrics["sfpo"]["optimizer_steps"] for r in results)
    assert steps == [2, 6]  # K=0: 1 pass x 2 minibatches; K=2: 3 passes
