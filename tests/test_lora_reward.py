"""Issue 9's "a short LoRA run on the embedded model raises reward": the LoRA tuned example
(rank-8 adapters on every linear layer plus the final norm, SFPO K=3 α=0.8, lr 1e-4) for
its first 10 iterations, measured in docs/results.md, "LoRA on the embedded model"."""

import os
import runpy

import pytest

from sfpo_rllib.run_logger import read_metrics
from sfpo_rllib.train_run import run_training

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "tuned_examples", "arithmetic_sfpo_lora.py")
ITERS = 10


@pytest.mark.slow
def test_lora_with_the_final_norm_raises_held_out_accuracy_on_the_embedded_model(ray_session, tmp_path):
    example = runpy.run_path(EXAMPLE)
    config = example["config"].copy(copy_frozen=False)
    config.held_out_test(test_interval=ITERS)  # 200 problems x 4 samples, before and after
    run_training(config, stop_iters=ITERS, output_dir=str(tmp_path / "run"), progress=False)
    rows = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    start, end = (r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None)
    # Measured over seeds 0, 1, 2: +5.9 to +10.5 points (seed 0: 25.0% -> 31.9%). One
    # measurement's standard error is about 1.5 points, a difference's about 2.
    assert end - start > 0.03, (start, end)
    assert rows[-1]["entropy"] < rows[1]["entropy"]  # it got there by sharpening
