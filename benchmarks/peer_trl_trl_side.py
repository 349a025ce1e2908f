"""TRL's side of ``peer_trl.py``: GRPOTrainer on the shared task, in TRL's own venv.

Run by ``peer_trl.py`` as ``VENV_TRL/bin/python peer_trl_trl_side.py SETTINGS_JSON``; writes
``steps.jsonl`` (per optimizer step: generation and whole-step seconds, mean reward) and
``final_model/`` (LoRA merged) into the settings' ``output``. Every setting below that
differs from TRL's default is one ``peer_trl.py`` matches on our side.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_trl_task import problems, reward  # noqa: E402


def main() -> None:
    s = json.loads(sys.argv[1])
    torch.set_num_threads(s["threads"])
    out = s["output"]
    examples = problems("train", s["train_problems"])
    order = [examples[i] for i in s["prompt_order"]]  # our side's prompts, in the order it drew them
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": e["prompt"]}], "target": e["target"]}
                                 for e in order])

    def addition_reward(completions, target, **_):
        return [reward(c[0]["content"], {"target": t}) for c, t in zip(completions, target)]

    config = GRPOConfig(
        output_dir=out, use_cpu=True, bf16=False, seed=s["seed"], report_to="none", save_strategy="no",
        logging_steps=1, max_steps=s["steps"], shuffle_dataset=False,
        per_device_train_batch_size=s["prompts"] * s["group_size"], gradient_accumulation_steps=1,
        num_generations=s["group_size"], steps_per_generation=1, num_iterations=1,
        max_completion_length=s["max_new_tokens"], temperature=s["temperature"], top_p=1.0, top_k=0,
        learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        weight_decay=s["weight_decay"], adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=s["grad_clip"],
        epsilon=s["clip"], beta=0.0, loss_type="dapo", scale_rewards="group", mask_truncated_completions=False,
        gradient_checkpointing=s["gradient_checkpointing"], gradient_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(s["model"])
    model = AutoModelForCausalLM.from_pretrained(s["model"], dtype=torch.float32)
    peft_config = None
    if s["lora_rank"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=s["lora_rank"], lora_alpha=s["lora_alpha"], lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")

    class Timed(GRPOTrainer):
        generation_s = 0.0

        def _generate_and_score_completions(self, *args, **kwargs):
            t0 = time.perf_counter()
            result = super()._generate_and_score_completions(*args, **kwargs)
            self.generation_s = time.perf_counter() - t0
            return result

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            with open(os.path.join(out, "steps.jsonl"), "a") as f:
                f.write(json.dumps({"step": state.global_step, "step_s": time.perf_counter() - self.t0,
                                    "generation_s": trainer.generation_s}) + "\n")

        def on_log(self, args, state, control, logs=None, **kwargs):
            with open(os.path.join(out, "log.jsonl"), "a") as f:
                f.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")

    trainer = Timed(model=model, reward_funcs=addition_reward, args=config, train_dataset=dataset,
                    processing_class=tokenizer, peft_config=peft_config, callbacks=[StepTimes()])
    trainer.train()
    final = trainer.model.merge_and_unload() if s["lora_rank"] else trainer.model
    final.save_pretrained(os.path.join(out, "final_model"))
    tokenizer.save_pretrained(os.path.join(out, "final_model"))


if __name__ == "__main__":
    main()
