"""Process life cycle for the processes autotune starts and the commands that start them.

* A child dies with its parent: Linux's ``PR_SET_PDEATHSIG`` makes the kernel send the child SIGTERM when
  the process that started it dies, even by SIGKILL. A model server sets it between fork and exec
  (``set_parent_death_signal`` as ``preexec_fn``); a worker is started through ``python -m autotune.procs
  PARENT_PID COMMAND...``, which sets it, checks that the parent is still there, and execs the command (the
  setting survives exec), so a parent with threads runs no Python between fork and exec. The kernel counts
  the *thread* that forked as the parent: start children from a thread that outlives them (the launchers
  block in the thread that started the worker until it exits).
* SIGTERM (a preempted Slurm or Kubernetes job, ``kill``) is handled as Ctrl-C: ``sigterm_as_interrupt``
  turns it into ``Terminated``, a ``KeyboardInterrupt``, so every clean-up path of Ctrl-C runs; the CLI
  exits 143 (128 + SIGTERM) with one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1


def _prctl():
    """libc's prctl, looked up once at import (a forked child only calls it: no dlopen after fork in a process
    that may have threads); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:  # pragma: no cover - also runs before exec
    """Linux: the kernel sends ``sig`` to this process when its parent (the thread that forked it) dies."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(sig))


def die_with_parent(parent: int) -> None:
    """``set_parent_death_signal``, then stop at once if ``parent`` died before it was set (it is no longer our
    parent: we were handed to init or a subreaper). Not ``ppid == 1``: in a container the parent may be pid 1."""
    set_parent_death_signal()
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def dying_with_parent(command: list[str], python: str = sys.executable) -> list[str]:
    """``command`` run through the trampoline below, so that it dies with this process."""
    return [python, "-m", "autotune.procs", str(os.getpid()), *command]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop as after Ctrl-C. A ``KeyboardInterrupt`` so that every ``except KeyboardInterrupt``
    clean-up (stop the worker's process group, leave the trial resumable) runs for it too."""

    signum = signal.SIGTERM

    def __init__(self) -> None:
        super().__init__("terminated (SIGTERM)")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises ``Terminated`` in the main thread; a second SIGTERM during the clean-up is
    ignored (SIGKILL still ends it). A no-op off the main thread (signals reach only the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up below is not cut short by a second one
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str]) -> None:  # pragma: no cover - replaced by the command it execs
    """``python -m autotune.procs PARENT_PID COMMAND...``: die with PARENT_PID, then become COMMAND."""
    die_with_parent(int(argv[0]))
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
