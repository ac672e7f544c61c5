"""Evaluation backends: how lm-eval reaches a model. One interface, three implementations.

* ``hf``: lm-eval's ``HFLM`` on a checkpoint folder, or on the model already in memory (the worker's
  freshly trained proxy: no save / reload). CPU and GPU.
* ``vllm``: lm-eval's in-process ``vllm.LLM`` model; ``vllm-server``: vLLM's OpenAI-compatible server in a
  child process (started from the suite's ``vllm.python``, a separate environment if need be) with lm-eval's
  ``local-completions`` model against it. Both, and the warm engine a study keeps, are in
  ``autotune.evaluate.vllm_engine``; the server life cycle is ``autotune.evaluate.server``.

vLLM is imported only when used; where and how to install it (GPU: ``autotune[vllm]``; CPU: vLLM's CPU
build in its own environment) is in the README.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from autotune.config.suite import HfOptions, Suite
from autotune.errors import UserError


# ----------------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face checkpoint folder (config, weights, tokenizer)."""

    path: Path


@dataclass(frozen=True)
class InMemoryModel:
    """A model already loaded (``transformers`` model + tokenizer); ``path``: a saved copy, if there is one."""

    model: Any
    tokenizer: Any
    path: Path | None = None


ModelRef = Checkpoint | InMemoryModel


def checkpoint_path(target: ModelRef, backend: str) -> Path:
    path = target.path
    if path is None:
        raise UserError(f"the {backend} backend loads the model from disk: save the checkpoint first",
                        field="backend", value=backend)
    return Path(path)


# ----------------------------------------------------------------------------------------------- protocol
class Backend(Protocol):
    """Life cycle: ``fingerprint(target)`` (cheap, no model load: part of the cache key), then
    ``with backend.open(target, log_dir) as lm:`` loads the model or starts the server and yields an
    lm-eval ``LM``; leaving the block frees the memory / stops the server, also on error and Ctrl-C."""

    name: str

    def fingerprint(self, target: ModelRef) -> dict[str, Any]: ...

    def open(self, target: ModelRef, log_dir: Path | None = None) -> contextlib.AbstractContextManager: ...


def make_backend(name: str, suite: Suite) -> Backend:
    if name == "hf":
        return HFBackend(suite.hf, suite.batch_size)
    if name in ("vllm", "vllm-server"):
        from autotune.evaluate.vllm_engine import VLLMBackend, VLLMServerBackend

        cls = VLLMBackend if name == "vllm" else VLLMServerBackend
        return cls(suite.vllm, suite.batch_size, suite.seed.torch or 0)
    raise UserError("unknown backend (choose hf, vllm or vllm-server)", field="backend", value=name)


def gpu_present() -> bool:
    """Whether a CUDA GPU is visible, without importing torch (the cached path stays light)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl")


def free_accelerator_memory() -> None:
    """Return a dropped model's GPU memory now (a full garbage collection costs ~0.5 s: only with CUDA)."""
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            gc.collect()
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- hf
class HFBackend:
    name = "hf"

    def __init__(self, options: HfOptions, batch_size: int) -> None:
        self.options = options
        self.batch_size = batch_size

    def device(self) -> str:
        return self.options.device or ("cuda" if gpu_present() else "cpu")

    def fingerprint(self, target: ModelRef) -> dict[str, Any]:
        if isinstance(target, InMemoryModel):
            return {"backend": "hf", "dtype": str(target.model.dtype).removeprefix("torch."),
                    "device": target.model.device.type, "batch_size": self.batch_size}
        return {"backend": "hf", "dtype": self.options.dtype, "device": self.device().split(":")[0],
                "batch_size": self.batch_size}

    @contextlib.contextmanager
    def open(self, target: ModelRef, log_dir: Path | None = None) -> Iterator[Any]:
        from lm_eval.models.huggingface import HFLM

        if isinstance(target, InMemoryModel):
            yield HFLM(pretrained=target.model, tokenizer=target.tokenizer, batch_size=self.batch_size)
            return
        import torch

        device = self.options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        lm = HFLM(pretrained=str(target.path), dtype=self.options.dtype, device=device, batch_size=self.batch_size)
        try:
            yield lm
        finally:
            del lm
            free_accelerator_memory()
