"""GXPO and DGG's gate in real (tiny) training runs on Ray: what they log, and that a resumed
run with the lm_head gradient gate ends exactly where an uninterrupted one ends."""

import os

import torch
from test_training_e2e import tiny_config, train

from sfpo_rllib.run_logger import read_metrics, without_timings
from sfpo_rllib.train_run import run_training


def test_gxpo_takes_three_steps_per_minibatch_and_falls_back_to_grpo_after_its_gate(ray_session):
    # Window 2 and |Z| >= 0.5: two values always give |Z| = 1, so the gate fires at iteration 2 (s* = 3).
    config = tiny_config(fast_stage="gxpo", fast_steps=2, reposition_alpha=0.5, entropy_trigger="abs",
                         entropy_window=2, entropy_z_threshold=0.5)
    _, rows = train(config, iterations=4)
    for r in rows[:2]:
        assert (r["fast_steps"], r["optimizer_steps"]) == (2, 6)  # 3 steps x 2 minibatches
        assert r["gxpo_scale_mean"] >= 1.0 and r["reposition_distance"] > 0
    assert rows[1]["switch_off_iteration"] == 3
    for r in rows[2:]:  # GRPO from s* on: one step per minibatch, nothing extrapolated
        assert (r["alpha"], r["fast_steps"], r["optimizer_steps"], r["gxpo_scale_mean"]) == (0.0, 0, 2, None)


def test_lm_head_gate_is_logged_every_iteration_and_resumes_exactly(ray_session, tmp_path):
    config = tiny_config(reuse_gate="lm_head_grad", lm_head_grad_window=2, lm_head_grad_z_threshold=0.5)
    straight = run_training(config, stop_iters=4, output_dir=str(tmp_path / "a"), checkpoint_every=2, progress=False)
    run_training(config, stop_iters=2, output_dir=str(tmp_path / "b"), checkpoint_every=2, progress=False)
    resumed = run_training(config, stop_iters=4, output_dir=str(tmp_path / "b"), resume=True, checkpoint_every=2,
                           progress=False)
    a = read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
    b = read_metrics(str(tmp_path / "b" / "metrics.jsonl"))
    assert without_timings(a) == without_timings(b)
    trained = [r for r in a if r["iteration"] > 0]
    assert all(r["lm_head_grad_norm"] > 0 and r["entropy_z"] is None for r in trained)
    assert trained[2]["lm_head_grad_z"] is not None  # two values precede iteration 3
    assert straight["lm_head_grad_z"] == resumed["lm_head_grad_z"]
    assert straight.get("switch_off_iteration") == resumed.get("switch_off_iteration")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(tmp_path / "a", "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("sfpo/lm_head_grad_norm")] == [1, 2, 3, 4]

    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "final_model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final_model" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
