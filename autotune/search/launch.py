"""Launchers: how a job (``python -m autotune.search.worker JOB.json``) gets a process.

Life cycle: ``run(job_file, on_progress)`` starts the worker, feeds its progress lines to
``on_progress`` until it exits, and returns its exit code; the result is the ``result.json`` the worker
wrote beside the job file. A worker that dies (segfault, kill) leaves no result: the caller fails the
trial with the exit code as the reason. Ctrl-C (and SIGTERM, as ``autotune.procs.Terminated``) stops the
worker's whole process group, then re-raises. A local worker dies with its controller even when the
controller is SIGKILLed (``autotune.procs``: the kernel's parent-death signal), so no trial outlives it.
Slurm (submitit) and ``accelerate launch`` join this protocol with the scale-out work.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from autotune.procs import dying_with_parent
from autotune.search.protocol import MEMORY_LIMIT_ENV, PROGRESS_PREFIX

ProgressCallback = Callable[[dict], None]

# glibc returns freed memory to the OS eagerly by default, which costs the tiny-model CPU loop ~30%
# throughput (measured: 17.5K -> 25K tok/s for a 0.4M-param Llama on 2 threads with these raised).
_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
               # busy-waiting OpenMP threads starve other processes on a small machine (10x slowdowns seen)
               "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}


def capped_allocators() -> dict[str, str]:
    """What a worker under a memory cap (RLIMIT_DATA, which counts reserved address space) needs: Arrow's
    default allocator, mimalloc, reserves 1 GiB of address space when ``pyarrow.dataset`` is imported (by
    ``datasets``, which lm-eval imports), so under a 1.5 GiB cap the base evaluation failed as out of memory
    with 0.4 GB resident; the system allocator reserves nothing up front. A pool the user chose is kept."""
    return {} if "ARROW_DEFAULT_MEMORY_POOL" in os.environ else {"ARROW_DEFAULT_MEMORY_POOL": "system"}


TIMED_OUT = -1000  # run()'s return value when the job ran past its time limit and was stopped


class Launcher(Protocol):
    def run(self, job_file: Path, on_progress: ProgressCallback, timeout_s: float | None = None) -> int: ...


class LocalLauncher:
    """One subprocess per job on this machine; stderr goes to ``worker.log`` beside the job file.

    The worker starts through ``python -m autotune.procs``, which makes it die with this process (SIGTERM
    from the kernel when the thread that started it is gone); ``run`` blocks in that thread until it exits.

    ``prefix`` runs the worker under another launcher, e.g. ``accelerate_prefix(4)``: ``accelerate launch``
    with 4 data-parallel processes per trial (the process group is stopped as one).
    """

    def __init__(self, python: str = sys.executable, prefix: list[str] | None = None,
                 memory_limit: int | None = None) -> None:
        self.python, self.prefix = python, prefix or []
        # each worker process caps its own memory (worker.apply_memory_limit): no preexec_fn in a threaded parent
        self.env = {MEMORY_LIMIT_ENV: str(memory_limit), **capped_allocators()} if memory_limit else {}

    def command(self, job_file: Path) -> list[str]:
        return dying_with_parent([self.python, *self.prefix, "-m", "autotune.search.worker", str(job_file)], self.python)

    def run(self, job_file: Path, on_progress: ProgressCallback, timeout_s: float | None = None) -> int:
        env = {**os.environ, **_WORKER_ENV, **self.env}
        log = open(job_file.parent / "worker.log", "ab")  # noqa: SIM115  (closed below)
        proc = subprocess.Popen(self.command(job_file), stdout=subprocess.PIPE, stderr=log, env=env,
                                start_new_session=True, text=True, bufsize=1)
        pid_file = job_file.parent / "worker.pid"
        pid_file.write_text(str(proc.pid))
        fired = threading.Event()

        def on_timeout() -> None:
            fired.set()
            _kill_group(proc)

        timer = threading.Timer(timeout_s, on_timeout) if timeout_s else None
        try:
            if timer:
                timer.start()
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(PROGRESS_PREFIX):
                    on_progress(json.loads(line[len(PROGRESS_PREFIX):]))
                else:
                    log.write(line.encode())
            code = proc.wait()
            return TIMED_OUT if fired.is_set() else code
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            if timer:
                timer.cancel()
            log.close()
            pid_file.unlink(missing_ok=True)


def accelerate_prefix(num_processes: int, mixed_precision: str = "no") -> list[str]:
    """``python -m accelerate.commands.launch ...`` before ``-m autotune.search.worker``: torchrun underneath (its
    ``--cpu`` launcher needs MPI beyond one process); the worker picks CUDA/NCCL or CPU/gloo itself."""
    multi = ["--multi_gpu"] if num_processes > 1 else []
    return ["-m", "accelerate.commands.launch", *multi, "--num_processes", str(num_processes), "--num_machines", "1",
            "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]


class SubmititLauncher:
    """Each job as a Slurm job through submitit (``cluster="local"``: submitit's local executor, for tests).

    The worker runs in the job's own process on a compute node; the controller follows its progress file
    (``progress.jsonl`` beside the job file) and cancels the job on timeout or Ctrl-C. Executor parameters
    (partition, gpus_per_node, timeout_min, ...) pass through as submitit's ``update_parameters``.
    """

    def __init__(self, cluster: str | None = None, poll_s: float = 0.5, **params: object) -> None:
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ImportError("the slurm launcher needs submitit: pip install 'autotune[slurm]'") from None
        self.cluster, self.poll_s, self.params = cluster, poll_s, params

    def run(self, job_file: Path, on_progress: ProgressCallback, timeout_s: float | None = None) -> int:

        import submitit

        folder = job_file.parent
        progress_file = folder / "progress.jsonl"
        progress_file.unlink(missing_ok=True)
        executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=self.cluster)
        executor.update_parameters(**self.params)
        env = {**_WORKER_ENV, "AUTOTUNE_PROGRESS_FILE": str(progress_file)}
        job = executor.submit(_submitit_entry, str(job_file), env)
        start, offset = time.monotonic(), 0
        try:
            while True:
                done = job.done()
                offset = _follow(progress_file, offset, on_progress)
                if done:
                    break
                if timeout_s and time.monotonic() - start > timeout_s:
                    job.cancel()
                    return TIMED_OUT
                time.sleep(self.poll_s)
            try:
                return int(job.result() or 0)
            except Exception as e:  # noqa: BLE001  (the job died: no result.json; the log says why)
                with open(folder / "worker.log", "a") as log:
                    log.write(f"submitit job {job.job_id} failed: {e}\n")
                return 1
        except BaseException:
            job.cancel()
            raise


def _submitit_entry(job_file: str, env: dict[str, str]) -> int:
    """Runs on the compute node: the worker, with the environment a local worker gets."""
    os.environ.update(env)
    from autotune.search.worker import main  # the worker's imports (numpy, the evaluator) only on the node

    return main(job_file)


def _follow(path: Path, offset: int, on_progress: ProgressCallback) -> int:
    """Feed complete new lines of a progress file to ``on_progress``; returns the new offset."""
    if not path.exists():
        return offset
    with open(path) as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk[: chunk.rfind("\n") + 1]
    for line in complete.splitlines():
        if line.startswith(PROGRESS_PREFIX):
            on_progress(json.loads(line[len(PROGRESS_PREFIX):]))
    return offset + len(complete.encode())


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on a run folder (``flock`` on ``.lock``), held while its job runs.

    Two workers of one study that need the same folder (the base model, a duplicate proposal) run it
    once: the second waits, then finds the first one's result. Released when the process dies.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def folder_locked(folder: Path) -> bool:
    """True if some live process holds the folder's lock (its job is running)."""
    lock = folder / ".lock"
    if not lock.exists():
        return False
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def kill_orphan(folder: Path) -> bool:
    """Kill a worker left running in ``folder`` by a controller that died (SIGKILL); True if one was."""
    pid_file = folder / "worker.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ValueError, OSError):
        pid_file.unlink(missing_ok=True)
        return False
    if b"autotune.search.worker" not in cmdline and b"autotune.worker" not in cmdline:  # the pid was reused
        # by something else (autotune.worker: a worker started by autotune before the search/ package)
        pid_file.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    return True
