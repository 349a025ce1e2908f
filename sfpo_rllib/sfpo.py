"""SFPO: the RLlib Algorithm. One ``training_step`` is one SFPO iteration s:

1. α_s from the entropy trigger (decided by iterations before s only).
2. The env runners sample G completions for each of this iteration's prompts and
   score them with the environment's verifier.
3. The driver builds the training batches (group advantages, padding, global
   minibatches, one shard per learner) and the LearnerGroup runs fast – reposition –
   slow (``SFPOTorchLearner``).
4. H_s, the mean token entropy over all learners' tokens, goes into the trigger.
5. Weights are synced to the env runners; the held-out accuracy is measured when due.

With ``rollout_lag=1`` (one step off, docs/async_rollouts.md) step 2 of iteration s+1 runs
during step 3 of iteration s, in a driver thread, on the weights from before that update;
the learners then train on it with the decoupled loss (their θ⁰ as the proximal policy,
each token weighted by min(π_θ⁰ / π_behaviour, ``tis_cap``) from the engine's log-probs).
The weight sync waits for that generation, so runners load new weights once per iteration.

The trigger, the iteration count, the run's seed and (lag 1) the batch generated ahead are
part of the checkpoint, so a resumed run behaves exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core import (
    COMPONENT_ENV_RUNNER,
    COMPONENT_ENV_TO_MODULE_CONNECTOR,
    COMPONENT_EVAL_ENV_RUNNER,
    COMPONENT_LEARNER_GROUP,
    COMPONENT_MODULE_TO_ENV_CONNECTOR,
)
from ray.rllib.utils import force_list
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import LEARNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

from sfpo_rllib.batch import BatchStats, build_learner_batches, pad_token_of
from sfpo_rllib.columns import Rollout
from sfpo_rllib.dynamic_sampling import SamplingStats, collect_batch, extra_round_prompts
from sfpo_rllib.entropy_trigger import reuse_gate_of
from sfpo_rllib.env_factory import check_held_out_data
from sfpo_rllib.results import LearnerResult, combine, row_fields
from sfpo_rllib.scoring import held_out_scores
from sfpo_rllib.sfpo_config import SFPOConfig

SFPO_STATE = "sfpo"
# Runner state is not saved: their weights are the learners', synced on restore.
RUNNER_COMPONENTS = [
    COMPONENT_ENV_RUNNER, COMPONENT_EVAL_ENV_RUNNER, COMPONENT_ENV_TO_MODULE_CONNECTOR, COMPONENT_MODULE_TO_ENV_CONNECTOR,
]
METRICS = "sfpo"  # results["sfpo"][name]: the per-iteration scalars of metrics.jsonl



@dataclass
class HeldOutResult:
    """The held-out test (``run_test``; the row's fields are null on iterations without one)."""

    test_accuracy: float  # mean over samples per problem (avg@k, the paper's pass@1)
    test_pass_at_k: float  # unbiased pass@k, k = test_samples_per_problem (evaluate.pass_at_k)
    test_problems: int
    test_reward_errors: int
    test_overlap_problems: int  # held-out problems that are training problems too
    time_test_s: float  # not part of time_iteration_s


@dataclass
class AsyncStats:
    """One-step-off rollouts (rollout_lag=1; null with lag 0): learner updates between the weights
    that generated the batch and the learner's θ⁰, and seconds the update and the next batch's
    generation ran together. (The behaviour weights are the learners': LearnerResult.)"""

    policy_lag: int | None = None
    time_overlap_s: float | None = None


@dataclass
class IterationStats:
    """The driver's own fields of a metrics row."""

    iteration: int
    time_unix: float | None = None  # wall clock (seconds since 1970) when the row was made
    rollouts: int | None = None  # completions sampled so far
    reward_mean: float | None = None  # of everything sampled, not only what was kept
    train_accuracy: float | None = None
    alpha: float | None = None
    fast_steps: int | None = None
    entropy_z: float | None = None  # null while the trigger's window fills, and with reuse_gate="lm_head_grad"
    lm_head_grad_z: float | None = None  # DGG's gate (reuse_gate="lm_head_grad"); null otherwise
    switch_off_iteration: int | None = None
    padding_efficiency: float | None = None  # real tokens / computed tokens over the learners' micro-batches
    truncated_fraction: float | None = None
    verifier_timeouts: int | None = None
    reward_errors: int | None = None
    overlong_penalty_mean: float | None = None  # null without overlong_buffer
    time_rollout_s: float | None = None
    time_generate_s: float | None = None
    time_verify_s: float | None = None
    time_update_s: float | None = None
    time_sync_s: float | None = None
    time_weight_sync_s: float | None = None
    time_iteration_s: float | None = None  # the iteration without the held-out test (time_test_s)


# The row's fields by source, and every field of a metrics.jsonl row in one tuple; a row gets
# null where a field is undefined (e.g. entropy_z while the window fills, training fields in
# iteration 0).
TEST_FIELDS = row_fields(HeldOutResult)
SAMPLING_FIELDS = row_fields(SamplingStats)
ASYNC_FIELDS = (*row_fields(AsyncStats), *(f for f in row_fields(LearnerResult) if f.startswith("behaviour_")))
METRIC_FIELDS = (
    *row_fields(IterationStats), *row_fields(LearnerResult), *row_fields(BatchStats), *SAMPLING_FIELDS,
    *TEST_FIELDS, *row_fields(AsyncStats),
)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Seconds two (start, end) intervals share."""
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


@dataclass
class GeneratedBatch:
    """One iteration's rollouts as the env runners sampled and scored them."""

    iteration: int  # the SFPO iteration that trains on it
    weights_iteration: int  # the iteration whose updated weights sampled it (0: the starting model)
    records: list[Rollout]  # what the learners train on
    sampled: list[Rollout]  # everything sampled (dynamic sampling drops some)
    sampling_stats: dict[str, Any]
    time_rollout_s: float
    time_generate_s: float
    time_verify_s: float
    time_weight_sync_s: float
    interval: tuple[float, float]  # (start, end) on this process's perf_counter; not comparable after a restore


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

        # Build (or find) the model once here, before runners and learners load it; read the
        # data once here too, so bad data or held-out = training data fails before any actor starts.
        model_path = config.resolved_model_path()
        self.test_overlap = check_held_out_data(config) if config.test_interval else 0
        self.runner_restarts = 0
        super().setup(config)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.pad_token_id = pad_token_of(tokenizer)
        # The entropy trigger, or with reuse_gate="lm_head_grad" DGG's gate on the lm_head gradient norm.
        self.trigger = reuse_gate_of(config)
        # SFPO's own counters, the only ones its logic reads (prompt schedule, trigger, seeds,
        # metrics rows). RLlib's training_iteration counts train() calls, which run several
        # training steps when `min_time_s_per_iteration`/`min_sample_timesteps_per_iteration`
        # are set; the runners' num_env_steps_sampled_lifetime is RLlib's EnvRunner contract.
        self.sfpo_iteration = 0
        self.rollouts = 0
        self.run_seed = config.seed if config.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
        self.train_size = self._on_runners(lambda runner, _: runner.num_problems("train"), [None])[0]
        self.test_size = None
        self.test_due = False  # set by the CLI to force a test after the next iteration
        # rollout_lag=1: the next iteration's batch (generated during this iteration's update),
        # one driver thread that generates it, and a flag that is clear while the learners update.
        self.pending_batch: GeneratedBatch | None = None
        self._generator = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sfpo-rollouts")
        self._learners_idle = threading.Event()
        self._learners_idle.set()
        # The run (CLI, compare) measures the starting model by calling run_test(iteration=0).

    # ----- runner plumbing --------------------------------------------------------------
    def _num_runners(self) -> int:
        return max(1, self.env_runner_group.num_remote_env_runners())

    def _on_runners(self, fn, per_runner: list) -> list:
        """Call ``fn(runner, per_runner[i])`` on runner i (local when there are no remote ones).

        A runner that died is restarted (RLlib's ``restart_failed_env_runners``), gets the
        current weights, and is asked again: its answer is a function of its arguments and the
        weights, so the run goes on exactly as if it had not failed. An exception inside ``fn``
        is raised here with the runner's message (ValueErrors stay ValueErrors: bad data).
        """
        group = self.env_runner_group
        remote = group.num_remote_env_runners() > 0
        wanted = self._num_runners()

        def call(runner):
            slot = runner.worker_index - 1 if remote else 0
            if slot >= len(per_runner):
                return slot, None, None
            try:
                return slot, fn(runner, per_runner[slot]), None
            except Exception as err:  # returned, not raised: RLlib would log and drop it
                user_error = isinstance(err, ValueError)  # bad data or a failing verifier: its message says it
                if not user_error:  # a bug: its traceback goes to the log
                    logging.getLogger(__name__).exception("env runner %d failed", runner.worker_index)
                return slot, None, (user_error, str(err) if user_error else f"{type(err).__name__}: {err}")

        answers: dict[int, Any] = {}
        deadline = time.monotonic() + self.config.env_runner_restore_timeout_s
        while True:
            missing = [i for i in range(wanted) if i not in answers]
            ids = [i + 1 for i in missing] if remote else None
            for slot, result, error in group.foreach_env_runner(call, local_env_runner=not remote, remote_worker_ids=ids):
                if error is not None:
                    user_error, message = error
                    raise (ValueError if user_error else RuntimeError)(
                        message if user_error else f"env runner {slot + 1} failed: {message} (traceback in the log)")
                answers[slot] = result
            if len(answers) == wanted or not (remote and self.config.restart_failed_env_runners):
                break
            # Ray restarts a dead runner's actor (it rebuilds its model); wait until it answers.
            while not self.restore_env_runners(group) and time.monotonic() < deadline:
                time.sleep(1.0)
            if time.monotonic() >= deadline:
                break
        if len(answers) != wanted:
            raise RuntimeError(
                f"Only {len(answers)} of {wanted} env runners answered; the others failed and were not back "
                f"within `env_runner_restore_timeout_s` ({self.config.env_runner_restore_timeout_s} s) (see their "
                "errors above in the log; restarts need `restart_failed_env_runners=True`)."
            )
        return [answers[i] for i in range(wanted)]

    @override(Algorithm)
    def restore_env_runners(self, env_runner_group) -> list[int]:
        """Bring restarted runners back into the group with the learners' current weights."""
        restored = env_runner_group.probe_unhealthy_env_runners() if env_runner_group.num_remote_env_runners() else []
        if restored:
            # During a lag-1 update the learners' weights are in flux: the restarted runner gets
            # them once the update is done (its rollouts are then one update newer; the
            # decoupled loss stays correct, but the run is no longer a function of its seeds).
            self._learners_idle.wait()
            env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group,
                                          to_worker_indices=restored, inference_only=True, timeout_seconds=None)
            self.runner_restarts += len(restored)
        return restored

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
    def _generate(self, s: int, weights_iteration: int) -> GeneratedBatch:
        """Iteration s's batch: round 0 of its prompts, plus dynamic sampling's extra rounds.

        A function of (run seed, s) and the runners' weights only, so it may run ahead of
        the iteration that trains on it (``rollout_lag=1``, in the generator thread).
        """
        c = self.config
        t0 = time.perf_counter()
        run_seed = self.run_seed  # closures shipped to runners must not capture `self`
        num_prompts = c.total_train_batch_size // c.group_size
        time_verify, time_generate, time_weight_sync = [], [], []  # per round: the slowest runner's

        def sample_round(round_: int) -> list[Rollout]:
            """Round 0: the iteration's prompts; extra rounds (dynamic sampling): a keyed stream."""
            if round_ == 0:
                indices, seed_parts = self._prompt_indices(s), (2, s)
            else:
                indices = extra_round_prompts(run_seed, s, round_, num_prompts=num_prompts, train_size=self.train_size)
                seed_parts = (5, s, round_)
            out = self._on_runners(
                lambda runner, idx: runner.sample(
                    indices=idx.tolist(), seed=_seed(run_seed, *seed_parts, runner.worker_index)
                ),
                np.array_split(indices, self._num_runners()),
            )
            round_ = combine(out)  # results.RunnerResult's reductions
            time_verify.append(round_["time_verify_s"])
            time_generate.append(round_["time_generate_s"])
            time_weight_sync.append(round_["time_weight_sync_s"])
            return round_["records"]

        records, sampled, sampling_stats = collect_batch(sample_round, c, num_groups=num_prompts)
        t1 = time.perf_counter()
        return GeneratedBatch(
            iteration=s,
            weights_iteration=weights_iteration,
            records=records,
            sampled=sampled,
            sampling_stats=sampling_stats,
            time_rollout_s=t1 - t0,
            time_generate_s=sum(time_generate),
            time_verify_s=sum(time_verify),
            time_weight_sync_s=time_weight_sync[0],  # the runners' load of the generating weights
            interval=(t0, t1),
        )

    def _update_learners(self, batches, **update_kwargs) -> list[dict]:
        """Each learner's results: RLlib's metrics ("learner") and its LearnerResult ("sfpo")."""
        self._learners_idle.clear()
        try:
            if self.learner_group.is_local:
                return self.learner_group.update(batch=batches[0], **update_kwargs)
            return self.learner_group.update(batches=batches, **update_kwargs)
        finally:
            self._learners_idle.set()

    @override(Algorithm)
    def training_step(self) -> None:
        c = self.config
        s = self.sfpo_iteration + 1
        t_start = time.perf_counter()

        # α = 0 whenever there is no fast stage (GRPO, or after the switch-off by either reuse gate).
        alpha = self.trigger.alpha(s, c.reposition_alpha) if c.fast_steps > 0 else 0.0
        fast_steps = c.fast_steps if alpha > 0.0 else 0

        # Lag 1: this iteration's batch was generated during the last update (or restored with
        # the checkpoint); the first iteration, or one after a lag-0 checkpoint, generates it now.
        pending, self.pending_batch = self.pending_batch, None
        if c.rollout_lag and pending is not None and pending.iteration == s:
            batch = pending
        else:
            batch = self._generate(s, weights_iteration=self.sfpo_iteration)
        ahead = self._generator.submit(self._generate, s + 1, self.sfpo_iteration) if c.rollout_lag else None
        sampled = batch.sampled

        t1 = time.perf_counter()
        try:
            batches, batch_stats = build_learner_batches(
                batch.records,
                group_size=c.group_size,
                num_learners=c.num_learners,
                minibatch_size_per_learner=c.minibatch_size,
                pad_token_id=self.pad_token_id,
                advantage_estimator=c.advantage_estimator,
                advantage_std_norm=c.advantage_std_norm,
                mask_truncated=c.mask_truncated,
            )
            results = self._update_learners(
                batches,
                timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: self.rollouts + len(sampled)},
                alpha=alpha,
                fast_steps=fast_steps,
            )
        except BaseException:
            if ahead is not None:
                futures.wait([ahead])  # the runners finish before the error propagates
            raise
        t_update_end = time.perf_counter()
        time_update = t_update_end - t1
        # The runners keep the generating weights until the next batch is complete.
        self.pending_batch = ahead.result() if ahead is not None else None
        self.metrics.aggregate([r["learner"] for r in results], key=LEARNER_RESULTS)

        learned = combine([r["sfpo"] for r in results])  # results.LearnerResult's reductions
        # The reuse gate watches the entropy (SFPO's trigger) or, with reuse_gate="lm_head_grad",
        # DGG's lm_head gradient norm; the other z stays null.
        if c.reuse_gate == "lm_head_grad":
            entropy_z, lm_head_grad_z = None, self.trigger.observe(s, learned["lm_head_grad_norm"])
        else:
            entropy_z, lm_head_grad_z = self.trigger.observe(s, learned["entropy"]), None
        t2 = time.perf_counter()
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
        time_sync = time.perf_counter() - t2
        self.sfpo_iteration = s
        self.rollouts += len(sampled)

        # Reward and accuracy of everything sampled (the policy's), not only what was kept.
        rewards = np.array([r.verifier_reward for r in sampled])
        stats = IterationStats(
            iteration=s,
            rollouts=self.rollouts,
            reward_mean=float(rewards.mean()),
            train_accuracy=float(np.mean([r.correct for r in sampled])),
            alpha=alpha,
            fast_steps=fast_steps,
            entropy_z=entropy_z,
            lm_head_grad_z=lm_head_grad_z,
            switch_off_iteration=self.trigger.switch_off_iteration,
            padding_efficiency=learned["real_tokens"] / max(1.0, learned["computed_tokens"]),
            truncated_fraction=float(np.mean([not r.stopped for r in sampled])),
            verifier_timeouts=int(sum(r.timed_out for r in sampled)),
            reward_errors=int(sum(r.reward_error for r in sampled)),
            overlong_penalty_mean=(float(np.mean([r.reward - r.verifier_reward for r in sampled]))
                                   if c.overlong_buffer is not None else None),
            time_rollout_s=batch.time_rollout_s,
            time_generate_s=batch.time_generate_s,
            time_verify_s=batch.time_verify_s,
            time_update_s=time_update,
            time_sync_s=time_sync,
            time_weight_sync_s=batch.time_weight_sync_s,
        )
        lag = AsyncStats()
        if c.rollout_lag:
            lag = AsyncStats(policy_lag=s - 1 - batch.weights_iteration,
                             time_overlap_s=_overlap(self.pending_batch.interval, (t1, t_update_end)))
        stats.time_iteration_s = time.perf_counter() - t_start  # before the held-out test
        test = None
        if c.test_interval and (s % c.test_interval == 0 or self.test_due):
            test = self.run_test(iteration=s)
        self.test_due = False
        stats.time_unix = time.time()
        logged = {
            **asdict(stats),
            **{name: learned[name] for name in row_fields(LearnerResult)},
            **batch_stats,
            **asdict(SamplingStats(**batch.sampling_stats)),  # null without filter_groups
            **asdict(lag),
            **(test or dict.fromkeys(TEST_FIELDS)),
        }
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
        accuracy, pass_at_k = held_out_scores(correct, k)
        return asdict(HeldOutResult(
            test_accuracy=accuracy,
            test_pass_at_k=pass_at_k,
            test_problems=len(correct),
            test_reward_errors=int(sum(out["reward_errors"] for out in outs)),
            test_overlap_problems=self.test_overlap,
            time_test_s=time.perf_counter() - t0,
        ))

    # ----- checkpoint state ----------------------------------------------------------
    # Runner state is not saved: their weights are the learners', synced on restore.
    @override(Algorithm)
    def get_checkpointable_components(self):
        return [(COMPONENT_LEARNER_GROUP, self.learner_group)]

    @override(Algorithm)
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        # RLlib's: the learner group, the metrics logger and the iteration count.
        state = super().get_state(components, not_components=force_list(not_components) + RUNNER_COMPONENTS, **kwargs)
        state[SFPO_STATE] = {
            "iteration": self.sfpo_iteration,
            "rollouts": self.rollouts,
            "run_seed": self.run_seed,
            "trigger": self.trigger.get_state(),
            "pending_batch": self.pending_batch,  # lag 1: generated by the weights before the last update
        }
        return state

    @override(Algorithm)
    def restore_from_path(self, path, *args, **kwargs) -> None:
        super().restore_from_path(path, *args, **kwargs)
        # The learner group was restored from its own folder: push its weights out.
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)

    @override(Algorithm)
    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)  # learner group (then a weight sync), metrics logger, iteration count
        if SFPO_STATE in state:
            sfpo = state[SFPO_STATE]
            self.sfpo_iteration = sfpo["iteration"]
            self.rollouts = sfpo["rollouts"]
            self.run_seed = sfpo["run_seed"]
            self.trigger.set_state(sfpo["trigger"])
            self.pending_batch = sfpo.get("pending_batch")

    @override(Algorithm)
    def cleanup(self) -> None:
        self._generator.shutdown(wait=True)
        super().cleanup()
