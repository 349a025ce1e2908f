"""GRPO twin of arithmetic_sfpo.py: the same settings with the fast stage off (K = 0).

Task:     sfpo/Arithmetic-v0 (left-to-right +/- chains, 3 operands in 0..20), exact verifier.
Model:    sfpo-tiny-arithmetic, built and warm-started on first use.
Hardware: 2 CPU cores, no GPU (all-local).
Expected: held-out accuracy +4.7 +- 1.3 points after 40 iterations (seeds 0, 1, 2), against
          SFPO's +6.1 +- 1.4 with the same settings (docs/results.md; one seed's spread
          is a few points, so compare over seeds: benchmarks/sfpo_vs_grpo.py).
Time:     about 2-3 minutes on 2 idle cores (one pass per batch instead of four).

Run:  sfpo-rllib train file tuned_examples/arithmetic_grpo.py --output runs/arithmetic_grpo
"""

from sfpo_rllib import GRPOConfig


stop_iters = 40

config = (
    GRPOConfig()  # <- crucial: fast_steps=0, every other setting as in arithmetic_sfpo.py
    .environment("sfpo/Arithmetic-v0", env_config={"num_operands": 3, "max_operand": 20})
    .training(
        group_size=8,
        train_batch_size_per_learner=256,
        minibatch_size=128,
        lr=3e-5,
        grad_clip=1.0,
        weight_decay=0.0,
    )
    .generation(model_name_or_path="sfpo-tiny-arithmetic", max_new_tokens=16, temperature=1.0)
    .held_out_test(test_interval=10, test_num_problems=200, test_samples_per_problem=4)
    .debugging(seed=0)
)
