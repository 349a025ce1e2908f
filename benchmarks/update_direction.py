"""Does one GRPO update push the right way, and how far? A one-batch probe per learning rate.

For each lr, the script samples 32 train problems x 8 completions from the embedded tiny
model and runs three GRPO updates on that batch (AdamW, the learner used in training). After
each update it prints:
  * the mean change of the sequence log-probability of the completions with positive
    advantage (should rise) and with negative advantage (should fall);
  * the reward of fresh samples on the same prompts.
This is how docs/design.md explains why large learning rates lose accuracy
on this model.

Run:  python benchmarks/update_direction.py --lrs 2e-5 5e-5 3e-4
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from transformers import AutoTokenizer

from sfpo_envs import TextSpace, Verdict
from sfpo_envs.arithmetic import extract_answer, generate_problems
from sfpo_rllib import GRPOConfig
from sfpo_rllib.batch import build_learner_batches
from sfpo_rllib.causal_lm_module import completion_logp_and_entropy
from sfpo_rllib.columns import ADVANTAGES, ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS, Rollout
from sfpo_rllib.engines import SamplingParams
from sfpo_rllib.engines.hf import HFGenerateEngine

G = 8


def probe(lr: float, updates: int) -> list[tuple[float, float, float]]:
    torch.manual_seed(0)
    config = (
        GRPOConfig()
        .environment("sfpo/Arithmetic-v0")
        .training(group_size=G, train_batch_size_per_learner=256, minibatch_size=128, lr=lr, weight_decay=0.0)
        .generation(max_new_tokens=16)
    )
    config.validate()
    tokenizer = AutoTokenizer.from_pretrained(config.resolved_model_path())
    learner = config.build_learner(spaces={DEFAULT_MODULE_ID: (TextSpace(), TextSpace())})
    lm = learner.module[DEFAULT_MODULE_ID].lm
    engine = HFGenerateEngine(lm, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    problems = generate_problems("train", 32, num_operands=3, max_operand=20, seed=3)
    prompts = [tokenizer(p["question"])["input_ids"] for p in problems]

    def rollout(seed: int):
        completions = engine.generate(prompts, G, SamplingParams(max_new_tokens=16), seed)
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        rewards = [float(extract_answer(t) == problems[i // G]["answer"]) for i, t in enumerate(texts)]
        return completions, rewards

    completions, rewards = rollout(1)
    records = [Rollout(prompts[i // G], list(c), Verdict.from_reward(r)) for i, (c, r) in enumerate(zip(completions, rewards))]
    (batch,), _ = build_learner_batches(records, group_size=G, num_learners=0, minibatch_size_per_learner=128,
                                        pad_token_id=tokenizer.pad_token_id)
    shard = batch.policy_batches[DEFAULT_MODULE_ID]
    ids, mask, completion_mask = (torch.from_numpy(np.asarray(shard[k])) for k in (INPUT_IDS, ATTENTION_MASK, COMPLETION_MASK))
    advantages = torch.from_numpy(np.asarray(shard[ADVANTAGES]))

    @torch.no_grad()
    def sequence_logp() -> torch.Tensor:
        logp, _ = completion_logp_and_entropy(lm, ids, mask, completion_mask.shape[1], 1.0)
        return (logp * completion_mask).sum(dim=1)  # (B,)

    start = sequence_logp()
    rows = []
    for update in range(updates):
        learner.update(batch=copy.deepcopy(batch), alpha=0.0, fast_steps=0)
        delta = sequence_logp() - start
        fresh = float(np.mean(rollout(100 + update)[1]))
        rows.append((float(delta[advantages > 0].mean()), float(delta[advantages < 0].mean()), fresh))
    print(f"lr {lr:g}: reward of the batch {np.mean(rewards):.3f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-5, 5e-5, 3e-4])
    parser.add_argument("--updates", type=int, default=3)
    args = parser.parse_args()
    results = {lr: probe(lr, args.updates) for lr in args.lrs}
    print(f"\n{'lr':>8} {'update':>6} {'dlogp A>0':>10} {'dlogp A<0':>10} {'fresh reward':>12}")
    for lr, rows in results.items():
        for i, (pos, neg, fresh) in enumerate(rows, start=1):
            print(f"{lr:>8g} {i:>6} {pos:>10.3f} {neg:>10.3f} {fresh:>12.3f}")


if __name__ == "__main__":
    main()
