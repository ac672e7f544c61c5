"""Optuna's own tools read a study as its user thinks of it.

optuna-dashboard's real server on 127.0.0.1 (its JSON API, requested as the browser requests it) finds each
trial's domain shares (``share.<domain>``, not only the sampler's stick-breaking coordinates ``mix.<domain>``),
the objective's metric names, and the general-retention constraint with the trial's feasibility, while
Optuna's own readers (``best_trial``, the samplers) still see one constraint per trial. A trial whose worker
stopped beating is retried by Optuna's ``RetryHeartbeatStaleTrialCallback`` (once). ``autotune export`` names
its share columns ``share.<domain>`` and writes ``ratios.csv`` / ``metrics.csv`` as OLMix's ``fit --from-csv``
reads them.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pandas as pd
import pytest

from autotune.config.space import load_space
from autotune.objective import Score
from autotune.records import Attr
from autotune.search.controller import Controller
from autotune.testing import tiny_space, write_space

DOMAINS = ("math", "code", "general")


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # no access log on the test's stderr
        pass


@contextlib.contextmanager
def dashboard(storage_url: str):
    """optuna-dashboard's own WSGI app over ``storage_url`` (opened by the dashboard, as ``optuna-dashboard
    URL`` opens it), served on 127.0.0.1 on a free port; yields a function that GETs a path as JSON."""
    import optuna_dashboard

    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage_url), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def get(path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}{path}", timeout=60) as r:
            assert r.status == 200
            return json.loads(r.read())

    try:
        yield get
    finally:
        server.shutdown()
        server.server_close()


def study_detail(get, name: str) -> dict:
    """What the dashboard's study page loads: ``/api/studies`` for the id, then ``/api/studies/<id>``."""
    studies = get("/api/studies")["study_summaries"]
    (sid,) = [s["study_id"] for s in studies if s["study_name"] == name]
    return get(f"/api/studies/{sid}")


def user_attrs(trial_json: dict) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial_json["user_attrs"]}


def _space(tmp_path: Path, name: str = "dash", **over):
    return load_space(write_space(tmp_path, tiny_space(name, trials=4, **over)))


def _score(target: float, general: float, constraint: float | None) -> Score:
    return Score(target=target, general=general, values=(target,), constraint=constraint)


def test_dashboard_shows_shares_metric_names_and_feasibility(tmp_path):
    """A real SQLite study through the controller (synthetic scores, no training): the prior waits in the queue
    with its shares; a feasible and an infeasible (higher target) trial are told; the dashboard's API shows the
    shares of every trial, the metric name, the constraint values and so which trial is feasible; Optuna's own
    ``best_trial`` picks the feasible one."""
    space = _space(tmp_path)
    ctl = Controller(space, tmp_path / "study")
    ctl.enqueue_prior()
    waiting = ctl.study.trials[0]
    assert waiting.state == optuna.trial.TrialState.WAITING
    assert {d: waiting.user_attrs[Attr.share(d)] for d in DOMAINS} == pytest.approx(space.mixture.prior)

    asked = [ctl.ask() for _ in range(3)]
    ctl.tell_score(asked[0].trial, _score(0.10, -0.01, -0.04), {Attr.FEASIBLE: True})
    ctl.tell_score(asked[1].trial, _score(0.30, -0.20, 0.15), {Attr.FEASIBLE: False})  # better target, infeasible
    # asked[2] stays running
    assert ctl.study.metric_names == ["target"]
    assert ctl.study.best_trial.number == asked[0].number  # Optuna's feasibility reading: one constraint per trial
    assert [len(t.constraints) for t in ctl.study.trials[:2]] == [1, 1]

    with dashboard(f"sqlite:///{tmp_path / 'study' / 'study.db'}") as get:
        detail = study_detail(get, "dash")
    assert detail["objective_names"] == ["target"]
    by_number = {t["number"]: t for t in detail["trials"]}
    for a in asked:
        attrs = user_attrs(by_number[a.number])
        shares = {d: float(attrs[Attr.share(d)]) for d in DOMAINS}
        assert shares == pytest.approx(a.proposal.mixture) and sum(shares.values()) == pytest.approx(1.0)
        # the sampler's coordinates are still the trial's params (what the sampler learns from)
        assert {p["name"] for p in by_number[a.number]["params"]} >= {"mix.math", "mix.code"}
    feasible = {n: all(c <= 0 for c in t["constraints"]) for n, t in by_number.items() if t["state"] == "Complete"}
    assert feasible == {asked[0].number: True, asked[1].number: False}
    assert by_number[asked[1].number]["constraints"] == [pytest.approx(0.15)]
    # (the dashboard's "best trial" card is storage.get_best_trial, which ignores constraints in 0.21.0)


def test_metric_names_of_a_pareto_study_and_readers_write_nothing(tmp_path):
    """A Pareto objective names both values in its order; a reader (``create=False``) of an existing study
    leaves the storage as it is."""
    space = _space(tmp_path, "pareto", objective={"pareto": ["general", "target"]})
    ctl = Controller(space, tmp_path / "study")
    assert ctl.study.metric_names == ["general", "target"]
    ctl.study.set_metric_names(["a", "b"])  # as a user might have renamed them
    reader = Controller(space, tmp_path / "study", create=False)
    assert reader.study.metric_names == ["a", "b"]


def test_lost_trial_is_retried_once_by_optunas_callback(tmp_path, monkeypatch):
    """Two running trials stop beating: a plain one is failed and queued again by Optuna's
    ``RetryHeartbeatStaleTrialCallback`` (its retry history set, params, seed and shares kept, ``retry_of``
    for autotune's readers); one that is itself a retry is failed and not retried again. The lost trial
    retried no longer holds a place in the budget."""
    space = _space(tmp_path, search={"sampler": "random", "trials": 4, "storage": "sqlite", "heartbeat_s": 1,
                                      "grace_s": 2})
    monkeypatch.setenv("AUTOTUNE_HOST", "host-a")
    a = Controller(space, tmp_path / "study")
    first = a.ask()
    a.study.enqueue_trial(first.trial.params, user_attrs={Attr.SEED: 7, Attr.RETRY_OF: 99})  # a crash's retry
    second = a.ask()
    for t in (first, second):
        a.storage.record_heartbeat(t.trial._trial_id)
    with contextlib.closing(sqlite3.connect(tmp_path / "study" / "study.db")) as db, db:  # their last beats: 1 min ago
        moved = db.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-60 seconds')").rowcount
    assert moved == 2

    monkeypatch.setenv("AUTOTUNE_HOST", "host-b")
    b = Controller(space, tmp_path / "study")
    b.fail_lost_trials()
    trials = b.study.get_trials(deepcopy=False)
    assert [t.state for t in trials[:2]] == [optuna.trial.TrialState.FAIL] * 2
    retries = trials[2:]
    assert len(retries) == 1, [(t.number, t.state, t.user_attrs) for t in trials]
    retry = retries[0]
    assert retry.state == optuna.trial.TrialState.WAITING
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == first.number
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(retry) == [first.number]
    assert retry.user_attrs[Attr.RETRY_OF] == first.number and retry.params == first.trial.params
    assert {d: retry.user_attrs[Attr.share(d)] for d in DOMAINS} == pytest.approx(first.proposal.mixture)
    assert Attr.OWNER not in retry.user_attrs and Attr.PROPOSAL not in retry.user_attrs  # asked anew
    assert b.finished() == 1  # the lost retry of a crash counts; the retried lost trial does not

    again = b.ask()  # the queued retry runs next, with its seed
    assert again.number == retry.number and again.proposal.seed == first.proposal.seed
    assert again.proposal.mixture == pytest.approx(first.proposal.mixture)


def test_export_names_shares_and_writes_olmix_tables(tmp_path, monkeypatch):
    """``trials`` has ``share.<domain>`` columns; ``ratios.csv`` and ``metrics.csv`` follow OLMix's CSV loader
    (olmix/fit/loaders.py ``load_from_csv``): a ``run_id`` column in both, an optional ``name``, every other
    ratios column a domain (rows summing to 1), every other metrics column a number."""
    from autotune.search.export import export
    from autotune.search.study import Study

    monkeypatch.chdir(tmp_path)
    space = _space(tmp_path, "exp")
    study = Study(space)
    ctl = study.controller()
    keys = [e.key for e in study.suite.entries]
    for i in range(2):
        asked = ctl.ask()
        metrics = {k: 1.0 + i for k in keys}
        ctl.tell_score(asked.trial, _score(0.1 * i, -0.01, -0.04),
                       {Attr.RUN_DIR: f"trials/run{i}", Attr.METRICS: metrics, Attr.FEASIBLE: True})
    running = ctl.ask()
    paths = export(study, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["metrics.csv", "ratios.csv", "trials.csv"]

    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert {f"share.{d}" for d in DOMAINS} <= set(trials.columns)
    assert not [c for c in trials.columns if c.startswith("mix.")]
    assert trials[[f"share.{d}" for d in DOMAINS]].iloc[:2].sum(axis=1).tolist() == pytest.approx([1.0, 1.0])
    assert running.number in trials["trial"].tolist()

    ratios = pd.read_csv(tmp_path / "out" / "ratios.csv")
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert list(ratios.columns) == ["run_id", "name", *DOMAINS]
    assert ratios["run_id"].tolist() == ["run0", "run1"] and ratios["run_id"].is_unique
    domain_cols = [c for c in ratios.columns if c not in ("run_id", "name")]
    assert ratios[domain_cols].sum(axis=1).tolist() == pytest.approx([1.0, 1.0], abs=0.01)
    assert list(metrics.columns[:2]) == ["run_id", "name"] and metrics["run_id"].tolist() == ratios["run_id"].tolist()
    metric_cols = [c for c in metrics.columns if c not in ("run_id", "name")]
    assert metric_cols == [*keys, "target", "general"]
    assert not metrics[metric_cols].apply(pd.to_numeric, errors="coerce").isna().any().any()


@pytest.mark.slow
def test_a_real_search_opens_in_optuna_dashboard(tmp_path):
    """``autotune search`` on the tiny space (2 real proxy runs and evaluations), then optuna-dashboard's server
    on its study.db: the shares of both trials (matching each trial's proposal), the metric name, the
    constraint and each trial's feasibility as the study recorded it."""
    from autotune.testing import run_cli, study_trials

    space = write_space(tmp_path, tiny_space("dashe2e", trials=2))
    proc = run_cli("search", str(space), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = {t.number: t for t in study_trials(tmp_path, "dashe2e")}
    with dashboard(f"sqlite:///{tmp_path / 'runs' / 'dashe2e' / 'study.db'}") as get:
        detail = study_detail(get, "dashe2e")
    assert detail["objective_names"] == ["target"]
    assert len(detail["trials"]) == 2
    for tj in detail["trials"]:
        t = trials[tj["number"]]
        attrs = user_attrs(tj)
        shares = {d: float(attrs[f"share.{d}"]) for d in DOMAINS}
        assert shares == pytest.approx(t.user_attrs["proposal"]["mixture"])
        assert len(tj["constraints"]) == 1
        assert all(c <= 0 for c in tj["constraints"]) == t.user_attrs["feasible"] == (attrs["feasible"] == "True")
