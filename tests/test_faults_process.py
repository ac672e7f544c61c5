"""Process faults on the real loop: real signals to a real `autotune search` and its real worker processes, a
real full filesystem (a small tmpfs), two controllers on one SQLite study.

After each fault: no worker of the study is left (no process whose command line names the study folder), nothing
finished is lost (complete trials stay complete, their results on disk) and nothing finished runs again (their
``result.json`` keep their mtimes). Two controllers on one PostgreSQL study (and a journal file) are in
tests/test_distributed.py (``test_workers_share_one_study``); a SIGKILLed worker (crashed, retried once) is
there too (``test_crashed_worker_is_retried_once_and_timeout_fails_the_trial``); Ctrl-C and a SIGKILLed
controller between trials in tests/test_search_e2e.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from autotune.testing import run_cli, study_trials, tiny_space, tiny_suite, wait_for, wait_until, write_space

pytestmark = [pytest.mark.slow, pytest.mark.faults]

# ~128 steps of the tiny model: a few seconds of training, long enough to land a signal in it
PROXY = {"tokens": 131072, "seq_len": 64, "batch_tokens": 1024}
COMPLETE = optuna.trial.TrialState.COMPLETE


_STARTED: list[subprocess.Popen] = []  # controllers this module started: killed after each test, whatever happened


def _search(space: Path, cwd: Path, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", "search", str(space), "--quiet", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    _STARTED.append(proc)
    return proc


def _workers(root: Path) -> list[int]:
    """Pids of live processes whose command line names a file under the study folder ``root`` (its workers,
    and anything they started under the same command line)."""
    needle = str(root).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def _assert_no_worker_left(root: Path, within_s: float = 10) -> None:
    assert wait_until(lambda: not _workers(root), timeout=within_s), \
        f"workers left running: {[(p, Path(f'/proc/{p}/cmdline').read_bytes()) for p in _workers(root)]}"


def _finished(root: Path) -> dict[str, float]:
    """mtime of every finished run's result.json (trials and the base), by folder."""
    return {f"{p.parent.parent.name}/{p.parent.name}": p.stat().st_mtime
            for p in [*root.glob("trials/*/result.json"), *root.glob("base/*/result.json")]}


def _training(root: Path, done: int) -> bool:
    """``done`` trials finished and another one training (its train log has lines)."""
    finished = list(root.glob("trials/*/result.json"))
    logs = [p for p in root.glob("trials/*/train_log.jsonl") if not (p.parent / "result.json").exists()]
    return len(finished) == done and any(p.stat().st_size > 0 for p in logs)


def _evaluating(root: Path) -> bool:
    """A trial saved its checkpoint and is being evaluated (no result yet)."""
    return any(not (p.parent.parent / "result.json").exists() for p in root.glob("trials/*/checkpoint/model.safetensors"))


def _kill_leftovers(root: Path) -> None:
    """A failing test leaves no stray process behind for the next one: its controllers, then their workers."""
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    for pid in _workers(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_to_the_controller_during_preparation_stops_its_worker(tmp_path):
    """A preempted job (SIGTERM) while the prepare job runs: one line saying so, exit 143, the worker stopped
    with its pid file; the rerun finishes the study."""
    name = "term_prepare"
    space = write_space(tmp_path, tiny_space(name, trials=1, proxy={"tokens": 4096, "seq_len": 64, "batch_tokens": 1024}))
    root = tmp_path / "runs" / name
    proc = _search(space, tmp_path)
    try:
        wait_for(lambda: (root / "prepare" / "worker.pid").exists() and _workers(root), proc=proc, timeout=120)
        time.sleep(0.5)  # the worker is importing / preparing
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, (proc.returncode, out, err)
        assert "terminated" in err and "run the same command again" in err and "Traceback" not in err
        _assert_no_worker_left(root)
        assert not list(root.glob("**/worker.pid"))
    finally:
        _kill_leftovers(root)
    resumed = run_cli("search", str(space), "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [t.state for t in study_trials(tmp_path, name)] == [COMPLETE]


def test_sigterm_while_training_then_sigkill_while_evaluating_loses_and_reruns_nothing(tmp_path):
    """Trial 0 finishes; SIGTERM to the controller and its worker at once (as Slurm preempts a job) while
    trial 1 trains: exit 143, the trial interrupted (not crashed), no process left. The rerun is SIGKILLed
    while trial 1 is evaluated: its worker dies with it (parent-death signal), not minutes later. The third
    run finishes: trial 0 and the base were not run again, two trials complete."""
    name = "term_train"
    space = write_space(tmp_path, tiny_space(name, trials=2, proxy=PROXY), tiny_suite(limit=5))
    root = tmp_path / "runs" / name
    try:
        proc = _search(space, tmp_path)
        wait_for(lambda: _training(root, done=1), proc=proc, timeout=400)
        finished = _finished(root)
        pids = [int(p.read_text()) for p in root.glob("trials/*/worker.pid")]
        proc.send_signal(signal.SIGTERM)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # a worker that has just finished
                os.kill(pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, (proc.returncode, out, err)
        assert "terminated" in err and "Traceback" not in err, err
        _assert_no_worker_left(root)
        trials = study_trials(tmp_path, name)
        assert [t.state for t in trials][:1] == [COMPLETE]
        assert trials[1].user_attrs["status"] == "interrupted", trials[1].user_attrs
        assert not [t for t in trials if t.user_attrs.get("status") == "crashed"]

        proc = _search(space, tmp_path)
        wait_for(lambda: _evaluating(root), proc=proc, timeout=400)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        _assert_no_worker_left(root, within_s=10)

        resumed = run_cli("search", str(space), "--quiet", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        _assert_no_worker_left(root)
        now = _finished(root)
        for k, v in finished.items():
            assert now[k] == v, f"{k} ran again"
        complete = [t for t in study_trials(tmp_path, name) if t.state == COMPLETE]
        assert len(complete) == 2
        for t in complete:
            assert (root / t.user_attrs["run_dir"] / "result.json").exists()
    finally:
        _kill_leftovers(root)


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs (root only): a real filesystem that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Write zeros to ``folder/filler`` until the filesystem is full."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for block in (1 << 20, 4096, 1):  # then the last partial blocks
            try:
                while f.write(b"\0" * block):
                    pass
            except OSError:
                pass
    return filler


def test_full_disk_stops_the_study_with_a_message_and_the_rerun_resumes(tmp_path, small_disk):
    """runs/ on a small filesystem that fills while trial 0 trains: one line naming the full disk (exit 4), no
    traceback, no worker left, the trial not failed as `crashed` (nor retried); with space freed the rerun
    finishes it without evaluating the base again."""
    name = f"full_{uuid.uuid4().hex[:6]}"
    spec = tiny_space(name, trials=1, proxy=PROXY)
    spec["search"]["runs_dir"] = str(small_disk / "runs")
    space = write_space(tmp_path, spec, tiny_suite(limit=5))
    root = small_disk / "runs" / name
    try:
        proc = _search(space, tmp_path)
        wait_for(lambda: _training(root, done=0), proc=proc, timeout=400)
        base = _finished(root)
        filler = _fill(small_disk)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 4, (proc.returncode, out, err)
        assert "no space left on device" in err and "run the same command again" in err and "Traceback" not in err, err
        assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1, err  # (and heartbeat warnings)
        _assert_no_worker_left(root)
        filler.unlink()
        trials = _trials(root, name)
        assert not [t for t in trials if t.user_attrs.get("status") == "crashed"], [t.user_attrs for t in trials]
        assert not [t for t in trials if t.user_attrs.get("retry_of") is not None]

        resumed = run_cli("search", str(space), "--quiet", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert [t.state for t in _trials(root, name) if t.state == COMPLETE] == [COMPLETE]
        assert _finished(root)[next(iter(base))] == next(iter(base.values()))  # the base was not evaluated again
    finally:
        _kill_leftovers(root)


def _trials(root: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'study.db'}").get_trials(deepcopy=False)


def test_two_controllers_share_one_sqlite_study(tmp_path):
    """Two `autotune search` processes on one SQLite study (the default storage): the budget is filled once, no
    proposal runs twice, the base model is evaluated once, both exit 0."""
    name = "two_sqlite"
    space = write_space(tmp_path, tiny_space(name, trials=3), tiny_suite(limit=5))
    root = tmp_path / "runs" / name
    try:
        procs = [_search(space, tmp_path) for _ in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, out + err
            assert "Traceback" not in err
        trials = study_trials(tmp_path, name)
        complete = [t for t in trials if t.state == COMPLETE]
        assert len(complete) == 3, [(t.number, t.state, t.user_attrs.get("status")) for t in trials]
        assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        assert len({t.user_attrs["run_dir"] for t in complete}) == 3
        assert len(list(root.glob("base/*/result.json"))) == 1
        _assert_no_worker_left(root)
    finally:
        _kill_leftovers(root)


def test_a_token_cache_damaged_mid_session_is_a_crash_not_a_failure():
    """A token file cut after the prepare job checked it is not the trial's fault: recorded ``crashed``
    (retried once; the next session's prepare job rebuilds the cache), never ``failed`` for good."""
    from autotune.data.prepare import DamagedCache
    from autotune.search.worker import _failed

    result = _failed(DamagedCache("damaged token cache /x: /x/train.bin is 4000 bytes, its manifest says 8000"))
    assert result.status == "crashed" and "train.bin" in result.reason
