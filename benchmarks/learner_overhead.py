"""What RLlib's plumbing and SFPO's reposition cost, as ratios measured side by side in one run.

1. One update pass through RLlib's LearnerGroup (``learner_group.update`` with K = 0: the θ⁰
   pass, then one pass over the minibatches) against a plain PyTorch loop doing the same:
   a no-grad θ⁰ pass, then forward / the same loss / backward / clip / AdamW step on the
   same minibatches, on a copy of the same model.
2. One reposition (snapshot θ⁰, ‖θᴷ − θ⁰‖, θ ← θ⁰ + α(θᴷ − θ⁰)) against one pass.

Batches are real rollouts of the configured model on sfpo/Arithmetic-v0. Repeats alternate
the two sides so that machine load hits both alike; medians are reported.

Run:  python benchmarks/learner_overhead.py --batch 256 --minibatch 128 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import ray
import torch
from ray.rllib.core import DEFAULT_MODULE_ID

from sfpo_rllib import GRPOConfig
from sfpo_rllib.batch import build_learner_batches
from sfpo_rllib.causal_lm_module import completion_logp_and_entropy
from sfpo_rllib.columns import ADVANTAGES, ATTENTION_MASK, COMPLETION_MASK, INPUT_IDS, MB_INDEX, MB_NUM_SEQS, MB_NUM_TOKENS
from sfpo_rllib.losses import clipped_surrogate
from sfpo_rllib.slow_fast import ParameterSnapshot


def plain_pass(lm, optimizer, minibatches, c) -> None:
    """θ⁰ pass + one pass of clipped-surrogate steps, in plain PyTorch."""
    with torch.no_grad():
        old = [completion_logp_and_entropy(lm, mb[INPUT_IDS], mb[ATTENTION_MASK], mb[COMPLETION_MASK].shape[1],
                                           c.temperature)[0] for mb in minibatches]
    for mb, old_logp in zip(minibatches, old):
        mask = mb[COMPLETION_MASK]
        logp, _ = completion_logp_and_entropy(lm, mb[INPUT_IDS], mb[ATTENTION_MASK], mask.shape[1], c.temperature)
        loss, _ = clipped_surrogate(logp, old_logp, mb[ADVANTAGES], mask, clip_param=c.clip_param, mode=c.loss_agg,
                                    num_tokens=mb[MB_NUM_TOKENS][0], num_seqs=mb[MB_NUM_SEQS][0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), c.grad_clip)
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="completions per update")
    parser.add_argument("--minibatch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="sfpo-tiny-arithmetic")
    args = parser.parse_args()

    config = (
        GRPOConfig()
        .environment("sfpo/Arithmetic-v0")
        .training(group_size=8, train_batch_size_per_learner=args.batch, minibatch_size=args.minibatch, lr=3e-5,
                  weight_decay=0.0)
        .generation(model_name_or_path=args.model, max_new_tokens=16)
        .held_out_test(test_interval=0)
        .debugging(seed=0)
    )
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    algo = config.build_algo()
    try:
        runner = algo.env_runner_group.local_env_runner
        records = runner.sample(indices=list(range(args.batch // 8)), seed=1)["records"]
        batches, _ = build_learner_batches(records, group_size=8, num_learners=0, minibatch_size_per_learner=args.minibatch,
                                           pad_token_id=algo.pad_token_id)
        learner = [r.get() for r in algo.learner_group.foreach_learner(lambda local: local)][0]  # the local one (num_learners=0)
        shard = batches[0].policy_batches[DEFAULT_MODULE_ID]
        columns = {k: torch.from_numpy(np.asarray(shard[k])) for k in shard.keys()}
        minibatches = [{k: v[columns[MB_INDEX] == m] for k, v in columns.items()} for m in torch.unique(columns[MB_INDEX]).tolist()]
        lm = copy.deepcopy(learner._policy().lm).train()
        optimizer = torch.optim.AdamW(lm.parameters(), lr=config.lr, betas=tuple(config.adam_betas), weight_decay=0.0)
        params = learner._trainable()
        snapshot = ParameterSnapshot()

        rllib_s, plain_s, repo_s = [], [], []
        for _ in range(args.repeats + 1):  # the first round warms up both sides and is dropped
            t0 = time.perf_counter()
            algo.learner_group.update(batch=batches[0], timesteps={}, alpha=0.0, fast_steps=0)
            t1 = time.perf_counter()
            plain_pass(lm, optimizer, minibatches, config)
            t2 = time.perf_counter()
            snapshot.take(params)
            snapshot.distance(params)
            snapshot.reposition(params, 0.8)
            t3 = time.perf_counter()
            rllib_s.append(t1 - t0)
            plain_s.append(t2 - t1)
            repo_s.append(t3 - t2)
        rllib, plain, repo = (statistics.median(x[1:]) for x in (rllib_s, plain_s, repo_s))
    finally:
        algo.stop()
        ray.shutdown()
    print(f"\n{args.batch} completions, minibatches of {args.minibatch}, {sum(p.numel() for p in params):,} parameters, "
          f"median of {args.repeats} (torch threads {torch.get_num_threads()})")
    print(f"{'measure':<52} {'seconds':>8} {'ratio':>7}")
    print(f"{'plain PyTorch pass (θ⁰ pass + steps)':<52} {plain:>8.3f} {1.0:>7.2f}")
    print(f"{'RLlib LearnerGroup.update pass (K=0)':<52} {rllib:>8.3f} {rllib / plain:>7.2f}")
    print(f"{'one reposition (snapshot + distance + lerp)':<52} {repo:>8.4f} {repo / rllib:>7.3f}  (of one RLlib pass)")


if __name__ == "__main__":
    main()
