"""Evaluation backends: how lm-eval reaches a model. One interface, three implementations.

* ``hf``: lm-eval's ``HFLM`` on a checkpoint folder, or on the model already in memory (the worker's
  freshly trained proxy: no save / reload). CPU and GPU.
* ``vllm``: lm-eval's in-process ``vllm.LLM`` model (``pretrained`` is the checkpoint folder; extra options
  such as ``gpu_memory_utilization`` pass through to ``vllm.LLM``; ``data_parallel_size > 1`` needs ray).
* ``vllm-server``: ``vllm serve CHECKPOINT`` in a subprocess on a free port, lm-eval's OpenAI-compatible
  ``local-completions`` model against it (log-likelihoods through ``echo`` + ``logprobs``), one server per
  checkpoint for all tasks, stopped on success, on error, on Ctrl-C and on SIGTERM; if this process is
  killed outright the kernel stops the server too (Linux ``PR_SET_PDEATHSIG``).

vLLM is an optional extra (``pip install 'autotune[vllm]'``, GPU only), imported only when used. The
server life cycle is tested here against a stand-in process that speaks vLLM's HTTP endpoints
(``tests/standin_vllm_server.py``); vLLM itself cannot run on a CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

from autotune.config.suite import HfOptions, Suite, VllmOptions
from autotune.errors import UserError

VLLM_INSTALL = "pip install 'autotune[vllm]'  (GPU machines; vLLM brings its own CUDA build of torch)"
API_INSTALL = "pip install 'lm-eval[api]'"


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
    if name == "vllm":
        return VLLMBackend(suite.vllm, suite.batch_size, suite.seed.torch or 0)
    if name == "vllm-server":
        return VLLMServerBackend(suite.vllm, suite.batch_size, suite.seed.torch or 0)
    raise UserError("unknown backend (choose hf, vllm or vllm-server)", field="backend", value=name)


def _gpu_present() -> bool:
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
        return self.options.device or ("cuda" if _gpu_present() else "cpu")

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


# ----------------------------------------------------------------------------------------------- vllm
class VLLMBackend:
    name = "vllm"

    def __init__(self, options: VllmOptions, batch_size: int, seed: int) -> None:
        self.options = options
        self.batch_size = batch_size
        self.seed = seed

    def fingerprint(self, target: ModelRef) -> dict[str, Any]:
        o = self.options
        return {"backend": "vllm", "dtype": o.dtype, "tensor_parallel_size": o.tensor_parallel_size,
                "data_parallel_size": o.data_parallel_size, "max_model_len": o.max_model_len,
                "batch_size": self.batch_size, "seed": self.seed}

    def model_args(self, path: Path) -> dict[str, Any]:
        o = self.options
        args: dict[str, Any] = {"pretrained": str(path), "dtype": o.dtype, "tensor_parallel_size": o.tensor_parallel_size,
                                "data_parallel_size": o.data_parallel_size,
                                "gpu_memory_utilization": o.gpu_memory_utilization, "seed": self.seed,
                                "batch_size": self.batch_size}
        if o.max_model_len:
            args["max_model_len"] = o.max_model_len
        return args

    @contextlib.contextmanager
    def open(self, target: ModelRef, log_dir: Path | None = None) -> Iterator[Any]:
        path = checkpoint_path(target, self.name)
        if find_spec("vllm") is None:
            raise UserError(f"the vllm backend needs vLLM, which is not installed: {VLLM_INSTALL}",
                            field="backend", value="vllm")
        if self.options.data_parallel_size > 1 and find_spec("ray") is None:
            raise UserError("vllm.data_parallel_size > 1 needs ray: pip install ray", field="vllm.data_parallel_size",
                            value=self.options.data_parallel_size)
        from lm_eval.models.vllm_causallms import VLLM

        lm = VLLM(**self.model_args(path))
        try:
            yield lm
        finally:
            del lm
            with contextlib.suppress(Exception):  # vLLM's own teardown, where this version has it
                from vllm.distributed.parallel_state import (
                    destroy_distributed_environment,
                    destroy_model_parallel,
                )

                destroy_model_parallel()
                destroy_distributed_environment()
            free_accelerator_memory()


# ----------------------------------------------------------------------------------------------- vllm-server
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the kernel sends SIGTERM to the server if the process that started it dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServerError(RuntimeError):
    """The model server did not start, or died; the message carries the tail of its log."""


class ServerProcess:
    """A model server subprocess with a health endpoint.

    Life cycle: ``start()`` (own process group, output to ``log_path``) -> ``wait_healthy()`` (polls
    ``health_url`` until 200; fails fast if the process exits, stops it after ``startup_timeout_s``)
    -> requests -> ``stop()`` (SIGTERM to the group, SIGKILL after ``shutdown_timeout_s``). As a context
    manager it does all of that, stops the server on any exception, Ctrl-C included, and turns SIGTERM
    to this process into a clean stop first.
    """

    def __init__(self, command: list[str], *, health_url: str, log_path: Path, startup_timeout_s: float,
                 shutdown_timeout_s: float = 30, env: dict[str, str] | None = None) -> None:
        self.command = command
        self.health_url = health_url
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._old_sigterm: Any = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True, preexec_fn=_die_with_parent,
                                             env={**os.environ, **(self.env or {})})
            except FileNotFoundError:
                raise UserError(f"cannot start the model server: {self.command[0]!r} not found"
                                + (f" ({VLLM_INSTALL})" if self.command[0] == "vllm" else ""),
                                field="vllm.serve_command", value=self.command[0]) from None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def wait_healthy(self) -> float:
        """Seconds it took the server to answer 200 on its health endpoint."""
        assert self.proc is not None
        t0 = time.monotonic()
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(f"the model server exited with code {code} before it was ready "
                                  f"(log {self.log_path}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() - t0 > self.startup_timeout_s:
                raise ServerError(f"the model server was not ready after {self.startup_timeout_s:g} s "
                                  f"(vllm.startup_timeout_s; log {self.log_path}):\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server and everything it started (its process group); idempotent."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.shutdown_timeout_s)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (engine workers)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def _on_sigterm(self, signum, frame) -> None:
        self.stop()
        signal.signal(signal.SIGTERM, self._old_sigterm if self._old_sigterm is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # then die as this process was asked to

    def __enter__(self) -> ServerProcess:
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self.start()
            self.wait_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None


class VLLMServerBackend:
    name = "vllm-server"
    host = "127.0.0.1"

    def __init__(self, options: VllmOptions, batch_size: int, seed: int) -> None:
        self.options = options
        self.batch_size = batch_size
        self.seed = seed
        self.server: ServerProcess | None = None  # the running server, while ``open`` is active

    def fingerprint(self, target: ModelRef) -> dict[str, Any]:
        o = self.options
        return {"backend": "vllm-server", "dtype": o.dtype, "tensor_parallel_size": o.tensor_parallel_size,
                "max_model_len": o.max_model_len, "batch_size": self.batch_size, "seed": self.seed,
                "serve_command": o.serve_command, "extra_args": o.extra_args}

    def command(self, path: Path, port: int, served_name: str) -> list[str]:
        o = self.options
        cmd = [*o.serve_command, str(path), "--host", self.host, "--port", str(port), "--served-model-name", served_name,
               "--tensor-parallel-size", str(o.tensor_parallel_size), "--gpu-memory-utilization",
               str(o.gpu_memory_utilization), "--dtype", o.dtype, "--seed", str(self.seed)]
        if o.max_model_len:
            cmd += ["--max-model-len", str(o.max_model_len)]
        return cmd + list(o.extra_args)

    def max_length(self, path: Path) -> int:
        if self.options.max_model_len:
            return self.options.max_model_len
        try:
            cfg = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return 2048
        return int(cfg.get("max_position_embeddings") or 2048)

    @contextlib.contextmanager
    def open(self, target: ModelRef, log_dir: Path | None = None) -> Iterator[Any]:
        path = checkpoint_path(target, self.name).resolve()
        missing = [m for m in ("aiohttp", "tenacity", "requests") if find_spec(m) is None]
        if missing:
            raise UserError(f"the vllm-server backend needs lm-eval's API extra (missing {missing}): {API_INSTALL}",
                            field="backend", value=self.name)
        if self.options.serve_command[0] == "vllm" and not _which("vllm"):
            raise UserError(f"the vllm-server backend runs `vllm serve`, and vllm is not installed: {VLLM_INSTALL}",
                            field="backend", value=self.name)
        port = free_port(self.host)
        served_name = f"autotune-{path.name}"
        log_path = (log_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / f"vllm-server-{port}.log"
        server = ServerProcess(self.command(path, port, served_name), health_url=f"http://{self.host}:{port}/health",
                               log_path=log_path, startup_timeout_s=self.options.startup_timeout_s,
                               shutdown_timeout_s=self.options.shutdown_timeout_s)
        with server:
            self.server = server
            try:
                from lm_eval.models.openai_completions import LocalCompletionsAPI

                yield LocalCompletionsAPI(base_url=f"http://{self.host}:{port}/v1/completions", model=served_name,
                                          tokenizer=str(path), tokenizer_backend="huggingface",
                                          batch_size=self.batch_size, max_length=self.max_length(path),
                                          num_concurrent=self.options.num_concurrent,
                                          max_retries=self.options.max_retries,
                                          timeout=int(self.options.request_timeout_s), seed=self.seed)
            except Exception as e:
                code = server.proc.poll() if server.proc is not None else None
                if code is not None:
                    raise ServerError(f"the model server died during evaluation (exit code {code}; log {log_path}):\n"
                                      f"{server.log_tail()}") from e
                raise
            finally:
                self.server = None


def _which(cmd: str) -> str | None:
    return shutil.which(cmd)
