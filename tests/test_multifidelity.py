"""Multi-fidelity: token rungs with a held-out bits-per-byte evaluation reported to Optuna, and pruning.

Real proxy runs of the tiny model; the controlled proposals make the pruning decision deterministic: two
runs at a useful learning rate set the median, then a run at a learning rate of 1e-7 learns nothing by
its first rung and must be pruned there, keeping its partial results and reason.
"""

from __future__ import annotations

import json

import optuna
import pytest

from autotune.config.space import load_space
from autotune.search.study import Study, study_dir
from autotune.testing import tiny_space, write_space

pytestmark = pytest.mark.slow


def test_rungs_are_reported_and_a_hopeless_trial_is_pruned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tiny_space("rungs", trials=3, proxy={"tokens": 16384, "seq_len": 64, "batch_tokens": 1024,
                                                 "rungs": [0.25, 0.5, 1.0]})
    spec["schedule"] = {"kind": "constant", "peak_lr": {"low": 1e-7, "high": 1e-2, "log": True}, "warmup_fraction": 0.0}
    spec["search"]["pruner"] = "median"
    space = load_space(write_space(tmp_path, spec))
    assert space.proxy.rung_steps == [4, 8]

    study = Study(space)
    ctl = study.controller()
    good = {"mix.math": 0.6, "mix.code": 0.5, "schedule.peak_lr": 1e-2}
    for seed in (0, 1):
        ctl.study.enqueue_trial(good, user_attrs={"seed": seed})
    ctl.study.enqueue_trial({**good, "schedule.peak_lr": 1e-7}, user_attrs={"seed": 0})
    study.search()

    trials = ctl.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED]
    for t in trials[:2]:
        assert sorted(t.intermediate_values) == [4096, 8192]  # tokens at the two rungs
        assert t.intermediate_values[8192] > 0  # target bits-per-byte improved over the base by then
    pruned = trials[2]
    assert list(pruned.intermediate_values) == [4096]
    assert pruned.user_attrs["status"] == "pruned"
    assert "pruned at rung 0 (4,096 tokens) by median" in pruned.user_attrs["reason"]
    rung = pruned.user_attrs["rungs"][0]
    assert set(rung["metrics"]) == {"bpb/math", "bpb/code", "bpb/general"}
    # the partial run is kept on disk: its log up to the rung and the rung's metrics
    folder = study_dir(space) / "trials"
    kept = [json.loads(line) for f in folder.glob("*/rungs.jsonl") for line in f.read_text().splitlines()]
    assert any(k["metrics"] == rung["metrics"] for k in kept)
    # the pruned trial's worker was stopped before finishing
    assert not [f for f in folder.glob("*/worker.pid")]


def test_pruner_needs_rungs_and_a_single_objective(tmp_path):
    from typer.testing import CliRunner

    from autotune.cli import app

    spec = tiny_space("bad")
    spec["search"]["pruner"] = "hyperband"
    r = CliRunner().invoke(app, ["validate", str(write_space(tmp_path / "a", spec))])
    assert r.exit_code == 2 and "needs proxy.rungs" in r.output
    spec["proxy"]["rungs"] = [0.5, 1.0]
    spec["objective"] = {"pareto": ["target", "general"]}
    r = CliRunner().invoke(app, ["validate", str(write_space(tmp_path / "b", spec))])
    assert r.exit_code == 2 and "multi-objective" in r.output
    spec["objective"] = {"maximize": "target"}
    spec["proxy"]["rungs"] = [0.5, 0.4, 1.0]
    r = CliRunner().invoke(app, ["validate", str(write_space(tmp_path / "c", spec))])
    assert r.exit_code == 2 and "rungs must increase" in r.output
