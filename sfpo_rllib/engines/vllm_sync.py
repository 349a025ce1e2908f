"""The weight-sync half of the vLLM engine, run inside vLLM's worker.

vLLM mixes this class into its worker (``LLM(worker_extension_cls=...)``), and the engine
calls its methods through ``LLM.collective_rpc``, the public route TRL and verl use. A
sync is one layer-wise reload session of vLLM's own (``model_executor/model_loader/
reload``): ``begin`` puts every layer back to its checkpoint layout, each ``load`` feeds
one bucket of Hugging Face-named tensors through the model's ``load_weights``, and a
layer is post-processed as soon as all of its tensors arrived (``process_weights_after_
loading``: on CPU that repacks linear weights for the oneDNN kernels, which is why a
plain ``model.load_weights`` on the running model fails there); ``end`` finalises the
rest. The kernel tensors keep their storage, so nothing vLLM captured goes stale.

Kept free of vLLM imports at module level: vLLM imports it by name in its worker.
"""

from __future__ import annotations

import time


class WeightSyncExtension:
    """Methods vLLM adds to its worker (``self`` is the worker)."""

    def sfpo_begin_weight_sync(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self._sfpo_sync_t0 = time.perf_counter()
        self._sfpo_loaded: set[str] = set()
        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def sfpo_load_weight_bucket(self, weights: list) -> int:
        """Load one bucket of ``(name, tensor)``; returns how many tensors the model took."""
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(self.vllm_config):
            loaded = self.model_runner.get_model().load_weights(iter(weights))
        if loaded is not None:
            self._sfpo_loaded |= set(loaded)
        return len(weights)

    def sfpo_end_weight_sync(self) -> dict:
        """Finish the session; returns the seconds spent and the parameters never loaded."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        model = self.model_runner.get_model()
        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(model, self.vllm_config.model_config)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            if hasattr(self.model_runner, reset):
                getattr(self.model_runner, reset)()
        expected = {name for name, _ in model.named_parameters()}
        return {
            "seconds": time.perf_counter() - self._sfpo_sync_t0,
            "missing": sorted(expected - self._sfpo_loaded),
        }
