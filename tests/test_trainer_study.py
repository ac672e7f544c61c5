"""Issue 3 through the whole loop: multi-phase mixtures, 1-sqrt decay re-warmed from the base run's final
LR, and a diverging or out-of-memory trial that fails alone while the study goes on (real CLI, real training
and lm-eval)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest

from autotune.data.mixture import step_counts
from autotune.testing import run_cli, study_trials, tiny_space, write_space

pytestmark = pytest.mark.slow


def test_phases_decay_shape_and_start_lr_from_base(tmp_path):
    space = tiny_space("phased", trials=2,
                       mixture={"general": {"min": 0.1}, "prior": {"math": 0.3, "code": 0.2, "general": 0.5},
                                "phases": [{"until": 0.5, "shares": {"general": 1.0}}]},
                       schedule={"kind": "wsd", "peak_lr": {"low": 1e-3, "high": 1e-2, "log": True},
                                 "decay_shape": ["1-sqrt"], "decay_fraction": 0.5, "warmup_fraction": 0.25,
                                 "start_lr": "base"},
                       proxy={"tokens": 8192, "seq_len": 64, "batch_tokens": 1024, "seed": 0, "max_epochs": 4})
    proc = run_cli("search", str(write_space(tmp_path, space)), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = tmp_path / "runs" / "phased"
    prep = json.loads((root / "prepare" / "result.json").read_text())
    base_log = Path(prep["base"]) / "pretrain_log.jsonl"
    base_final = json.loads(base_log.read_text().splitlines()[-1])["lr"]
    assert prep["base_final_lr"] == pytest.approx(base_final) and base_final > 0
    trials = study_trials(tmp_path, "phased")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        run = root / t.user_attrs["run_dir"]
        log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
        assert len(log) == 8
        assert all(set(e["loss_per_domain"]) == {"general"} for e in log[:4])  # phase 1: replay only
        mix = t.user_attrs["proposal"]["mixture"]
        drawn = {d for counts in step_counts(mix, 16, 4) for d, n in counts.items() if n}  # a tiny share may get no row
        assert set().union(*(e["loss_per_domain"] for e in log[4:])) == drawn and "general" in drawn
        peak = t.user_attrs["proposal"]["schedule"]["peak_lr"]
        assert log[0]["lr"] == pytest.approx(base_final)  # re-warmed from where the base run ended
        assert log[2]["lr"] == pytest.approx(peak) and log[3]["lr"] == pytest.approx(peak)
        # 1-sqrt decay over the last 4 steps: lr = peak * (1 - sqrt(k / 4)), k = 1..4
        assert [e["lr"] for e in log[4:]] == pytest.approx([peak * (1 - math.sqrt(k / 4)) for k in range(1, 5)])
        trained = json.loads((run / "result.json").read_text())["train"]
        for d in ("math", "code"):  # the searched mixture covers the second half of the run only
            assert abs(trained["tokens_per_domain"][d] - mix[d] * trained["tokens"] / 2) <= 64
        assert set(trained["epochs_per_domain"]) == {"math", "code", "general"}
        assert trained["start_lr"] == pytest.approx(base_final)
        assert not (run / "train_state").exists()  # removed once the checkpoint is written


def test_a_diverging_trial_fails_alone_and_the_study_goes_on(tmp_path):
    space = tiny_space("nan", trials=2, schedule={"kind": "constant", "peak_lr": 1.0e6, "warmup_fraction": 0.0})
    proc = run_cli("search", str(write_space(tmp_path, space)), "--quiet", cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    trials = study_trials(tmp_path, "nan")
    assert len(trials) == 2  # the second trial ran after the first diverged
    for t in trials:
        assert t.state == optuna.trial.TrialState.FAIL
        assert t.user_attrs["status"] == "diverged" and "loss is nan" in t.user_attrs["reason"].lower()
    status = run_cli("status", str(tmp_path / "space.yaml"), cwd=tmp_path)
    assert status.stdout.count("diverged") >= 2


def test_long_context_knobs_are_searched(tmp_path):
    space = tiny_space("ctx", trials=3, context={"seq_len": [32, 128], "rope_theta": [10000.0, 500000.0]},
                       search={"sampler": "random", "trials": 3, "storage": "sqlite"})
    proc = run_cli("search", str(write_space(tmp_path, space)), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = tmp_path / "runs" / "ctx"
    trials = study_trials(tmp_path, "ctx")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert trials[0].params["context.seq_len"] == 32 and trials[0].params["context.rope_theta"] == 10000.0  # prior
    for t in trials:
        ctx = t.user_attrs["proposal"]["context"]
        run = root / t.user_attrs["run_dir"]
        trained = json.loads((run / "result.json").read_text())["train"]
        assert trained["seq_len"] == ctx["seq_len"] and trained["seqs_per_step"] * ctx["seq_len"] == 1024
        assert trained["tokens"] == 4 * 1024
        cfg = json.loads((run / "checkpoint" / "config.json").read_text())
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
        assert theta == ctx["rope_theta"]
        assert cfg["max_position_embeddings"] >= ctx["seq_len"]
    # the report's parameter plots (importances, slices) take the searched context knobs too
    from autotune.report.figures import display_study
    from autotune.report.load import load_study_data

    shown = display_study(load_study_data(root)).trials
    assert [t.params["context.seq_len"] for t in shown] == [str(t.user_attrs["proposal"]["context"]["seq_len"])
                                                           for t in trials]


def test_a_trial_out_of_memory_fails_alone_and_reruns_with_a_smaller_micro_batch(tmp_path):
    """A real allocation failure: each worker process is capped at 1.5 GiB (search.launcher.memory_limit,
    RLIMIT_DATA); data preparation and the base evaluation fit (~0.5 GB measured on 2 cores; thread stacks
    count, so more cores need more), one step of 4096 x 64 tokens at once does not (2048 x 64 fit in 1.5 GiB). Both trials fail as oom naming the micro-batch, the study
    goes on to the second. Rerun with proxy.micro_batch_seqs: 64 (allowed: it changes how, not what, a run
    computes), the same study runs both proposals again under the same cap, and they complete."""
    big = {"tokens": 262144, "seq_len": 64, "batch_tokens": 262144, "seed": 0}
    space = tiny_space("oom", trials=2, proxy=big)
    space["search"]["launcher"] = {"kind": "local", "memory_limit": "1.5GiB"}
    proc = run_cli("search", str(write_space(tmp_path, space)), "--quiet", cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    trials = study_trials(tmp_path, "oom")
    assert len(trials) == 2, proc.stdout[-2000:] + proc.stderr[-2000:]  # the second ran after the first ran out of memory
    for t in trials:
        assert t.state == optuna.trial.TrialState.FAIL
        assert t.user_attrs["status"] == "oom", t.user_attrs
        assert "micro-batch of 4096 x 64 tokens" in t.user_attrs["reason"]
        assert "lower proxy.micro_batch_seqs" in t.user_attrs["reason"]
        assert t.user_attrs["memory_settings"]["micro_batch_seqs"] is None  # what it ran with
    assert run_cli("status", str(tmp_path / "space.yaml"), cwd=tmp_path).stdout.count("oom") >= 2

    space["proxy"] = {**big, "micro_batch_seqs": 64}
    proc = run_cli("search", str(write_space(tmp_path, space)), "--quiet", cwd=tmp_path)
    assert proc.stdout.count("ran out of memory with") == 2, proc.stdout
    trials = study_trials(tmp_path, "oom")
    assert len(trials) == 4
    retries = {t.user_attrs["retry_of"]: t for t in trials[2:]}
    assert sorted(retries) == [0, 1]
    for number, t in retries.items():
        assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("reason")
        assert t.params == trials[number].params  # the same proposal
