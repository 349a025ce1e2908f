"""SFPO with LoRA adapters (through PEFT) on the synthetic arithmetic task, embedded tiny model.

Task:     sfpo/Arithmetic-v0 (left-to-right +/- chains, 3 operands in 0..20), exact verifier.
Model:    sfpo-tiny-arithmetic (0.55M parameters); rank-8 adapters on every linear layer but
          the output head are the only trained parameters, so the θ⁰ snapshot and the
          reposition cover the adapters alone.
Hardware: 2 CPU cores, no GPU (all-local: 0 env runners, 0 learners).
Expected: measured so far, reward stays flat at lr 1e-4 (and fell at 1e-3) on this model,
          whose sharpening direction (the final norm) LoRA does not train; see the
          README's LoRA section. The example shows the settings; it is not a tuned result.
Time:     2-3 minutes on 2 cores, plus 2-3 minutes to build the model on first use.
Outputs:  final_model/ (adapters merged, plain transformers) and final_adapter/ (PEFT).

Run:  sfpo-rllib train file tuned_examples/arithmetic_sfpo_lora.py --output runs/arithmetic_sfpo_lora
"""

from sfpo_rllib import SFPOConfig

stop_iters = 40

config = (
    SFPOConfig()
    .environment("sfpo/Arithmetic-v0", env_config={"num_operands": 3, "max_operand": 20})
    .training(
        fast_steps=3,
        reposition_alpha=0.8,
        entropy_window=30,
        entropy_z_threshold=1.0,
        entropy_trigger="rise",
        group_size=8,
        train_batch_size_per_learner=256,  # 32 prompts x 8 samples
        minibatch_size=128,
        lr=3e-5,  # as full fine-tuning: the final norm moves at the rate that sharpens it there
        grad_clip=1.0,
        weight_decay=0.0,
        lora_rank=8,  # <- crucial: LoRA on
        lora_alpha=16.0,
        lora_target_modules="all-linear",
        lora_modules_to_save=["model.norm"],  # <- crucial: this model sharpens through its final norm
    )
    .generation(model_name_or_path="sfpo-tiny-arithmetic", max_new_tokens=16, temperature=1.0)
    .held_out_test(test_interval=10, test_num_problems=200, test_samples_per_problem=4)
    .debugging(seed=0)
)
