"""One contract, every launcher: the local subprocess launcher and the Slurm launcher through submitit's
local executor (no Slurm here; the code path is the same `AutoExecutor` a cluster uses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autotune.config.space import load_space
from autotune.search.launch import TIMED_OUT, LocalLauncher, SubmititLauncher
from autotune.search.study import job_space
from autotune.testing import tiny_space, write_space

LAUNCHERS = {"local": lambda: LocalLauncher(), "submitit-local": lambda: SubmititLauncher(cluster="local", poll_s=0.2)}


def _prepare_job(tmp_path):
    space = load_space(write_space(tmp_path, tiny_space("launch")))
    folder = tmp_path / "job"
    folder.mkdir()
    job = folder / "job.json"
    job.write_text(json.dumps({"kind": "prepare", "space": job_space(space), "space_file": space.source_file}))
    return job


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(LAUNCHERS))
def test_runs_a_job_and_streams_progress(tmp_path, kind):
    job = _prepare_job(tmp_path)
    events: list[dict] = []
    code = LAUNCHERS[kind]().run(job, events.append)
    assert code == 0
    result = json.loads((job.parent / "result.json").read_text())
    assert result["status"] == "ok" and set(result["domains"]) == {"math", "code", "general"}
    assert {"phase": "tokenize", "total": 3} in events  # the space's 3 domains
    assert {"phase": "pre-training data", "total": 2} in events  # the demo base's 2 pre-training sources
    assert any("advance" in e for e in events)


@pytest.mark.parametrize("kind", list(LAUNCHERS))
def test_timeout_stops_the_job(tmp_path, kind, monkeypatch):
    """A job still running at its time limit is stopped and writes no result. An empty AUTOTUNE_HOME makes the
    prepare job long (the demo tokenizer and base are built: seconds); a warm one finishes in about 0.5 s."""
    monkeypatch.setenv("AUTOTUNE_HOME", str(tmp_path / "home"))
    job = _prepare_job(tmp_path)
    assert LAUNCHERS[kind]().run(job, lambda e: None, timeout_s=0.3) == TIMED_OUT
    assert not (job.parent / "result.json").exists()


@pytest.mark.parametrize("kind", list(LAUNCHERS))
def test_a_crashed_job_leaves_no_result_and_a_nonzero_code(tmp_path, kind):
    job = tmp_path / "job.json"
    job.write_text("{ not json")
    assert LAUNCHERS[kind]().run(job, lambda e: None) != 0
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_search_through_the_slurm_launcher(tmp_path):
    spec = tiny_space("slurm", trials=1)
    spec["search"]["launcher"] = {"kind": "slurm", "cluster": "local", "timeout_min": 10}
    space = write_space(tmp_path, spec)
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "search", str(space), "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="slurm", storage=f"sqlite:///{tmp_path / 'runs/slurm/study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    assert list((tmp_path / "runs/slurm/trials").glob("*/submitit/*"))  # it went through submitit


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_search_with_two_data_parallel_processes_per_trial(tmp_path, sharding):
    """`accelerate launch` with 2 processes per trial (CPU, gloo): one result, the whole run's steps logged.
    FSDP (weights sharded over the two): the rungs and the final evaluation see the gathered weights."""
    spec = tiny_space("ddp", trials=1)
    spec["search"]["launcher"] = {"kind": "accelerate", "num_processes": 2, "sharding": sharding}
    if sharding == "fsdp":
        spec["proxy"]["rungs"] = [0.25, 0.5, 1.0]  # rungs after steps 1 and 2 of 4
    space = write_space(tmp_path, spec)
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "search", str(space), "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="ddp", storage=f"sqlite:///{tmp_path / 'runs/ddp/study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    run = tmp_path / "runs/ddp" / study.trials[0].user_attrs["run_dir"]
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and log[-1]["tokens"] == 4096  # both processes' rows counted once
    if sharding == "fsdp":
        import torch
        from safetensors.torch import load_file

        rungs = [json.loads(x)["metrics"]["bpb/math"] for x in (run / "rungs.jsonl").read_text().splitlines()]
        final = json.loads((run / "result.json").read_text())["metrics"]["bpb/math"]
        assert len(rungs) == 2 and len({*rungs, final}) == 3  # the copy got the weights of step 1, 2, then 4
        weights = load_file(run / "checkpoint/model.safetensors")
        base = load_file(Path(json.loads((run / "job.json").read_text())["prepared"]["base"]) / "model.safetensors")
        assert all(weights[k].shape == base[k].shape for k in base)  # whole tensors, not shards
        assert any(not torch.equal(weights[k], base[k]) for k in base)  # trained


_IMPORT_UNDER_CAP = """
import resource
resource.setrlimit(resource.RLIMIT_DATA, (900 * 2**20, resource.RLIM_INFINITY))
import pyarrow.dataset  # datasets imports it, lm-eval imports datasets
try:
    buffer = bytearray(700 * 2**20)  # what the evaluation itself then needs
    print("fits")
except MemoryError:
    print("MemoryError")
"""


@pytest.mark.parametrize("pool", [None, "mimalloc"], ids=["launcher-default", "users-choice"])
def test_a_capped_worker_keeps_its_memory_for_work_after_importing_arrow(pool, monkeypatch):
    """A worker under ``search.launcher.memory_limit`` gets ``ARROW_DEFAULT_MEMORY_POOL=system`` unless the
    user chose a pool: Arrow's default, mimalloc, reserves address space when ``pyarrow.dataset`` is imported
    (1 GiB uncapped), which RLIMIT_DATA counts, so a capped base evaluation failed as out of memory with 0.4 GB
    resident. Real pyarrow under a real 900 MiB cap, in the environment the launcher gives its worker: with
    the launcher's choice 700 MiB still fit; with the user's mimalloc, kept as chosen, they do not."""
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    if pool is not None:
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", pool)
    launcher = LocalLauncher(memory_limit=900 * 2**20)
    assert launcher.env.get("ARROW_DEFAULT_MEMORY_POOL") == ("system" if pool is None else None)
    env = {**os.environ, **launcher.env}  # as LocalLauncher.run builds it
    out = subprocess.run([sys.executable, "-c", _IMPORT_UNDER_CAP], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == ("fits" if pool is None else "MemoryError"), out.stderr[-2000:]
