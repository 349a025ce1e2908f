"""SFPO: the RLlib Algorithm. One ``training_step`` is one SFPO iteration s:

1. α_s from the entropy trigger (decided by iterations before s only).
2. The env runners sample G completions for each of this iteration's prompts and
   score them with the environment's verifier.
3. The driver builds the training batches (group advantages, padding, global
   minibatches, one shard per learner) and the LearnerGroup runs fast – reposition –
   slow (``SFPOTorchLearner``).
4. H_s, the mean token entropy over all learners' tokens, goes into the trigger.
5. Weights are synced to the env runners; the held-out accuracy is measured when due.

The trigger, the iteration count and the run's seed are part of the checkpoint, so a
resumed run behaves exactly as an uninterrupted one.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core import COMPONENT_LEARNER_GROUP, COMPONENT_METRICS_LOGGER
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import LEARNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

from sfpo_rllib.batch import build_learner_batches
from sfpo_rllib.entropy_trigger import EntropyTrigger
from sfpo_rllib.sfpo_config import SFPOConfig

TRAINING_ITERATION = "training_iteration"
SFPO_STATE = "sfpo"
METRICS = "sfpo"  # results["sfpo"][name]: the per-iteration scalars of metrics.jsonl


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class SFPO(Algorithm):
    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> SFPOConfig:
        return SFPOConfig()

    @override(Algorithm)
    def setup(self, config: SFPOConfig) -> None:
        from transformers import AutoTokenizer

        # Build (or find) the model once here, before runners and learners load it.
        model_path = config.resolved_model_path()
        super().setup(config)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.trigger = EntropyTrigger(
            window=config.entropy_window, z_threshold=config.entropy_z_threshold, rule=config.entropy_trigger
        )
        self.sfpo_iteration = 0
        self.rollouts = 0
        self.run_seed = config.seed if config.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
        self.train_size = self._on_runners(lambda runner, _: runner.num_problems("train"), [None])[0]
        self.test_size = None
        self.test_due = False  # set by the CLI to force a test after the next iteration

    # ----- runner plumbing --------------------------------------------------------------
    def _num_runners(self) -> int:
        return max(1, self.env_runner_group.num_remote_env_runners())

    def _on_runners(self, fn, per_runner: list) -> list:
        """Call ``fn(runner, per_runner[i])`` on runner i (local when there are no remote ones)."""
        remote = self.env_runner_group.num_remote_env_runners() > 0

        def call(runner):
            slot = runner.worker_index - 1 if remote else 0
            return (slot, fn(runner, per_runner[slot]) if slot < len(per_runner) else None)

        results = self.env_runner_group.foreach_env_runner(call, local_env_runner=not remote)
        if len(results) != max(1, self.env_runner_group.num_remote_env_runners()):
            raise RuntimeError(
                f"Only {len(results)} of {self._num_runners()} env runners answered; the others failed "
                "(see their errors above in the log)."
            )
        return [result for _, result in sorted(results, key=lambda r: r[0])]

    def _prompt_indices(self, iteration: int) -> np.ndarray:
        """Prompts of ``iteration`` (from 1): consecutive slices of per-epoch permutations."""
        num_prompts = self.config.total_train_batch_size // self.config.group_size
        positions = np.arange((iteration - 1) * num_prompts, iteration * num_prompts)
        epochs = positions // self.train_size
        out = np.empty(num_prompts, dtype=np.int64)
        for epoch in np.unique(epochs):
            perm = np.random.default_rng([self.run_seed, 1, int(epoch)]).permutation(self.train_size)
            out[epochs == epoch] = perm[positions[epochs == epoch] % self.train_size]
        return out

    # ----- one iteration -------------------------------------------------------------------
    @override(Algorithm)
    def training_step(self) -> None:
        c = self.config
        s = self.sfpo_iteration + 1
        logged: dict[str, Any] = {"iteration": s}
        if s == 1 and c.test_interval:
            logged.update({f"{k}_initial": v for k, v in self.run_test(iteration=0).items()})

        # α = 0 whenever there is no fast stage (GRPO, or after the switch-off).
        alpha = self.trigger.alpha(s, c.reposition_alpha) if c.fast_steps > 0 else 0.0
        fast_steps = c.fast_steps if alpha > 0.0 else 0

        t0 = time.perf_counter()
        chunks = np.array_split(self._prompt_indices(s), self._num_runners())
        run_seed = self.run_seed  # closures shipped to runners must not capture `self`
        samples = self._on_runners(
            lambda runner, idx: runner.sample(indices=idx.tolist(), seed=_seed(run_seed, 2, s, runner.worker_index)),
            chunks,
        )
        records = [r for sample in samples for r in sample["records"]]
        time_sample = time.perf_counter() - t0

        t1 = time.perf_counter()
        batches, batch_stats = build_learner_batches(
            records,
            group_size=c.group_size,
            num_learners=c.num_learners,
            minibatch_size_per_learner=c.minibatch_size,
            pad_token_id=self.pad_token_id,
        )
        update_kwargs = dict(
            timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: self.rollouts + len(records)},
            alpha=alpha,
            fast_steps=fast_steps,
        )
        if self.learner_group.is_local:
            results = self.learner_group.update(batch=batches[0], **update_kwargs)
        else:
            results = self.learner_group.update(batches=batches, **update_kwargs)
        time_update = time.perf_counter() - t1
        self.metrics.aggregate([r["learner"] for r in results], key=LEARNER_RESULTS)

        stats = [r["sfpo"] for r in results]
        num_tokens = max(1.0, sum(x["num_tokens"] for x in stats))
        entropy = sum(x["entropy_sum"] for x in stats) / num_tokens
        z = self.trigger.observe(s, entropy)
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
        self.sfpo_iteration = s
        self.rollouts += len(records)

        rewards = np.array([r["reward"] for r in records])
        logged.update(
            {
                "rollouts": self.rollouts,
                "reward_mean": float(rewards.mean()),
                "train_accuracy": float(np.mean([r["correct"] for r in records])),
                "alpha": alpha,
                "fast_steps": fast_steps,
                "entropy": entropy,
                "entropy_z": z,
                "switch_off_iteration": self.trigger.switch_off_iteration,
                "reposition_distance": stats[0]["reposition_distance"],
                "optimizer_steps": stats[0]["optimizer_steps"],
                "truncated_fraction": float(np.mean([not r["stopped"] for r in records])),
                "verifier_timeouts": int(sum(r["timed_out"] for r in records)),
                "time_generate_s": time_sample,
                "time_verify_s": max(sample["time_verify_s"] for sample in samples),
                "time_update_s": time_update,
                # The engine's log π vs the learner's θ⁰ recompute, over completion tokens.
                "rollout_logp_diff": sum(x["rollout_logp_diff_sum"] for x in stats) / num_tokens,
                "rollout_logp_diff_max": max(x["rollout_logp_diff_max"] for x in stats),
                "time_weight_sync_s": max(sample["time_weight_sync_s"] for sample in samples),
                **batch_stats,
            }
        )
        if c.test_interval and (s % c.test_interval == 0 or self.test_due):
            logged.update(self.run_test(iteration=s))
        self.test_due = False
        for name, value in logged.items():
            self.metrics.log_value((METRICS, name), value, reduce="item")

    def run_test(self, iteration: int) -> dict[str, float]:
        """Held-out accuracy (mean over samples per problem) and pass@k at the training temperature."""
        c = self.config
        if self.test_size is None:
            self.test_size = self._on_runners(lambda runner, _: runner.num_problems("test"), [None])[0]
        num = min(self.test_size, c.test_num_problems or self.test_size)
        chunks = np.array_split(np.arange(num), self._num_runners())
        k = c.test_samples_per_problem
        t0 = time.perf_counter()
        run_seed = self.run_seed  # closures shipped to runners must not capture `self`
        outs = self._on_runners(
            lambda runner, idx: runner.evaluate(
                indices=idx.tolist(), samples_per_problem=k, seed=_seed(run_seed, 3, iteration, runner.worker_index)
            ),
            chunks,
        )
        correct = [n for out in outs for n in out["correct"].values()]
        return {
            "test_accuracy": float(sum(correct) / (len(correct) * k)),
            "test_pass_at_k": float(np.mean([n > 0 for n in correct])),
            "test_problems": len(correct),
            "time_test_s": time.perf_counter() - t0,
        }

    # ----- checkpoint state ----------------------------------------------------------
    # Runner state is not saved: their weights are the learners', synced on restore.
    @override(Algorithm)
    def get_checkpointable_components(self):
        return [(COMPONENT_LEARNER_GROUP, self.learner_group)]

    @override(Algorithm)
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self._check_component(COMPONENT_LEARNER_GROUP, components, not_components):
            state[COMPONENT_LEARNER_GROUP] = self.learner_group.get_state(
                components=self._get_subcomponents(COMPONENT_LEARNER_GROUP, components),
                not_components=self._get_subcomponents(COMPONENT_LEARNER_GROUP, not_components),
                **kwargs,
            )
        state[COMPONENT_METRICS_LOGGER] = self.metrics.get_state()
        state[TRAINING_ITERATION] = self.training_iteration
        state[SFPO_STATE] = {
            "iteration": self.sfpo_iteration,
            "rollouts": self.rollouts,
            "run_seed": self.run_seed,
            "trigger": self.trigger.get_state(),
        }
        return state

    @override(Algorithm)
    def restore_from_path(self, path, *args, **kwargs) -> None:
        super().restore_from_path(path, *args, **kwargs)
        # The learner group was restored from its own folder: push its weights out.
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)

    @override(Algorithm)
    def set_state(self, state: dict[str, Any]) -> None:
        if COMPONENT_LEARNER_GROUP in state:
            self.learner_group.set_state(state[COMPONENT_LEARNER_GROUP])
            self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
        if COMPONENT_METRICS_LOGGER in state:
            self.metrics.set_state(state[COMPONENT_METRICS_LOGGER])
        if TRAINING_ITERATION in state:
            self._iteration = state[TRAINING_ITERATION]
        if SFPO_STATE in state:
            sfpo = state[SFPO_STATE]
            self.sfpo_iteration = sfpo["iteration"]
            self.rollouts = sfpo["rollouts"]
            self.run_seed = sfpo["run_seed"]
            self.trigger.set_state(sfpo["trigger"])
