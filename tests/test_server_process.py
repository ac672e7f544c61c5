"""The `vllm-server` backend's life cycle, against a stand-in for `vllm serve`.

vLLM cannot run on these CPU-only machines, so `tests/standin_vllm_server.py` plays the server: a real
process started by the backend exactly as `vllm serve` would be (checkpoint, --host, --port,
--served-model-name, ... on its command line), speaking vLLM's HTTP endpoints (/health, /v1/models,
/v1/completions with echo + logprobs) and backed by the same tiny HF checkpoint. lm-eval's real
`local-completions` client scores through it. Covered: start on a free port, health wait (and its
timeout), scoring (equal to the hf backend), shutdown on success, on a failing task, on a server that
dies, on Ctrl-C (in the block, and of the `autotune eval` process), on SIGTERM (what a launcher sends a
worker) and on SIGKILL of the evaluating process: no process is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from autotune.evaluate.backends import Checkpoint, ServerError, ServerProcess, VLLMServerBackend, free_port
from autotune.evaluate.harness import EvalOptions, run_suite
from autotune.evaluate.suite import load_suite
from autotune.testing import STANDIN, alive, demo_suite, set_offline, tiny_checkpoint, wait_until

set_offline()


@pytest.fixture(scope="module")
def ckpt():
    return tiny_checkpoint()


def server_suite(tmp_path, *standin_args: str, limit: int = 6, **vllm) -> tuple:
    s = demo_suite(limit=limit, vllm={"serve_command": [sys.executable, str(STANDIN), *standin_args],
                                      "startup_timeout_s": 60, "shutdown_timeout_s": 10, **vllm})
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(s, sort_keys=False))
    return load_suite(path), path


class SpyBackend(VLLMServerBackend):
    """The real backend, remembering the server it started (pid and port) for the checks."""

    started: list = []

    def open(self, target, log_dir=None):
        cm = super().open(target, log_dir)
        outer = self

        class _Spy:
            def __enter__(self_inner):
                lm = cm.__enter__()
                SpyBackend.started.append((outer.server.pid, int(outer.server.health_url.split(":")[2].split("/")[0])))
                return lm

            def __exit__(self_inner, *exc):
                return cm.__exit__(*exc)

        return _Spy()


@pytest.fixture
def spy(monkeypatch):
    import autotune.evaluate.backends as backends

    SpyBackend.started = []
    real = backends.make_backend

    def make(name, suite):
        return SpyBackend(suite.vllm, suite.batch_size, suite.seed.torch or 0) if name == "vllm-server" else real(name, suite)

    monkeypatch.setattr("autotune.evaluate.harness.make_backend", make)
    return SpyBackend.started


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def gone(pid: int) -> bool:
    return wait_until(lambda: not alive(pid), timeout=15)


def test_scores_through_the_server_equal_hf_and_the_server_stops(ckpt, tmp_path, spy):
    suite, _ = server_suite(tmp_path)
    hf = run_suite(Checkpoint(ckpt), suite, out_dir=tmp_path / "hf", options=EvalOptions(use_cache=False))
    served = run_suite(Checkpoint(ckpt), suite, out_dir=tmp_path / "out",
                       options=EvalOptions(backend="vllm-server", use_cache=False))
    (pid, port), = spy
    assert gone(pid) and port_free(port)
    for key, value in hf.metrics.items():
        if key.endswith(("/acc", "/exact_match", ":chance")):
            assert served.metrics[key] == value, key
        else:  # one sequence at a time on the server, padded batches in HFLM: float rounding only
            assert served.metrics[key] == pytest.approx(value, rel=1e-5), key
    def generations(folder):
        return [json.loads(x)["resps"] for x in (folder / "samples" / "demo_math_gen.jsonl").read_text().splitlines()]

    assert generations(tmp_path / "out") == generations(tmp_path / "hf") and len(generations(tmp_path / "hf")) == 6
    log = next((tmp_path / "out").glob("vllm-server-*.log")).read_text()
    assert "POST /v1/completions" in log
    assert served.meta["backend"] == "vllm-server"


def test_health_wait_times_out_and_stops_the_server(ckpt, tmp_path):
    suite, _ = server_suite(tmp_path, "--never-ready", startup_timeout_s=3)
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="not ready after 3 s"):
        run_suite(Checkpoint(ckpt), suite, out_dir=tmp_path / "out", options=EvalOptions(backend="vllm-server", use_cache=False))
    assert time.monotonic() - t0 < 30
    assert "stand-in vllm server on" in next((tmp_path / "out").glob("vllm-server-*.log")).read_text()
    assert wait_until(lambda: not _standins("--never-ready"), timeout=15)


def _http_server(tmp_path, port: int) -> ServerProcess:
    """A cheap server for the life-cycle mechanics: python's http.server, healthy once it serves '/'."""
    return ServerProcess([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(tmp_path)],
                         health_url=f"http://127.0.0.1:{port}/", log_path=tmp_path / "server.log",
                         startup_timeout_s=30, shutdown_timeout_s=5)


def test_server_stops_on_ctrl_c_inside_the_block(tmp_path):
    port = free_port()
    server = _http_server(tmp_path, port)
    with pytest.raises(KeyboardInterrupt):
        with server:
            assert not port_free(port)
            raise KeyboardInterrupt
    assert gone(server.pid) and port_free(port)


def test_sigterm_stops_the_server_then_reaches_the_old_handler(tmp_path):
    """A launcher stops a worker with SIGTERM: the server goes first, then the process's own handling runs."""

    class Terminated(Exception):
        pass

    def old_handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, old_handler)
    try:
        port = free_port()
        server = _http_server(tmp_path, port)
        with pytest.raises(Terminated):
            with server:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler interrupts this
        assert gone(server.pid) and port_free(port)
        assert signal.getsignal(signal.SIGTERM) is old_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_server_that_exits_early_is_reported_with_its_log(ckpt, tmp_path):
    suite, _ = server_suite(tmp_path / "s", limit=2)
    suite = suite.model_copy(update={"vllm": suite.vllm.model_copy(update={
        "serve_command": [sys.executable, "-c", "import sys; print('CUDA out of memory'); sys.exit(3)"]})})
    with pytest.raises(ServerError, match=r"(?s)exited with code 3 before it was ready.*CUDA out of memory"):
        run_suite(Checkpoint(ckpt), suite, out_dir=tmp_path / "out", options=EvalOptions(backend="vllm-server", use_cache=False))


@pytest.mark.slow
def test_failing_task_stops_the_server(ckpt, tmp_path, spy):
    suite, _ = server_suite(tmp_path, "--fail-after", "1", max_retries=1)
    with pytest.raises(Exception) as e:
        run_suite(Checkpoint(ckpt), suite, out_dir=tmp_path / "out", options=EvalOptions(backend="vllm-server", use_cache=False))
    assert "500" in str(e.value) or "Server Error" in str(e.value)
    (pid, port), = spy
    assert gone(pid) and port_free(port)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_interrupted_eval_leaves_no_server_behind(ckpt, tmp_path, sig):
    pid_file = tmp_path / "server.pid"
    _, path = server_suite(tmp_path, "--request-delay", "0.3", "--pid-file", str(pid_file), limit=20)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "autotune.cli.eval", str(ckpt), "--suite", str(path),
                             "--backend", "vllm-server", "--no-cache", "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})

    def serving() -> bool:
        logs = list(out.glob("vllm-server-*.log"))
        return bool(logs) and "ready" in logs[0].read_text()

    assert wait_until(serving, timeout=90), proc.stderr.read() if proc.poll() is not None else "not ready"
    server_pid = int(pid_file.read_text())
    assert alive(server_pid)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}[sig], err
    if sig == signal.SIGINT:
        assert "interrupted" in err and "Traceback" not in err
    # SIGKILL leaves no chance to clean up: the kernel's parent-death signal stops the server
    assert gone(server_pid), f"stand-in server {server_pid} survived {sig.name}"


def _standins(marker: str) -> list[int]:
    """Live stand-in server processes serving ``marker`` (a checkpoint path)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if any(STANDIN.name.encode() in c for c in cmd) and marker.encode() in b" ".join(cmd) and alive(int(d)):
                out.append(int(d))
    return out
