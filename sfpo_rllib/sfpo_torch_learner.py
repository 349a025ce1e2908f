"""SFPOTorchLearner: fast – reposition – slow on one batch of rollouts.

One call of ``update`` is one SFPO iteration s on this learner's shard:

  0. θ⁰ pass (no grad): old log-probs of every completion token under θ⁰ (the ratio's
     denominator for all K+1 passes), and the entropy sum that drives the trigger. The
     first minibatch skips it: the iteration's first optimizer step runs at θ⁰, so its own
     forward gives those log-probs and entropies (detached) before its loss uses them. With
     one minibatch (GRPO's usual shape) the separate θ⁰ forward is gone entirely.
  I. Fast trajectory: K passes (each ``num_epochs`` epochs over the minibatches).
 II. Reposition: θ̃ = θ⁰ + α (θᴷ − θ⁰), in place from a single snapshot of θ⁰.
III. Slow correction: one more pass from θ̃.

With α = 0 (or K = 0) stages I and II are skipped entirely, as in Algorithm 1, so the
optimizer state is exactly GRPO's: that is what makes GRPO and SFPO(α=0) bit-identical.

``fast_stage="gxpo"`` (GXPO, gxpo.py) runs stages I–III per minibatch instead, as the GXPO
authors' ``update_policy_gxpo`` / ``_gxpo_minibatch_step`` do (SwapniL-afk-now/final-gxpo,
Code/SFPO/verl/workers/actor/dp_actor.py): for each epoch and minibatch, snapshot θ⁰, two
fast steps capturing the raw gradients g₀ and g₁, extrapolate θ² to the virtual K-step point,
reposition with α, one corrective step. With one minibatch and K = 2 it is SFPO with two
fast steps, bit for bit; with α = 0 it is GRPO.

``reuse_gate="lm_head_grad"`` (DGG's gate, lm_head_probe.py) measures the lm_head weight's
gradient norm in the iteration's first optimizer step (at θ⁰, before any reuse).

Optimizer and LR-schedule policy through the K+1 passes (explicit, as the authors do):
  * the optimizer's moments and step count are carried through every pass, fast and
    slow, and are not touched by the reposition (θ moves, Adam's m and v do not);
  * RLlib's LR schedule (``lr`` given as a schedule) is evaluated once per iteration, in
    ``after_gradient_based_update``, on the env steps sampled so far, and sets the lr of the
    next iteration: all K+1 passes of an iteration use the same lr.

Memory (real-size models): every minibatch (one optimizer step) is cut into micro-batches
(``max_tokens_per_micro_batch`` / ``micro_batch_size``, rows sorted by length, each padded
to its own widths). Gradients of the micro-batches accumulate; the loss of each is its
exact share of the whole minibatch's (normalised by the minibatch's global token and
sequence counts), so the accumulated gradient is the minibatch's. Gradient clipping and
the optimizer step then run once. With DDP, all micro-batches but the last run under
``no_sync()``: one all-reduce per optimizer step. The θ⁰ and reference passes use the same
micro-batches. ``mixed_precision`` runs forward and backward under autocast while the
parameters, gradients, optimizer moments and the θ⁰ snapshot stay in fp32.
``learner_strategy="fsdp2"`` shards the policy over the learners instead of replicating it
(sharding.py); the gradients are then reduce-scattered after every micro-batch (so they
accumulate sharded), and all learners run as many micro-batches as the busiest one (the
others add empty ones: FSDP's collectives must pair up).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import tree
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.learner.training_data import TrainingData
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from sfpo_rllib.logprobs import completion_logp_and_entropy, load_causal_lm
from sfpo_rllib.rows import RowTooLongError, cut_micro_batches
from sfpo_rllib.columns import (
    ADVANTAGES,
    ATTENTION_MASK,
    COMPLETION_MASK,
    ENTROPY,
    INPUT_IDS,
    LOGP,
    MB_INDEX,
    MB_NUM_SEQS,
    MB_NUM_TOKENS,
    OLD_ENTROPY,
    OLD_LOGP,
    REF_LOGP,
    ROLLOUT_LOGP,
)
from sfpo_rllib import rllib_compat, sharding
from sfpo_rllib.allocator import malloc_for_update
from sfpo_rllib.lora import AdaptersDisabled, is_lora
from sfpo_rllib.losses import aggregate, kl_penalty, policy_loss, truncated_is_weights
from sfpo_rllib.results import PASS_DIAGNOSTICS, LearnerResult
from sfpo_rllib.rollout_agreement import behaviour_weight_sums, minibatches_gap
from sfpo_rllib.slow_fast import ParameterSnapshot
from sfpo_rllib import gxpo
from sfpo_rllib.lm_head_probe import LmHeadGradProbe

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# Where each loss diagnostic (results.PASS_DIAGNOSTICS) is under the module's metrics:
# compute_loss_for_module logs them by name; RLlib's gradient clipping logs the norm.
DIAGNOSTIC_KEYS = {name: name for name in PASS_DIAGNOSTICS} | {"grad_norm": "gradients_default_optimizer_global_norm"}
_NOT_LOGGED = object()
# Loss diagnostics that are a micro-batch's share of the minibatch's value (aggregated with
# the minibatch's counts, like the loss): summed over its micro-batches. The others
# (clipfrac, approx_kl, ...) are means over the micro-batch's completion tokens: averaged
# weighted by those token counts. Either way one optimizer step logs the whole minibatch's.
SHARE_DIAGNOSTICS = ("policy_loss", "kl")


def _finite_above(value: float, floor: float) -> bool:
    return math.isfinite(value) and value > floor


def _own_copy(value):
    return value.copy() if isinstance(value, np.ndarray) else value

OPTIMIZERS = {
    "adamw": lambda params, c: torch.optim.AdamW(params, betas=tuple(c.adam_betas), weight_decay=c.weight_decay),
    "adam": lambda params, c: torch.optim.Adam(params, betas=tuple(c.adam_betas), weight_decay=c.weight_decay),
    "sgd": lambda params, c: torch.optim.SGD(params, weight_decay=c.weight_decay),
}


class SFPOTorchLearner(TorchLearner):
    @override(TorchLearner)
    def build(self) -> None:
        with malloc_for_update():  # the update's malloc setting, before the model's tensors exist (allocator.py)
            super().build()
        self._theta0 = ParameterSnapshot()
        self._lm_head_probe = LmHeadGradProbe(self._policy().lm) if self.config.reuse_gate == "lm_head_grad" else None
        self._optimizer_steps = 0  # lifetime count of optimizer steps on this learner
        self._micro_stats: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []
        self._policy().entropy_grad = self.config.entropy_coeff != 0.0
        self._reference = None
        if self.config.kl_coeff > 0.0 and is_lora(self._policy().lm):
            # The KL anchor is the base model: the policy's own weights with the adapters
            # switched off (no second copy).
            self._reference = AdaptersDisabled(self._policy().lm)
        elif self.config.kl_coeff > 0.0:
            # A frozen copy of the starting model: the KL anchor (costs one model of memory).
            self._reference = load_causal_lm(self.config.resolved_model_path(), self.config.model_dtype)
            self._reference.to(self.device).eval().requires_grad_(False)
        if self._fsdp():
            self._gather_full_state()  # what RLlib reads for the first weight sync
        if self.config.mixed_precision == "fp16":
            # fp16 gradients under- and overflow without loss scaling; RLlib's
            # apply_gradients steps the optimizer through this scaler.
            rllib_compat.set_grad_scaler(self, DEFAULT_MODULE_ID, torch.amp.GradScaler(self.device.type))

    # ----- sharding (learner_strategy="fsdp2") ------------------------------------------
    def _fsdp(self) -> bool:
        return self.config.learner_strategy == "fsdp2" and self.config.num_learners > 1

    @override(TorchLearner)
    def _make_module(self):
        module = super()._make_module()
        if self._fsdp():  # before the optimizer is built on the (then sharded) parameters
            sharding.shard_policy(module[DEFAULT_MODULE_ID])
        return module

    @override(TorchLearner)
    def _make_modules_ddp_if_necessary(self) -> None:
        if not self._fsdp():
            super()._make_modules_ddp_if_necessary()

    def _gather_full_state(self) -> None:
        policy = self._policy()
        policy.gathered_state, self._gathered_optimizer_state = sharding.gather_full_state(
            policy, self.get_optimizer(DEFAULT_MODULE_ID)
        )

    @override(TorchLearner)
    def _get_optimizer_state(self):
        if not self._fsdp():
            return super()._get_optimizer_state()
        return {"fsdp2_full_state": self._gathered_optimizer_state}

    @override(TorchLearner)
    def _set_optimizer_state(self, state) -> None:
        if not self._fsdp():
            # Copy the arrays: a state sent to several learners on one node arrives as
            # zero-copy numpy views of one shared Ray object, and RLlib's torch.from_numpy
            # would let every learner's Adam update the same moments in place.
            return super()._set_optimizer_state(tree.map_structure(_own_copy, state))
        sharding.load_full_optimizer_state(self._policy(), self.get_optimizer(DEFAULT_MODULE_ID), state["fsdp2_full_state"])
        self._gather_full_state()

    @override(TorchLearner)
    def postprocess_gradients_for_module(self, *, module_id, config=None, module_gradients_dict):
        if not self._fsdp() or config.grad_clip is None:
            return super().postprocess_gradients_for_module(
                module_id=module_id, config=config, module_gradients_dict=module_gradients_dict
            )
        if config.grad_clip_by != "global_norm":
            raise ValueError(f"learner_strategy='fsdp2' clips by global norm only, not {config.grad_clip_by!r}.")
        norm = sharding.clip_grad_norm_(list(module_gradients_dict.values()), config.grad_clip)
        self.metrics.log_value((module_id, "gradients_maxabs_after_clipping_global_norm"), float(norm), window=1)
        return dict(module_gradients_dict)

    def _autocast(self):
        """Forward (and, through autograd, backward) in the compute precision."""
        mode = self.config.mixed_precision
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES.get(mode), enabled=mode != "no")

    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        # Only trainable parameters (with LoRA, the adapters): the base stays frozen and
        # the optimizer holds no state for it. Without LoRA this is every parameter.
        params = [p for p in self.get_parameters(self.module[module_id]) if p.requires_grad]
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

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [optim for _, optim in self.get_optimizers_for_module(DEFAULT_MODULE_ID)]

    def _count_weights_version(self) -> None:
        """One more version of the weights (RLlib's weights_seq_no), as ``Learner.update`` counts."""
        seq_no = self.get_state(components=WEIGHTS_SEQ_NO)[WEIGHTS_SEQ_NO]  # no component: just the counters
        self.set_state({WEIGHTS_SEQ_NO: seq_no + 1})

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
        with malloc_for_update():  # freed activations go back at once (allocator.py)
            return self._update(training_data=training_data, batch=batch, timesteps=timesteps, alpha=alpha,
                                fast_steps=fast_steps)

    def _update(self, *, training_data, batch, timesteps, alpha: float, fast_steps: int) -> dict[str, Any]:
        """One iteration on this learner's shard: θ⁰ pass, fast passes and reposition (α > 0), slow pass."""
        if training_data is None:
            training_data = TrainingData(batch=batch)
        training_data.validate()
        training_data.solve_refs()
        minibatches, layout = self._to_minibatches(training_data.batch.policy_batches[DEFAULT_MODULE_ID])

        self.before_gradient_based_update(timesteps=timesteps or {})  # RLlib's hooks: once per iteration
        self._count_weights_version()
        self._theta0_pass(minibatches)

        params = self._trainable()
        distance = 0.0
        gxpo_scale = None
        steps_before = self._optimizer_steps
        diagnostics = {"fast": {}, "slow": {}}
        if self._lm_head_probe is not None:
            self._lm_head_probe.arm()  # read in the iteration's first optimizer step
        if alpha > 0.0 and fast_steps > 0 and self.config.fast_stage == "gxpo":
            distance, gxpo_scale = self._gxpo_passes(minibatches, alpha, diagnostics)
        else:
            if alpha > 0.0 and fast_steps > 0:
                self._theta0.take(params)
                for _ in range(fast_steps):  # Stage I
                    self._pass(minibatches, diagnostics["fast"])
                distance = self._theta0.distance(params)
                self._theta0.reposition(params, alpha)  # Stage II
            self._pass(minibatches, diagnostics["slow"])  # Stage III (GRPO's only pass)
        self.after_gradient_based_update(timesteps=timesteps or {})
        micro_batches = [micro for mb in minibatches for micro in mb]
        entropy_sum = sum(float((micro[OLD_ENTROPY] * micro[COMPLETION_MASK]).sum()) for micro in micro_batches)
        num_tokens = sum(float(micro[COMPLETION_MASK].sum()) for micro in micro_batches)
        gap_sum, gap_max = minibatches_gap(micro_batches, OLD_LOGP, ROLLOUT_LOGP, COMPLETION_MASK)
        weight_sum, weights_truncated = None, None  # the decoupled loss's behaviour weights: lag 1 only
        if self.config.rollout_lag:
            weight_sum, weights_truncated = behaviour_weight_sums(
                micro_batches, OLD_LOGP, ROLLOUT_LOGP, COMPLETION_MASK, self.config.tis_cap)
        if self._fsdp():
            self._gather_full_state()

        return {
            "learner": self.metrics.reduce(),
            "sfpo": LearnerResult(
                num_tokens=num_tokens,
                entropy=entropy_sum,  # a sum: results.TOKEN_MEAN
                reposition_distance=distance,
                gxpo_scale_mean=gxpo_scale,
                lm_head_grad_norm=self._lm_head_probe.value if self._lm_head_probe is not None else None,
                optimizer_steps=self._optimizer_steps - steps_before,
                micro_batches=sum(len(mb) for mb in minibatches),
                real_tokens=layout["real_tokens"],
                computed_tokens=layout["computed_tokens"],
                rollout_logp_diff=gap_sum,  # sums: results.TOKEN_MEAN
                rollout_logp_diff_max=gap_max,
                behaviour_weight_mean=weight_sum,
                behaviour_weight_truncated_fraction=weights_truncated,
                diagnostics={
                    f"{stage}_{name}": float(np.mean(values))
                    for stage, found in diagnostics.items() for name, values in found.items()
                },
            ),
        }

    def _to_minibatches(self, shard) -> tuple[list[list[dict[str, torch.Tensor]]], dict[str, float]]:
        """This learner's shard -> its minibatches, each a list of micro-batches."""
        columns = {k: torch.from_numpy(np.asarray(shard[k])).to(self.device) for k in shard.keys()}
        index = columns[MB_INDEX]
        minibatches, layout = [], {"real_tokens": 0.0, "computed_tokens": 0.0}
        for m in torch.unique(index).tolist():
            minibatch = {k: v[index == m] for k, v in columns.items()}
            try:
                micro_batches, counts = cut_micro_batches(
                    minibatch,
                    max_tokens=self.config.max_tokens_per_micro_batch,
                    max_rows=self.config.micro_batch_size,
                )
            except RowTooLongError as err:
                raise RowTooLongError(err.row, err.prompt, err.completion, err.budget, f"minibatch {m}") from None
            minibatches.append(micro_batches)
            for key in layout:
                layout[key] += counts[key]
        if self._fsdp():
            wanted = sharding.max_over_learners([len(mb) for mb in minibatches])
            for micro_batches, n in zip(minibatches, wanted):
                while len(micro_batches) < n:  # an empty micro-batch: no tokens, zero loss and gradient
                    empty = {k: v[:1].clone() for k, v in micro_batches[-1].items()}
                    empty[COMPLETION_MASK].zero_()
                    micro_batches.append(empty)
        return minibatches, layout

    @torch.no_grad()
    def _theta0_pass(self, minibatches: list[list[dict[str, torch.Tensor]]]) -> None:
        """θ⁰'s log-probs and entropies (and the reference's log-probs) of every micro-batch but
        the first minibatch's, whose come from the first optimizer step (``_take_theta0``)."""
        policy = self._policy()
        for m, micro_batches in enumerate(minibatches):
            for micro in micro_batches:
                with self._autocast():
                    if m > 0:
                        out = policy(micro)  # through __call__: FSDP2 gathers the root's parameters there
                        micro[OLD_LOGP], micro[OLD_ENTROPY] = out[LOGP], out[ENTROPY]
                    if self._reference is not None:
                        micro[REF_LOGP] = self._reference_logp(micro)
        if self._fsdp():
            # A forward without backward leaves the root's parameters gathered (FSDP2 reshards
            # them after the backward): shard them again before θ⁰ is snapshotted from them.
            policy.reshard()

    @staticmethod
    def _take_theta0(micro: dict[str, torch.Tensor], fwd_out: dict[str, torch.Tensor]) -> None:
        """In the iteration's first optimizer step, still at θ⁰: its forward's log-probs and
        entropies are θ⁰'s, the very numbers a separate no-grad pass would compute."""
        micro[OLD_LOGP], micro[OLD_ENTROPY] = fwd_out[LOGP].detach(), fwd_out[ENTROPY].detach()

    def _reference_logp(self, micro) -> torch.Tensor:
        if isinstance(self._reference, AdaptersDisabled):
            with self._reference.base() as base:
                return self._logp_and_entropy(base, micro)[0]
        return self._logp_and_entropy(self._reference, micro)[0]

    def _logp_and_entropy(self, lm, micro):
        policy = self._policy()
        mask = micro[COMPLETION_MASK]
        return completion_logp_and_entropy(
            lm, micro[INPUT_IDS], micro[ATTENTION_MASK], mask.shape[1], policy.temperature,
            completion_mask=mask, chunk_tokens=policy.logp_chunk_tokens,
            share_prompt_prefix=policy.share_prompt_prefix,
        )

    def _pass(self, minibatches: list[list[dict[str, torch.Tensor]]], diagnostics: dict[str, list] | None = None) -> None:
        """One SFPO 'step': ``num_epochs`` epochs over the minibatches, same order each time.

        After each optimizer step the loss diagnostics it logged are appended to
        ``diagnostics`` (read only, so the update itself is untouched)."""
        for _ in range(self.config.num_epochs):
            for micro_batches in minibatches:
                self._optimizer_step(micro_batches)
                self._record(diagnostics)

    def _record(self, diagnostics: dict[str, list] | None) -> None:
        """Append the loss diagnostics the last optimizer step logged to ``diagnostics``."""
        if diagnostics is not None:
            for name, key in DIAGNOSTIC_KEYS.items():
                value = self.metrics.peek((DEFAULT_MODULE_ID, key), default=_NOT_LOGGED)
                if value is not _NOT_LOGGED:
                    diagnostics.setdefault(name, []).append(float(value))

    def _gxpo_passes(self, minibatches, alpha: float, diagnostics: dict[str, dict]) -> tuple[float, float]:
        """GXPO on every minibatch of every epoch; returns the mean ‖θ² − θ⁰‖ and mean scale.

        Per minibatch, as the authors' ``_gxpo_minibatch_step`` (dp_actor.py): θ⁰ snapshot;
        step 1 on g₀ and step 2 on g₁ (both captured raw, before clipping; the optimizer
        steps on the clipped ones); θ² → θ_K → θ̃; one corrective step. The authors' degenerate
        case, a first gradient of norm <= 1e-8 (every group of the minibatch with equal
        rewards, say), takes that one step and moves on: plain GRPO for the minibatch.
        The ratio's old log-probs stay θ⁰'s of the iteration, as the authors' default
        (``gxpo_recompute_old_log_probs`` False).
        """
        params = self._trainable()
        if getattr(self, "_gxpo_grads", None) is None:  # g₀ and g₁ buffers: allocated once, overwritten
            self._gxpo_grads = tuple([torch.zeros_like(sharding.local(p)) for p in params] for _ in range(2))
        g0, g1 = self._gxpo_grads
        distances, scales = [], []
        for _ in range(self.config.num_epochs):
            for micro_batches in minibatches:
                self._theta0.take(params)
                self._accumulate_gradients(micro_batches)
                self._capture_gradients(params, g0)
                if not _finite_above(self._norm(g0), gxpo.DEGENERATE_G0_NORM):
                    self._step_on_gradients()  # dp_actor.py: "return fallback()", one standard step
                    self._record(diagnostics["slow"])
                    continue
                self._step_on_gradients()
                self._record(diagnostics["fast"])
                self._accumulate_gradients(micro_batches)
                self._capture_gradients(params, g1)
                self._step_on_gradients()
                self._record(diagnostics["fast"])
                distances.append(self._theta0.distance(params))
                scales.append(gxpo.extrapolate(
                    params, self._theta0.saved(), g0, g1, self.config.gxpo_virtual_steps, self.config.gxpo_delta
                ))
                self._theta0.reposition(params, alpha)
                self._optimizer_step(micro_batches)  # the corrective step
                self._record(diagnostics["slow"])
        mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
        return mean(distances) or 0.0, mean(scales)

    @staticmethod
    @torch.no_grad()
    def _capture_gradients(params, into: list[torch.Tensor]) -> None:
        for p, buf in zip(params, into, strict=True):
            if p.grad is None:
                buf.zero_()
            else:
                buf.copy_(sharding.local(p.grad))

    def _norm(self, tensors: list[torch.Tensor]) -> float:
        total = torch.zeros((), dtype=torch.float64)
        for t in tensors:
            total += t.double().pow(2).sum().cpu()
        if self._fsdp():
            total = sharding.sum_over_learners(total)
        return float(total.sqrt())

    def _optimizer_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> None:
        """One optimizer step on one minibatch, given as its micro-batches.

        Takes the place of RLlib's per-minibatch ``_update`` (forward, ``compute_gradients``,
        ``postprocess_gradients``, ``apply_gradients``) with gradient accumulation in the
        middle: zero the gradients once, forward + backward every micro-batch, then clip
        and step once on the accumulated gradient.
        """
        self._accumulate_gradients(micro_batches)
        self._step_on_gradients()

    def _accumulate_gradients(self, micro_batches: list[dict[str, torch.Tensor]]) -> None:
        """Zero the gradients, then forward + backward every micro-batch of one minibatch."""
        probe = self._lm_head_probe is not None and self._lm_head_probe.armed
        if probe:
            self._lm_head_probe.before_backward()
        for optim in self._optimizers():
            optim.zero_grad(set_to_none=True)
        module = self.module[DEFAULT_MODULE_ID]
        self._micro_stats = []  # filled by compute_loss_for_module, one entry per micro-batch
        sync_each = self._fsdp()  # FSDP2 reduce-scatters every micro-batch: gradients stay sharded
        scaler = rllib_compat.grad_scaler(self, DEFAULT_MODULE_ID)
        for i, micro in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP all-reduces in the backward of the last micro-batch only.
            sync = contextlib.nullcontext() if last or sync_each or not hasattr(module, "no_sync") else module.no_sync()
            with sync:
                with self._autocast():
                    fwd_out = {DEFAULT_MODULE_ID: module(micro)}  # DDP / FSDP2 forward hooks run in __call__
                    loss = self.compute_losses(fwd_out=fwd_out, batch={DEFAULT_MODULE_ID: micro})[DEFAULT_MODULE_ID]
                (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            for optim in self._optimizers():
                scaler.unscale_(optim)  # clip the true gradient, not the scaled one
        if probe:
            self._lm_head_probe.read(scaler, num_learners=max(1, self.config.num_learners))

    def _step_on_gradients(self) -> None:
        """Clip the accumulated gradients and take the optimizer step (RLlib's postprocess + apply)."""
        self._log_minibatch_stats()
        gradients = {  # the registered parameters, in RLlib's order (that of registration)
            self.get_param_ref(p): p.grad for optim in self._optimizers() for group in optim.param_groups for p in group["params"]
        }
        self.apply_gradients(self.postprocess_gradients(gradients))

    def _log_minibatch_stats(self) -> None:
        """The loss diagnostics of the whole minibatch, from those of its micro-batches."""
        tokens = sum(n for _, n in self._micro_stats)
        for name in self._micro_stats[0][0]:
            if name in SHARE_DIAGNOSTICS:
                value = sum(stats[name] for stats, _ in self._micro_stats)
            else:
                value = sum(stats[name] * n for stats, n in self._micro_stats) / tokens.clamp(min=1.0)
            self.metrics.log_value((DEFAULT_MODULE_ID, name), value, window=1)

    @override(TorchLearner)
    def apply_gradients(self, gradients_dict) -> None:
        super().apply_gradients(gradients_dict)
        self._optimizer_steps += 1

    # ----- the GRPO loss --------------------------------------------------------------
    @override(TorchLearner)
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        if OLD_LOGP not in batch:  # the iteration's first step, at θ⁰ (see _theta0_pass)
            self._take_theta0(batch, fwd_out)
        mask = batch[COMPLETION_MASK]
        norms = {
            "num_tokens": batch[MB_NUM_TOKENS][0],
            "num_seqs": batch[MB_NUM_SEQS][0],
            "norm": config.resolved_loss_agg_norm(),
        }
        tis_weights = None
        if config.tis_cap is not None:
            rollout_logp = batch.get(ROLLOUT_LOGP)
            if rollout_logp is None:
                raise ValueError(
                    f"`tis_cap` ({config.tis_cap!r}) needs the rollout engine's log-probs (batch column "
                    f"{ROLLOUT_LOGP!r}), and this batch has none. Set tis_cap=None, or use a rollout engine "
                    "that returns log-probs."
                )
            tis_weights = truncated_is_weights(batch[OLD_LOGP], rollout_logp, config.tis_cap)
        policy_loss_value, stats = policy_loss(config.policy_loss)(
            fwd_out[LOGP],
            batch[OLD_LOGP],
            batch[ADVANTAGES],
            mask,
            clip_param=config.clip_param,
            clip_param_low=config.clip_param_low,
            clip_param_high=config.clip_param_high,
            clip_ratio_c=config.clip_ratio_c,
            tis_weights=tis_weights,
            mode=config.loss_agg,
            **norms,
        )
        total = policy_loss_value
        if config.entropy_coeff != 0.0:
            entropy = aggregate(fwd_out[ENTROPY], mask, mode=config.loss_agg, **norms)
            total = total - config.entropy_coeff * entropy
        if config.kl_coeff > 0.0:
            per_token_kl = kl_penalty(fwd_out[LOGP], batch[REF_LOGP], config.kl_estimator)
            kl = aggregate(per_token_kl, mask, mode=config.loss_agg, **norms)
            total = total + config.kl_coeff * kl
            stats["kl"] = kl.detach()
        stats["policy_loss"] = policy_loss_value.detach()
        self._micro_stats.append((stats, mask.sum()))  # logged per minibatch by _optimizer_step
        # The loss is this shard's exact share of the global minibatch loss; DDP averages
        # gradients over learners, so scale by the world size to get their sum.
        return total * max(1, self.config.num_learners)


rllib_compat.check_learner_hooks(SFPOTorchLearner)  # a Ray that lacks one fails here, by name
