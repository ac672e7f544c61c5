"""Load a checkpoint's weights into a running vLLM engine, exactly (``worker_extension_cls``).

vLLM's ``reload_weights(weights_path=...)`` reloads the model layer by layer and re-runs each layer's
``process_weights_after_loading``. On vLLM's CPU build that step packs every linear layer's weight into a
oneDNN handle (``dispatch_cpu_unquantized_gemm``), and the logits are computed from the packed copy. With
tied embeddings (``lm_head`` shares ``embed_tokens``' weight) a checkpoint saved by ``save_pretrained`` has no
``lm_head.weight``: the reload fills the shared weight through ``embed_tokens`` but never re-packs
``lm_head``, so the logits still come from the *old* embedding matrix (measured: scores move, but not to the
checkpoint's). ``reload_checkpoint`` reloads, then re-packs every unquantised (vocab-parallel) embedding from
its live weight, and checks the head against a plain matmul on random inputs. GPU builds read
``layer.weight`` directly; the re-pack is a no-op there.

This module is imported inside vLLM's engine processes (``--worker-extension-cls
autotune.evaluate.vllm_reload.ReloadExtension``): it imports nothing of autotune's but this package's path.
"""

from __future__ import annotations


class ReloadExtension:
    """Mixed into vLLM's worker class; ``collective_rpc("reload_checkpoint", kwargs={"path": ...})`` calls it."""

    def reload_checkpoint(self, path: str) -> dict:
        import torch
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.layers.vocab_parallel_embedding import (
            UnquantizedEmbeddingMethod,
            VocabParallelEmbedding,
        )

        self.reload_weights(weights_path=path)
        model = self.model_runner.get_model()
        with set_current_vllm_config(self.vllm_config):
            for m in model.modules():
                if isinstance(m, VocabParallelEmbedding) and isinstance(m.quant_method, UnquantizedEmbeddingMethod):
                    m.quant_method.process_weights_after_loading(m)
        head_err = None
        head = getattr(model, "lm_head", None)
        weight = getattr(head, "weight", None)
        if head is not None and hasattr(head, "cpu_linear") and weight is not None and weight.numel():
            x = torch.randn(4, weight.shape[1], dtype=weight.dtype, generator=torch.Generator().manual_seed(0))
            head_err = float((head.cpu_linear(x, weight, None) - torch.nn.functional.linear(x, weight)).abs().max())
        return {"path": path, "lm_head_max_abs_err": head_err}
