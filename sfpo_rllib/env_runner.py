"""The env runner: prompts from a single-step text environment, G completions per prompt
from a rollout engine, each scored by the environment's verifier.

RLlib's ``SingleAgentEnvRunner`` cannot carry text (docs/design.md, "What the code relies
on in RLlib"), so this runner is an ``EnvRunner`` of our own. It returns plain records; the
algorithm turns them into training batches. Which prompts it samples and the generation seed are functions of
(run seed, iteration, runner), never of RNG history, so a resumed run draws the same
rollouts as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import ray
import torch
from ray.rllib.core import COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.env.env_runner import EnvRunner
from ray.rllib.utils.annotations import override
from ray.rllib.utils.checkpoints import Checkpointable

from sfpo_envs.base import Verdict

from sfpo_rllib.allocator import malloc_for_generation
from sfpo_rllib.batch import pad_token_of
from sfpo_rllib.columns import Rollout
from sfpo_rllib.engines import SamplingParams
from sfpo_rllib.engines.factory import make_engine
from sfpo_rllib.env_factory import make_env
from sfpo_rllib.results import RunnerResult
from sfpo_rllib.text_task import TextTask

logger = logging.getLogger(__name__)


class RewardError(ValueError):
    """A verifier raised, or returned something that is not a finite number."""


class SFPOEnvRunner(EnvRunner, Checkpointable):
    """Samples rollouts for SFPO/GRPO; one per Ray actor (or one local)."""

    def __init__(self, *, config, **kwargs):
        super().__init__(config=config, **kwargs)
        from transformers import AutoTokenizer

        self.worker_index = self.worker_index or 0
        self.model_path = self.config.resolved_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.eos_token_id = self.tokenizer.eos_token_id
        if self.eos_token_id is None:
            raise ValueError(f"The tokenizer of `model` ({self.config.model_name_or_path!r}) has no eos token; set one.")
        self.pad_token_id = pad_token_of(self.tokenizer)
        self.prompt_token_limit = self._prompt_token_limit()
        torch.set_num_threads(max(1, int(self.config.torch_threads_per_runner or torch.get_num_threads())))
        self.train_task = TextTask(make_env(self.config.env, self.config.env_config))
        self.module = self.config.get_rl_module_spec(spaces=self.get_spaces(), inference_only=True).build()
        self.module.eval()
        self.engine = make_engine(self.config, self.module, pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id)
        self._test_task: TextTask | None = None
        self.weights_seq_no = 0
        self.time_weight_sync_s = 0.0  # the engine's last weight load (0: none yet / shared weights)

    # ----- rollouts -----------------------------------------------------------------
    def _sampling(self, temperature: float | None = None) -> SamplingParams:
        c = self.config
        return SamplingParams(
            max_new_tokens=c.max_new_tokens,
            temperature=c.temperature if temperature is None else temperature,
            top_p=c.top_p,
            top_k=c.top_k,
        )

    def _prompt_token_limit(self) -> tuple[int, str]:
        """The most tokens a prompt may have, and the setting that says so."""
        from sfpo_rllib.model_cache import TINY_MODEL_NAME
        from sfpo_rllib.sfpo_config import MAX_CONTEXT_TOKENS

        if self.config.max_prompt_tokens:
            return self.config.max_prompt_tokens, f"`max_prompt_tokens` ({self.config.max_prompt_tokens})"
        context = MAX_CONTEXT_TOKENS
        if self.config.model_name_or_path != TINY_MODEL_NAME:  # the tiny model's positions are rotary, nominal
            from transformers import AutoConfig

            context = getattr(AutoConfig.from_pretrained(self.model_path), "max_position_embeddings", None) or context
        return context - self.config.max_new_tokens, (
            f"the model's context ({context}) minus `max_new_tokens` ({self.config.max_new_tokens})")

    def _encode(self, task: TextTask, indices: Sequence[int]) -> list[list[int]]:
        use_chat = self.config.chat_template == "always" or (
            self.config.chat_template == "auto" and getattr(self.tokenizer, "chat_template", None)
        )
        encoded = []
        for index in indices:
            text, messages = task.prompt(int(index))
            if use_chat:
                if not getattr(self.tokenizer, "chat_template", None):
                    raise ValueError(
                        f"`chat_template` is 'always' but the tokenizer of {self.config.model_name_or_path!r} has "
                        "none; set chat_template='none' or use a model with a chat template."
                    )
                ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
            else:
                ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            ids = list(ids)
            limit, rule = self.prompt_token_limit
            if len(ids) > limit:
                raise ValueError(
                    f"Prompt of example {index} of {self.config.env!r} has {len(ids)} tokens, over {rule}. "
                    "Drop long rows from the data, or raise `max_prompt_tokens` within the model's context."
                )
            encoded.append(ids)
        return encoded

    def _rollout(self, task: TextTask, indices: Sequence[int], n: int, seed: int, temperature=None):
        t0 = time.perf_counter()
        prompts = self._encode(task, indices)
        with malloc_for_generation():  # per-step blocks reused, not mapped afresh (allocator.py)
            completions = self.engine.generate(prompts, n, self._sampling(temperature), seed)
        t1 = time.perf_counter()
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        expanded = [int(i) for i in indices for _ in range(n)]
        verdicts = self._checked(task, task.score(texts, expanded), expanded)
        t2 = time.perf_counter()
        return prompts, completions, verdicts, expanded, t1 - t0, t2 - t1

    def _checked(self, task: TextTask, verdicts: list[Verdict], indices: Sequence[int]) -> list[Verdict]:
        """Verifier errors per `on_reward_error`: stop the run, or keep them scored 0 (``info["reward_error"]``)."""
        failed = [(index, v.info["reward_error"]) for v, index in zip(verdicts, indices) if "reward_error" in v.info]
        if failed and self.config.on_reward_error == "raise":
            split = "held-out" if task is self._test_task else "training"
            index, why = failed[0]
            raise RewardError(
                f"The verifier of env {self.config.env!r} failed on {split} example {index} ({why})"
                f"{f'; {len(failed) - 1} more failed in this batch' if len(failed) > 1 else ''}. Fix the "
                "reward function, or set on_reward_error='zero' to score such completions 0 (counted in "
                "`reward_errors`)."
            )
        if failed:
            logger.warning("env %r: %d verifier error(s) scored 0 (on_reward_error='zero'); first: example %d (%s)",
                           self.config.env, len(failed), *failed[0])
        return verdicts

    def sample(self, *, indices: Sequence[int] = (), seed: int = 0, **kwargs) -> RunnerResult:
        """G completions for each prompt index; returns one ``Rollout`` per completion."""
        g = self.config.group_size
        prompts, completions, verdicts, expanded, t_gen, t_verify = self._rollout(self.train_task, indices, g, seed)
        records = [
            Rollout(
                prompt_ids=prompts[row // g],
                completion_ids=list(completion),
                verdict=verdict,
                rollout_logp=completion.logprobs,  # the engine's log π of each token
                stopped=bool(completion) and completion[-1] == self.eos_token_id,
                prompt_index=index,
            )
            for row, (completion, verdict, index) in enumerate(zip(completions, verdicts, expanded))
        ]
        self.num_env_steps_sampled_lifetime += len(records)
        return RunnerResult(
            records=records,
            time_generate_s=t_gen,
            time_verify_s=t_verify,
            time_weight_sync_s=self.time_weight_sync_s,  # the sync these rollouts were sampled after
        )

    def evaluate(self, *, indices: Sequence[int], samples_per_problem: int, seed: int) -> dict[str, Any]:
        """Per-problem correct counts on the held-out split at the training temperature."""
        _, _, verdicts, expanded, t_gen, t_verify = self._rollout(self._held_out_task(), indices, samples_per_problem, seed)
        correct: dict[int, int] = {}
        for verdict, index in zip(verdicts, expanded):
            correct[index] = correct.get(index, 0) + int(bool(verdict.correct))
        errors = sum("reward_error" in verdict.info for verdict in verdicts)
        return {"correct": correct, "reward_errors": errors, "time_s": t_gen + t_verify}

    def num_problems(self, split: str = "train") -> int:
        if split == "train":
            return len(self.train_task)
        return len(self._held_out_task())

    def use_held_out_env(self, env_id: str, env_config: dict) -> None:
        """Evaluate on ``make_env(env_id, env_config)`` from now on (``sfpo-rllib evaluate``)."""
        if self._test_task is not None:
            self._test_task.env.close()
        self._test_task = TextTask(make_env(env_id, env_config))

    def _held_out_task(self) -> TextTask:
        """The held-out environment, made on first use (training-only runs never build it)."""
        if self._test_task is None:
            self._test_task = TextTask(make_env(self.config.env, self.config.env_config, **self.config.test_env_config))
        return self._test_task

    # ----- EnvRunner / Checkpointable API -------------------------------------------
    @override(EnvRunner)
    def assert_healthy(self):
        assert self.module is not None and self.engine is not None

    @override(EnvRunner)
    def get_spaces(self):
        space = self.train_task.base.observation_space, self.train_task.base.action_space
        return {"__env__": space, DEFAULT_MODULE_ID: space}

    @override(EnvRunner)
    def get_metrics(self):
        return self.metrics.reduce()

    @override(Checkpointable)
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict:
        return {
            COMPONENT_RL_MODULE: {DEFAULT_MODULE_ID: self.module.get_state()},
            "weights_seq_no": self.weights_seq_no,
            "num_env_steps_sampled_lifetime": self.num_env_steps_sampled_lifetime,
        }

    @override(Checkpointable)
    def set_state(self, state: dict) -> None:
        if COMPONENT_RL_MODULE in state:
            module_state = state[COMPONENT_RL_MODULE]
            if isinstance(module_state, ray.ObjectRef):  # sync_weights ray.put()s it once for all runners
                module_state = ray.get(module_state)
            module_state = module_state.get(DEFAULT_MODULE_ID, module_state)
            self.module.set_state(module_state)
            if not self.engine.shares_policy_weights:
                self.time_weight_sync_s = self.engine.load_weights(self.module.hf_state_dict())
        self.weights_seq_no = state.get("weights_seq_no", self.weights_seq_no)
        self.num_env_steps_sampled_lifetime = state.get(
            "num_env_steps_sampled_lifetime", self.num_env_steps_sampled_lifetime
        )

    @override(Checkpointable)
    def get_ctor_args_and_kwargs(self):
        return (), {"config": self.config}

    @override(EnvRunner)
    def stop(self) -> None:
        self.engine.close()
        for task in (self.train_task, self._test_task):
            if task is not None:
                task.env.close()
