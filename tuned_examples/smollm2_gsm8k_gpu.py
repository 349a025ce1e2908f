"""SFPO on GSM8K with SmolLM2-135M-Instruct on one GPU, in bf16: the GPU recipe.

Task:     sfpo/Math-v0 on GSM8K: train on its train split (7,473 problems), test on its test split
          (1,319), the SFPO authors' math template ("... put your final answer within \\boxed{}"),
          math-verify against the `#### n` answer. The two files (gsm8k_train.jsonl,
          gsm8k_test.jsonl, the release's question/answer rows) are read from $GSM8K_DIR
          (default: data/gsm8k).
Model:    smollm2-135m-instruct (fetch once: `sfpo-rllib models fetch smollm2-135m-instruct`),
          full fine-tuning: fp32 master weights and AdamW state, forward and backward under bf16
          autocast (`mixed_precision="bf16"`); 134.5M parameters need about 2.7 GB of states.
Hardware: one GPU shared by the rollout runner (hf generate; `rollout_engine="vllm"` where vLLM is
          installed) and the learner. On a cluster, give each its own GPU (docs/scaling.md).
Batch:    256 completions per iteration (32 prompts x 8), two minibatches of 128, completions up
          to 512 tokens, micro-batches of 16,384 tokens.
Expected: NOT MEASURED YET: no run of this file on a GPU is on record. The base model solves 0 of
          GSM8K's first 32 test problems at temperature 1 (docs/pretrained_models.md), so a gain
          here needs many iterations; what is measured on a GPU so far is the memory and speed of
          the learner on this architecture (docs/real_model_benchmarks.md).

Run:  GSM8K_DIR=/data/gsm8k sfpo-rllib train file tuned_examples/smollm2_gsm8k_gpu.py \
          --output runs/smollm2_gsm8k_gpu
"""

import os

from sfpo_rllib import SFPOConfig

stop_iters = 200

data_dir = os.environ.get("GSM8K_DIR", "data/gsm8k")

config = (
    SFPOConfig()
    .environment("sfpo/Math-v0", env_config={"data": os.path.join(data_dir, "gsm8k_train.jsonl"),
                                             "prompt_template": "math"})
    .training(
        fast_steps=3,
        reposition_alpha=0.8,
        group_size=8,
        train_batch_size_per_learner=256,  # 32 prompts x 8 samples
        minibatch_size=128,
        lr=2e-6,  # full fine-tuning of a small model; the authors' 1e-6 is for 1.5B-7B models
        grad_clip=1.0,
    )
    .generation(model_name_or_path="smollm2-135m-instruct", model_dtype="float32", max_new_tokens=512,
                temperature=1.0, gradient_checkpointing=True)
    .scaling(mixed_precision="bf16", max_tokens_per_micro_batch=16384)
    .held_out_test(test_interval=20, test_num_problems=500, test_samples_per_problem=4,
                   test_env_config={"data": os.path.join(data_dir, "gsm8k_test.jsonl"), "split": "test"})
    .env_runners(num_env_runners=1, num_gpus_per_env_runner=0.5)
    .learners(num_learners=1, num_gpus_per_learner=0.5)
    .debugging(seed=0)
)
