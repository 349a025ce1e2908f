"""End-to-end on Ray with the embedded tiny model: LoRA adapters and DAPO's dynamic
sampling composed with SFPO (learner counts, resume, export). Sizes are tiny."""

import torch
from safetensors.torch import load_file
from test_training_e2e import max_abs_diff, policy_weights, tiny_config, train

from sfpo_rllib.run_logger import read_metrics, without_timings
from sfpo_rllib.train_run import run_training

LORA = dict(lora_rank=4, lora_alpha=8.0, lr=3e-3)


def test_lora_two_ddp_learners_match_a_local_learner(ray_session):
    # One local runner on both sides (the same rollouts), to keep the test short.
    algo = tiny_config(learners=0, runners=0, **LORA).build_algo()
    try:
        rows = [algo.train()["sfpo"] for _ in range(2)]
        local = policy_weights(algo)
        runner = algo.env_runner.module.get_state()  # what the hf engine samples from
        assert all(torch.equal(runner[k], local[k]) for k in local)
    finally:
        algo.stop()
    ddp, _ = train(tiny_config(learners=2, runners=0, **LORA), iterations=2)
    assert rows[0]["reposition_distance"] > 0
    adapters = [k for k in local if ".lora_" in k]
    assert adapters and max(float(local[k].abs().max()) for k in adapters if ".lora_B" in k) > 0
    assert max_abs_diff(local, ddp) < 1e-5


def test_dynamic_sampling_with_lora_trains_informative_groups_resumes_exactly_and_exports(ray_session, tmp_path):
    from transformers import AutoModelForCausalLM

    config = tiny_config(filter_groups=True, max_sampling_rounds=3, overlong_buffer=4, mask_truncated=True, **LORA)
    run_training(config, stop_iters=3, output_dir=str(tmp_path / "a"), checkpoint_every=1, progress=False)
    run_training(config, stop_iters=2, output_dir=str(tmp_path / "b"), checkpoint_every=1, progress=False)
    run_training(config, stop_iters=3, output_dir=str(tmp_path / "b"), resume=True, checkpoint_every=1, progress=False)
    a = read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
    assert without_timings(a) == without_timings(read_metrics(str(tmp_path / "b" / "metrics.jsonl")))
    for row in a:
        assert row["groups_all_equal_reward"] == 0
        assert row["groups_sampled"] == 8 * row["sampling_rounds"]  # 8 prompts a round, all counted
        assert row["rollouts"] % 32 == 0 and "overlong_penalty_mean" in row
    assert sum(r["groups_dropped"] for r in a) > 0, "nothing was filtered: the test would prove nothing"
    wa = load_file(str(tmp_path / "a" / "final_model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final_model" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the adapters were checkpointed and resumed
    assert (tmp_path / "a" / "final_adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "final_model")
    assert not any("lora" in k for k in merged.state_dict())
