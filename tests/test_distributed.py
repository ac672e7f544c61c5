"""Scale-out and fault tolerance on real parts: several `autotune search` processes on one study in a real
PostgreSQL server (127.0.0.1:5432, database `test`; .ci/run starts it when it is installed but stopped) or a
journal file; a worker lost without a trace (heartbeat); a crashed worker (retried once); a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from autotune.testing import tiny_space, wait_for, write_space

pytestmark = pytest.mark.slow

PG_URL = os.environ.get("AUTOTUNE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
LONG_PROXY = {"tokens": 327680, "seq_len": 64, "batch_tokens": 1024}  # ~9 s of training for the tiny model


def _pg_or_skip() -> None:
    try:
        import psycopg2

        psycopg2.connect(PG_URL.replace("+psycopg2", ""), connect_timeout=3).close()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} ({type(e).__name__}); .ci/run starts the local server")


def _search(space: Path, cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autotune.cli", "search", str(space), "--quiet", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _check_no_duplicates_no_losses(study: optuna.Study, root: Path, n: int) -> None:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == n, [(t.number, t.state, t.user_attrs.get("status"), t.user_attrs.get("reason")) for t in trials]
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    run_dirs = [t.user_attrs["run_dir"] for t in complete]
    assert len(set(run_dirs)) == n  # no proposal ran twice
    for d in run_dirs:
        assert (root / d / "result.json").exists()  # no lost result
    owners = {(t.user_attrs["owner"]["host"], t.user_attrs["owner"]["pid"]) for t in complete}
    return owners


@pytest.mark.parametrize("backend", ["postgresql", "journal"])
def test_workers_share_one_study(tmp_path, backend):
    name = f"dist_{backend}_{uuid.uuid4().hex[:8]}"
    space = write_space(tmp_path, tiny_space(name, trials=5))
    if backend == "postgresql":
        _pg_or_skip()
        storage, workers = PG_URL, 3
    else:
        storage, workers = f"journal:{tmp_path / 'study.journal'}", 2
    procs = [_search(space, tmp_path, "--storage", storage) for _ in range(workers)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out + err
        assert "Traceback" not in err
    if backend == "postgresql":
        study = optuna.load_study(study_name=name, storage=PG_URL)
    else:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.journal"))))
    try:
        owners = _check_no_duplicates_no_losses(study, tmp_path / "runs" / name, 5)
        assert len(owners) >= 2  # the work was shared
        # the base model was evaluated once for all workers
        assert len(list((tmp_path / "runs" / name / "base").glob("*/result.json"))) == 1
    finally:
        if backend == "postgresql":
            optuna.delete_study(study_name=name, storage=PG_URL)


def test_lost_worker_is_failed_by_heartbeat_and_retried_once(tmp_path):
    """Worker A's machine "dies" (A and its proxy run are SIGKILLed); worker B, on another host, finds the trial
    silent past the grace period, fails it with the reason, and runs it again."""
    _pg_or_skip()
    name = f"lost_{uuid.uuid4().hex[:8]}"
    spec = tiny_space(name, trials=1, proxy=LONG_PROXY)
    spec["search"].update({"heartbeat_s": 1, "grace_s": 3})
    space = write_space(tmp_path, spec)
    root = tmp_path / "runs" / name
    a = _search(space, tmp_path, "--storage", PG_URL, env={"AUTOTUNE_HOST": "host-a"})
    wait_for(lambda: any(p.stat().st_size > 0 for p in root.glob("trials/*/train_log.jsonl")), proc=a)
    a.send_signal(signal.SIGKILL)
    a.communicate()
    for pid_file in root.glob("trials/*/worker.pid"):  # the machine died: its proxy run too
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    time.sleep(4)  # past the grace period
    b = _search(space, tmp_path, "--storage", PG_URL, env={"AUTOTUNE_HOST": "host-b"})
    out, err = b.communicate(timeout=600)
    assert b.returncode == 0, out + err
    study = optuna.load_study(study_name=name, storage=PG_URL)
    try:
        trials = study.get_trials(deepcopy=False)
        lost, retry = trials[0], trials[1]
        assert lost.state == optuna.trial.TrialState.FAIL and lost.user_attrs["owner"]["host"] == "host-a"
        assert retry.state == optuna.trial.TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
        assert retry.params == lost.params and retry.user_attrs["owner"]["host"] == "host-b"
        status = subprocess.run([sys.executable, "-m", "autotune.cli", "status", str(space), "--storage", PG_URL],
                                cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
        assert "lost: no heartbeat" in status.stdout, status.stdout
    finally:
        optuna.delete_study(study_name=name, storage=PG_URL)


def test_crashed_worker_is_retried_once_and_timeout_fails_the_trial(tmp_path):
    """A proxy run killed from outside (as the OOM killer would) fails its trial as `crashed` and is retried once;
    a run past `search.trial_timeout_s` fails as `timeout`; the study goes on and finishes its budget."""
    name = "faults"
    spec = tiny_space(name, trials=2, proxy=LONG_PROXY)
    space = write_space(tmp_path, spec)
    root = tmp_path / "runs" / name
    proc = _search(space, tmp_path)
    wait_for(lambda: any(p.stat().st_size > 0 for p in root.glob("trials/*/train_log.jsonl"))
              and any(root.glob("trials/*/worker.pid")), proc=proc)
    victim = next(root.glob("trials/*/worker.pid"))
    os.kill(int(victim.read_text()), signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert "crashed" in out
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == optuna.trial.TrialState.FAIL and trials[0].user_attrs["status"] == "crashed"
    assert "retried once" in trials[0].user_attrs["reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 2

    # timeout: a new study whose trials cannot finish in 2 s
    spec = tiny_space("slow", trials=1, proxy=LONG_PROXY)
    spec["search"]["trial_timeout_s"] = 2
    space = write_space(tmp_path / "slow", spec)
    done = subprocess.run([sys.executable, "-m", "autotune.cli", "search", str(space), "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    # its only trial timed out: the study went through its budget, but no trial completed (exit 1, saying so)
    assert done.returncode == 1 and "no trial of study slow completed" in done.stderr, done.stdout + done.stderr
    study = optuna.load_study(study_name="slow", storage=f"sqlite:///{tmp_path / 'runs' / 'slow' / 'study.db'}")
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["status"] == "timeout"
    assert "trial_timeout_s = 2" in t.user_attrs["reason"]
    assert not list((tmp_path / "runs" / "slow").glob("trials/*/worker.pid"))  # the worker was stopped
