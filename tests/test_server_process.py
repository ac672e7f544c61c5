"""The model-server life cycle (``autotune.evaluate.server.ServerProcess``) on a cheap real server.

Python's own ``http.server`` plays the server here: the mechanics (start in its own process group, health
wait, stop on Ctrl-C, on SIGTERM, a server that exits early) do not depend on what it serves, and it starts
in a fraction of a second. The same life cycle against real vLLM servers, including SIGKILL of the
evaluating process, is in ``tests/test_vllm.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest

from autotune.evaluate.backends import Checkpoint
from autotune.evaluate.harness import EvalOptions, run_suite
from autotune.evaluate.server import ServerError, ServerProcess, free_port
from autotune.evaluate.suite import load_suite
from autotune.testing import alive, demo_suite, set_offline, tiny_checkpoint, wait_until

set_offline()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def gone(pid: int) -> bool:
    return wait_until(lambda: not alive(pid), timeout=15)


def _http_server(tmp_path, port: int, startup_timeout_s: float = 30, health: str = "/") -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(tmp_path)],
                         health_url=f"http://127.0.0.1:{port}{health}", log_path=tmp_path / "server.log",
                         startup_timeout_s=startup_timeout_s, shutdown_timeout_s=5)


def test_server_is_healthy_in_the_block_and_stopped_after(tmp_path):
    port = free_port()
    server = _http_server(tmp_path, port)
    with server:
        assert not port_free(port) and alive(server.pid)
    assert gone(server.pid) and port_free(port)


def test_health_wait_times_out_and_stops_the_server(tmp_path):
    port = free_port()
    server = _http_server(tmp_path, port, startup_timeout_s=2, health="/no-such-page")  # 404 forever
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="not ready after 2 s"):
        with server:
            pass
    assert time.monotonic() - t0 < 20
    assert gone(server.pid) and port_free(port)


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


def test_server_that_exits_early_is_reported_with_its_log(tmp_path):
    import yaml

    s = demo_suite(limit=2, vllm={"serve_command": [sys.executable, "-c",
                                                    "import sys; print('CUDA out of memory'); sys.exit(3)"]})
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(s))
    suite = load_suite(tmp_path / "suite.yaml")
    with pytest.raises(ServerError, match=r"(?s)exited with code 3 before it was ready.*CUDA out of memory"):
        run_suite(Checkpoint(tiny_checkpoint()), suite, out_dir=tmp_path / "out",
                  options=EvalOptions(backend="vllm-server", use_cache=False, allow_code_execution=True))  # a custom serve_command
