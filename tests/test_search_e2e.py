"""End to end: `autotune search` on the real loop (demo data, a tiny pre-trained Llama, real proxy training,
real lm-eval tasks, a real SQLite Optuna storage), resume, Ctrl-C and a SIGKILLed controller.

Each command runs as a user would run it: a subprocess of the installed CLI, in a scratch working folder.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autotune.testing import run_cli, study_trials, tiny_space, wait_for, write_space

pytestmark = pytest.mark.slow


def run_mtimes(cwd: Path, name: str) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime for p in (cwd / "runs" / name / "trials").glob("*/result.json")}


def test_search_two_trials_then_resume(tmp_path):
    space = write_space(tmp_path, tiny_space("e2e", trials=2))
    t0 = time.time()
    proc = run_cli("search", str(space), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first_run_s = time.time() - t0
    out = proc.stdout
    assert "best feasible" in out or "no trial met" in out
    assert "study e2e" in out and "target" in out and "general" in out

    root = tmp_path / "runs" / "e2e"
    trials = study_trials(tmp_path, "e2e")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        mix = t.user_attrs["proposal"]["mixture"]
        assert sum(mix.values()) == pytest.approx(1.0) and mix["general"] >= 0.1 - 1e-9
        assert set(t.user_attrs["metrics"]) >= {"bpb/math", "bpb/code", "bpb/general", "demo_math_mc/acc"}
        run = root / t.user_attrs["run_dir"]
        log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
        assert len(log) == 4 and set().union(*(e["loss_per_domain"] for e in log)) <= {"math", "code", "general"}
        # every domain got its exact share of the run's tokens, within one sequence (64 tokens)
        trained = json.loads((run / "result.json").read_text())["train"]
        for d, share in mix.items():
            assert abs(trained["tokens_per_domain"][d] - share * trained["tokens"]) <= 64
        assert (run / "checkpoint" / "model.safetensors").exists()
        assert (run / "samples" / "demo_math_mc.jsonl").exists()
    # the prior mixture ran first
    assert trials[0].user_attrs["proposal"]["mixture"] == pytest.approx({"math": 0.3, "code": 0.2, "general": 0.5})

    # the checkpoint is a plain HF checkpoint
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root / trials[1].user_attrs["run_dir"] / "checkpoint")
    assert model.config.num_hidden_layers == 2

    with open(root / "ratios.csv") as f:
        ratios = list(csv.DictReader(f))
    with open(root / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    assert len(ratios) == len(metrics) == 2
    assert list(ratios[0]) == ["run_id", "name", "math", "code", "general"]  # as OLMix's fit --from-csv reads
    assert list(metrics[0])[:2] == ["run_id", "name"] and {"bpb/math", "target", "general"} <= set(metrics[0])

    # rerunning the same command finds the study finished: no trial runs again
    before = run_mtimes(tmp_path, "e2e")
    t1 = time.time()
    again = run_cli("search", str(space), "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert run_mtimes(tmp_path, "e2e") == before
    assert len(study_trials(tmp_path, "e2e")) == 2
    assert time.time() - t1 < first_run_s  # nothing trained or evaluated

    # a larger budget adds only the missing trial
    more = run_cli("search", str(space), "--quiet", "--trials", "3", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    after = run_mtimes(tmp_path, "e2e")
    assert len(after) == 3 and all(after[k] == v for k, v in before.items())

    status = run_cli("status", str(space), cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.count("complete") == 3

    # a changed space under the same name is refused, and the finished study is untouched
    changed = write_space(tmp_path / "changed", tiny_space("e2e", trials=2, proxy={"tokens": 8192, "seq_len": 64,
                                                                                     "batch_tokens": 1024}))
    refused = run_cli("search", str(changed), "--quiet", cwd=tmp_path)
    assert refused.returncode == 2 and "different space (changed: proxy)" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert run_mtimes(tmp_path, "e2e") == after


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_interrupted_study_resumes_without_rerunning_finished_trials(tmp_path, sig):
    name = f"stop{sig.value}"
    # longer proxy runs (~35K tok/s here: about 9 s of training) so that the signal lands while trial 1 trains
    space = write_space(tmp_path, tiny_space(name, trials=2, proxy={"tokens": 327680, "seq_len": 64, "batch_tokens": 1024}))
    proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", "search", str(space), "--quiet"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trials_dir = tmp_path / "runs" / name / "trials"

    def second_trial_training() -> bool:
        done = list(trials_dir.glob("*/result.json"))
        logs = [p for p in trials_dir.glob("*/train_log.jsonl") if not (p.parent / "result.json").exists()]
        return len(done) == 1 and any(p.stat().st_size > 0 for p in logs)

    wait_for(second_trial_training, proc=proc)
    finished = run_mtimes(tmp_path, name)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err
        # the worker was stopped with the controller
        time.sleep(0.5)
        assert not list(trials_dir.glob("*/worker.pid"))
    else:
        assert proc.returncode == -signal.SIGKILL

    resumed = run_cli("search", str(space), "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    now = run_mtimes(tmp_path, name)
    assert len(now) == 2
    for k, v in finished.items():
        assert now[k] == v  # the finished trial was not run again
    trials = study_trials(tmp_path, name)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    interrupted = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(interrupted) == 1 and interrupted[0].user_attrs["status"] == "interrupted"
    # the interrupted proposal is the one that ran again
    assert interrupted[0].user_attrs["proposal"] in [t.user_attrs["proposal"] for t in complete]
