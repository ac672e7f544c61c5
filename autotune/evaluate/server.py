"""A model server as a child process: started on a free port, healthy before use, stopped on every exit path.

``ServerProcess`` is the life cycle the ``vllm-server`` backend and the warm engine of a study use: own
process group, output to a log file, a health endpoint polled until 200 (failing fast if the process exits),
SIGTERM to the group on stop (SIGKILL after a grace period), a clean stop on Ctrl-C and on SIGTERM to this
process, and on Linux the kernel's ``PR_SET_PDEATHSIG`` so that the server dies with the process that started
it even when that process is killed outright.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from autotune.errors import UserError
from autotune.procs import set_parent_death_signal


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    """Whether ``url`` (a health endpoint) answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


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
                                             start_new_session=True, preexec_fn=set_parent_death_signal,
                                             env={**os.environ, **(self.env or {})})
            except FileNotFoundError:
                raise UserError(f"cannot start the model server: {self.command[0]!r} not found",
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
            if healthy(self.health_url):
                return time.monotonic() - t0
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
