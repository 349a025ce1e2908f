"""SFPOTorchLearner: fast – reposition – slow on one batch of rollouts.

One call of ``update`` is one SFPO iteration s on this learner's shard:

  0. θ⁰ pass (no grad): old log-probs of every completion token under θ⁰ (the ratio's
     denominator for all K+1 passes), and the entropy sum that drives the trigger.
  I. Fast trajectory: K passes (each ``num_epochs`` epochs over the minibatches).
 II. Reposition: θ̃ = θ⁰ + α (θᴷ − θ⁰), in place from a single snapshot of θ⁰.
III. Slow correction: one more pass from θ̃.

With α = 0 (or K = 0) stages I and II are skipped entirely, as in Algorithm 1, so the
optimizer state is exactly GRPO's: that is what makes GRPO and SFPO(α=0) bit-identical.

Optimizer and LR-schedule policy through the K+1 passes (explicit, as the authors do):
  * the optimizer's moments and step count are carried through every pass, fast and
    slow, and are not touched by the reposition (θ moves, Adam's m and v do not);
  * RLlib's LR schedule (``lr`` given as a schedule) is evaluated once per iteration, in
    ``before_gradient_based_update``, on the env steps sampled so far: all K+1 passes of
    an iteration use the same lr.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.learner.training_data import TrainingData
from ray.rllib.utils.annotations import override

from sfpo_rllib.batch import ADVANTAGES, MB_INDEX, MB_NUM_SEQS, MB_NUM_TOKENS, ROLLOUT_LOGP
from sfpo_rllib.causal_lm_module import (
    ATTENTION_MASK,
    COMPLETION_MASK,
    ENTROPY,
    INPUT_IDS,
    LOGP,
    completion_logp_and_entropy,
    load_causal_lm,
)
from sfpo_rllib.losses import aggregate, clipped_surrogate, kl_penalty
from sfpo_rllib.rollout_agreement import minibatches_gap
from sfpo_rllib.slow_fast import ParameterSnapshot

OLD_LOGP = "old_logp"  # (B, C) log-probs under θ⁰, filled by the θ⁰ pass
REF_LOGP = "ref_logp"  # (B, C) under the frozen reference model (only when kl_coeff > 0)

OPTIMIZERS = {
    "adamw": lambda params, c: torch.optim.AdamW(params, betas=tuple(c.adam_betas), weight_decay=c.weight_decay),
    "adam": lambda params, c: torch.optim.Adam(params, betas=tuple(c.adam_betas), weight_decay=c.weight_decay),
    "sgd": lambda params, c: torch.optim.SGD(params, weight_decay=c.weight_decay),
}


class SFPOTorchLearner(TorchLearner):
    @override(TorchLearner)
    def build(self) -> None:
        super().build()
        self._theta0 = ParameterSnapshot()
        self._optimizer_steps = 0  # lifetime count of optimizer steps on this learner
        self._policy().entropy_grad = self.config.entropy_coeff != 0.0
        self._reference = None
        if self.config.kl_coeff > 0.0:
            # A frozen copy of the starting model: the KL anchor (costs one model of memory).
            self._reference = load_causal_lm(self.config.resolved_model_path(), self.config.model_dtype)
            self._reference.to(self._device).eval().requires_grad_(False)

    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        params = self.get_parameters(self._module[module_id])
        self.register_optimizer(
            module_id=module_id,
            optimizer=OPTIMIZERS[config.optimizer](params, config),
            params=params,
            lr_or_lr_schedule=config.lr,
        )

    def _policy(self):
        module = self.module[DEFAULT_MODULE_ID]
        return module.unwrapped() if hasattr(module, "unwrapped") else module

    def _trainable(self) -> list[torch.Tensor]:
        return [p for p in self._policy().parameters() if p.requires_grad]

    # ----- one SFPO iteration -------------------------------------------------------
    @override(TorchLearner)
    def update(
        self,
        *,
        training_data: TrainingData | None = None,
        batch=None,
        timesteps: dict | None = None,
        alpha: float = 0.0,
        fast_steps: int = 0,
        **kwargs,
    ) -> dict[str, Any]:
        self._check_is_built()
        if training_data is None:
            training_data = TrainingData(batch=batch)
        training_data.validate()
        training_data.solve_refs()
        minibatches = self._to_minibatches(training_data.batch.policy_batches[DEFAULT_MODULE_ID])

        self.before_gradient_based_update(timesteps=timesteps or {})  # lr schedule: once
        self._weights_seq_no += 1
        entropy_sum, num_tokens = self._theta0_pass(minibatches)
        rollout_gap = minibatches_gap(minibatches, OLD_LOGP, ROLLOUT_LOGP, COMPLETION_MASK)

        params = self._trainable()
        distance = 0.0
        steps_before = self._optimizer_steps
        if alpha > 0.0 and fast_steps > 0:
            self._theta0.take(params)
            for _ in range(fast_steps):  # Stage I
                self._pass(minibatches)
            distance = self._theta0.distance(params)
            self._theta0.reposition(params, alpha)  # Stage II
        self._pass(minibatches)  # Stage III (GRPO's only pass)
        self.after_gradient_based_update(timesteps=timesteps or {})

        return {
            "learner": self.metrics.reduce(),
            "sfpo": {
                "entropy_sum": entropy_sum,
                "num_tokens": num_tokens,
                "reposition_distance": distance,
                "optimizer_steps": self._optimizer_steps - steps_before,
                **rollout_gap,
            },
        }

    def _to_minibatches(self, shard) -> list[dict[str, torch.Tensor]]:
        columns = {k: torch.from_numpy(np.asarray(shard[k])).to(self._device) for k in shard.keys()}
        index = columns[MB_INDEX]
        return [{k: v[index == m] for k, v in columns.items()} for m in torch.unique(index).tolist()]

    @torch.no_grad()
    def _theta0_pass(self, minibatches: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        policy = self._policy()
        entropy_sum, num_tokens = 0.0, 0.0
        for mb in minibatches:
            mask = mb[COMPLETION_MASK]
            logp, entropy = completion_logp_and_entropy(
                policy.lm, mb[INPUT_IDS], mb[ATTENTION_MASK], mask.shape[1], policy.temperature
            )
            mb[OLD_LOGP] = logp
            entropy_sum += float((entropy * mask).sum())
            num_tokens += float(mask.sum())
            if self._reference is not None:
                mb[REF_LOGP], _ = completion_logp_and_entropy(
                    self._reference, mb[INPUT_IDS], mb[ATTENTION_MASK], mask.shape[1], policy.temperature
                )
        return entropy_sum, num_tokens

    def _pass(self, minibatches: list[dict[str, torch.Tensor]]) -> None:
        """One SFPO 'step': ``num_epochs`` epochs over the minibatches, same order each time."""
        for _ in range(self.config.num_epochs):
            for mb in minibatches:
                self._update({DEFAULT_MODULE_ID: mb})

    @override(TorchLearner)
    def apply_gradients(self, gradients_dict) -> None:
        super().apply_gradients(gradients_dict)
        self._optimizer_steps += 1

    # ----- the GRPO loss --------------------------------------------------------------
    @override(TorchLearner)
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        mask = batch[COMPLETION_MASK]
        norms = {"num_tokens": batch[MB_NUM_TOKENS][0], "num_seqs": batch[MB_NUM_SEQS][0]}
        policy_loss, stats = clipped_surrogate(
            fwd_out[LOGP],
            batch[OLD_LOGP],
            batch[ADVANTAGES],
            mask,
            clip_param=config.clip_param,
            mode=config.loss_agg,
            **norms,
        )
        total = policy_loss
        if config.entropy_coeff != 0.0:
            entropy = aggregate(fwd_out[ENTROPY], mask, mode=config.loss_agg, **norms)
            total = total - config.entropy_coeff * entropy
        if config.kl_coeff > 0.0:
            kl = aggregate(kl_penalty(fwd_out[LOGP], batch[REF_LOGP]), mask, mode=config.loss_agg, **norms)
            total = total + config.kl_coeff * kl
            stats["kl"] = kl.detach()
        stats["policy_loss"] = policy_loss.detach()
        for name, value in stats.items():
            self.metrics.log_value((module_id, name), value, window=1)
        # The loss is this shard's exact share of the global minibatch loss; DDP averages
        # gradients over learners, so scale by the world size to get their sum.
        return total * max(1, self.config.num_learners)
