"""Rollouts with vLLM (GPU only; ``pip install 'sfpo-rllib[vllm]'``).

Imported only when ``rollout_engine="vllm"`` is chosen, so the package works without
vLLM. Weights are pushed into the running engine after every iteration with
``LLM.apply_model`` (each worker's model gets ``load_weights``), the path TRL's colocate
mode and verl take in spirit. NOT RUN in this project's CI or on its development machines
(no CUDA there): see the README's "Where the vLLM engine was run".
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from sfpo_rllib.engines.base import RolloutEngine, SamplingParams


class VLLMEngine(RolloutEngine):
    shares_policy_weights = False

    def __init__(
        self,
        model_path: str,
        *,
        eos_token_id: int,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
    ):
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(
                f"`rollout_engine`='vllm' needs vLLM, which is not importable ({err}). Install the "
                "extra on a CUDA machine: pip install 'sfpo-rllib[vllm]', or use rollout_engine='hf'."
            ) from None
        self.eos_token_id = int(eos_token_id)
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enable_prefix_caching=True,  # the G samples of a prompt share its prefix
        )

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], n: int, params: SamplingParams, seed: int
    ) -> list[list[int]]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        sampling = VSamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,  # vLLM: -1 disables top-k
            max_tokens=params.max_new_tokens,
            seed=seed,
            stop_token_ids=[self.eos_token_id],
            skip_special_tokens=False,
        )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], sampling, use_tqdm=False
        )
        completions = []
        for request in outputs:  # vLLM keeps the order of the prompts
            for sample in sorted(request.outputs, key=lambda o: o.index):
                ids = list(sample.token_ids)
                if sample.finish_reason == "stop" and (not ids or ids[-1] != self.eos_token_id):
                    ids.append(self.eos_token_id)  # stopped on eos: keep it, the loss learns to stop
                completions.append(ids)
        return completions

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        weights = [(name, tensor) for name, tensor in state_dict.items()]
        self.llm.apply_model(lambda model: model.load_weights(weights))
        self.llm.reset_prefix_cache()  # cached KV blocks belong to the old weights

    def close(self) -> None:
        del self.llm
        torch.cuda.empty_cache()
