"""``autotune fit RATIOS.csv METRICS.csv``: the extrapolation's surrogates and optimum on a swarm in OLMix's format.

A real SQLite study (the controller's own ask/tell, scores a known function of the mixture, no training) is
exported by ``autotune export`` and fitted by ``autotune fit --space``: the optimum and the chosen models are
``autotune extrapolate``'s. RegMix's 512 1M-parameter runs written as OLMix tables give the CV figures that
``benchmarks/extrapolation.py`` prints (same models, folds and seed). Bad tables exit 2 with one line.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from autotune.cli.app import app
from autotune.config.space import load_space
from autotune.objective import Score
from autotune.records import Attr
from autotune.testing import run_cli, tiny_space, write_space

DOMAINS = ("math", "code", "general")


def _metrics_of(w: dict[str, float], keys: list[str], rng) -> dict[str, float]:
    out = {}
    for k in keys:
        if k.startswith("bpb/"):
            d = k.removeprefix("bpb/")
            out[k] = 2.0 - 0.8 * math.sqrt(w[d]) + 0.01 * rng.standard_normal()
        else:
            out[k] = 0.2 + 0.3 * w["math"] + 0.05 * rng.standard_normal()
    return out


# a suite of two entries: the study's metrics are bpb/math, bpb/general, target and general (each fit costs time)
FIT_SUITE = {"name": "fit", "task_dirs": [], "bpb_tokens": 1024, "target": [{"bpb": "math"}], "general": [{"bpb": "general"}]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A finished 14-trial study in ``runs/fitdemo`` (``summary.json``, ``study.db``) and its ``autotune export``."""
    from autotune.search.study import Study, check_space

    root = tmp_path_factory.mktemp("fit")
    spec = tiny_space("fitdemo", trials=14, schedule={"kind": "wsd", "peak_lr": 3e-3},
                      extrapolate={"tokens": 1e6, "available_tokens": {"math": 1e5, "code": 5e5}})
    space_file = write_space(root, spec, FIT_SUITE)
    old = os.getcwd()
    os.chdir(root)
    try:
        space = load_space(space_file)
        study = Study(space)
        check_space(study.paths, space)
        ctl = study.controller()
        keys = [e.key for e in study.suite.entries]
        rng = np.random.default_rng(0)
        for i in range(14):
            asked = ctl.ask()
            w = asked.proposal.mixture
            target = 0.5 * math.sqrt(w["math"] + 0.5 * w["code"]) + 0.01 * rng.standard_normal()
            general = -0.3 * (0.5 - w["general"]) + 0.005 * rng.standard_normal()
            ctl.tell_score(asked.trial, Score(target=target, general=general, values=(target,), constraint=-0.05 - general),
                           {Attr.RUN_DIR: f"trials/run{i:02d}", Attr.METRICS: _metrics_of(w, keys, rng),
                            Attr.FEASIBLE: general >= -0.05})
        study.write_tables(ctl)
    finally:
        os.chdir(old)
    proc = run_cli("export", "space.yaml", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.mark.slow
def test_fit_reproduces_extrapolate_on_an_exported_study(exported):
    """``autotune fit --space runs/<study>`` (the space as run: its domain order) on the exported tables chooses
    ``autotune extrapolate``'s mixture (to 1e-6), its model per metric with the same CV scores, and its predictions,
    intervals and their calibration (both with 10 resamples here)."""
    from autotune.extrapolate import build_recipe

    root = exported
    section = load_space(root / "space.yaml").extrapolate
    recipe = build_recipe(root / "runs" / "fitdemo", tokens=section.tokens, available_tokens=dict(section.available_tokens),
                          bootstrap=10)
    proc = run_cli("fit", "runs/fitdemo/export/ratios.csv", "runs/fitdemo/export/metrics.csv", "--space", "runs/fitdemo",
                   "--bootstrap", "10", "--out", "fit.yaml", cwd=root, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    assert "at the swarm's scale" in proc.stdout and "CV Spearman" in proc.stdout
    fit = yaml.safe_load((root / "fit.yaml").read_text())
    assert fit["runs"] == 14 and fit["dropped_nan_rows"] == 0
    assert fit["bounds"]["from"] == "space" and fit["bounds"]["epoch_cap"] == recipe["provenance"]["optimizer"]["epoch_cap"]
    shares = {d: p["share"] for d, p in recipe["domains"].items()}
    assert fit["optimum"]["mixture"] == pytest.approx(shares, abs=1e-6)
    models = recipe["provenance"]["models"]
    assert set(fit["models"]) == set(models) == {"target", "general", "bpb/math", "bpb/general"}
    for metric, m in models.items():
        assert fit["models"][metric]["model"] == m["model"], metric
        assert fit["models"][metric]["cv"] == m["cv"], metric
    for key in ("target", "general"):
        p, r = fit["predictions"][key], recipe["predicted"]["at_proxy_scale"][key]
        assert p["scale"] == "at the swarm's scale" and p["model"] == r["model"]
        assert (p["value"], p["low"], p["high"]) == pytest.approx((r["value"], r["low"], r["high"]), rel=1e-9)
        assert p["calibration"] == pytest.approx(r["calibration"])
    assert fit["objective"]["general_floor"] == -0.05 and fit["objective"]["constrained"]


def _swarm(folder: Path, n: int = 10, seed: int = 0) -> None:
    """A small swarm in OLMix's format: three domains, target and general known functions of the shares."""
    rng = np.random.default_rng(seed)
    W = rng.dirichlet([2.0, 2.0, 2.0], n)
    ids = [f"r{i}" for i in range(n)]
    pd.DataFrame({"run_id": ids, "name": ids, **{d: W[:, j] for j, d in enumerate(DOMAINS)}}).to_csv(
        folder / "ratios.csv", index=False)
    pd.DataFrame({"run_id": ids, "name": ids, "bpb/math": 2 - W[:, 0], "target": np.sqrt(W[:, 0] + W[:, 1]),
                  "general": W[:, 2] - 0.5, "empty": np.nan}).to_csv(folder / "metrics.csv", index=False)


def test_reading_a_swarm_without_a_space(tmp_path):
    """Fast: the tables joined on run_id (metrics in another order), a NaN row dropped and counted, an empty column
    left out; the objective from the columns; the swarm's own range of shares as the bounds."""
    from autotune.extrapolate.fit import objective_of, read_swarm, region_of

    _swarm(tmp_path)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    metrics.loc[3, "general"] = float("nan")
    metrics.iloc[::-1].to_csv(tmp_path / "metrics.csv", index=False)
    swarm = read_swarm(tmp_path / "ratios.csv", tmp_path / "metrics.csv")
    assert swarm.run_ids == [f"r{i}" for i in range(10) if i != 3] and swarm.dropped_nan == 1
    assert swarm.empty_columns == ("empty",) and set(swarm.metrics) == {"bpb/math", "target", "general"}
    ratios = pd.read_csv(tmp_path / "ratios.csv").drop(index=3)
    assert swarm.metrics["bpb/math"] == pytest.approx(2 - ratios["math"].to_numpy())
    obj = objective_of(swarm, None)
    assert (obj.target, obj.target_higher, obj.general, obj.constrained) == ("target", True, "general", False)
    obj = objective_of(swarm, None, targets=["bpb/math"], general_floor=-0.2)
    assert (obj.target, obj.target_higher, obj.constrained, obj.floor) == ("bpb/math", False, True, -0.2)
    smap = region_of(swarm, None, ratios_path=tmp_path / "ratios.csv").smap
    assert smap.lo == pytest.approx(tuple(ratios[list(DOMAINS)].min())) and smap.hi == pytest.approx(tuple(ratios[list(DOMAINS)].max()))


@pytest.mark.slow
def test_fit_without_a_space_uses_the_swarms_range_and_columns(tmp_path):
    """No space: the ``target`` / ``general`` columns are the objective (no floor given: unconstrained), each domain
    stays within the swarm's own shares; a NaN row is dropped and counted, an empty column left out; JSON by name."""
    _swarm(tmp_path)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    metrics.loc[3, "general"] = float("nan")
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    r = CliRunner().invoke(app, ["fit", str(tmp_path / "ratios.csv"), str(tmp_path / "metrics.csv"), "--bootstrap", "0",
                                 "--out", str(tmp_path / "fit.json")])
    assert r.exit_code == 0, r.output
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["runs"] == 9 and fit["dropped_nan_rows"] == 1 and fit["empty_columns"] == ["empty"]
    assert fit["objective"] == {"maximize": "target", "general": "general", "general_floor": None,
                                "general_higher_is_better": True, "constrained": False, "from": "columns"}
    assert fit["models"]["bpb/math"]["own_domains"] == ["math"] and fit["models"]["target"]["own_domains"] == []
    ratios = pd.read_csv(tmp_path / "ratios.csv").drop(index=3)
    for d in DOMAINS:
        b = fit["bounds"]["domains"][d]
        assert b == {"min": pytest.approx(ratios[d].min()), "max": pytest.approx(ratios[d].max())}
        assert b["min"] - 1e-9 <= fit["optimum"]["mixture"][d] <= b["max"] + 1e-9
    assert "low" not in fit["predictions"]["target"] and fit["predictions"]["target"]["scale"] == "at the swarm's scale"


# ----------------------------------------------------------------------------------------------- RegMix 1M
@pytest.mark.slow
def test_regmix_swarm_as_olmix_tables_gives_the_benchmarks_cv_figures(tmp_path):
    """RegMix's 512 1M training runs as OLMix tables: ``fit --target pile_cc --direction min`` gives the
    model and CV figures of ``benchmarks/extrapolation.py``'s protocol (select_model, own domain, 5 folds, seed 0)."""
    from autotune.extrapolate.mixture import Problem
    from autotune.extrapolate.selection import select_model
    from autotune.testing import ANCHORS, load_regmix_split

    if not ANCHORS.exists():
        pytest.skip(f"RegMix anchors not found at {ANCHORS}")
    X, Y, domains, targets = load_regmix_split("train_1m")
    ids = [f"regmix-{i}" for i in range(len(X))]
    pd.DataFrame({"run_id": ids, "name": ids, **{d: X[:, j] for j, d in enumerate(domains)}}).to_csv(
        tmp_path / "ratios.csv", index=False)
    target = "pile_cc"
    j = targets.index(target)
    # one metric column (each costs a CV over 512 runs); another row order: the join is on run_id
    pd.DataFrame({"run_id": ids[::-1], "name": ids[::-1], target: Y[::-1, j]}).to_csv(tmp_path / "metrics.csv", index=False)
    proc = run_cli("fit", "ratios.csv", "metrics.csv", "--target", target, "--direction", "min", "--bootstrap", "0",
                   "--out", "fit.yaml", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    fit = yaml.safe_load((tmp_path / "fit.yaml").read_text())
    assert fit["objective"]["minimize"] == target and fit["runs"] == 512
    sel = select_model(X, Y[:, j], Problem(tuple(domains), (domains.index(target),)), folds=5)
    got = fit["models"][target]
    assert got["own_domains"] == [target]
    assert got["model"] == sel.name and got["cv_best"] == sel.cv_best
    assert got["cv_spearman"] == pytest.approx(sel.cv[sel.name].spearman, abs=1e-6)
    assert got["cv"] == {k: {"spearman": pytest.approx(v.spearman, abs=1e-6), "rmse": pytest.approx(v.rmse, abs=1e-6)}
                         for k, v in sel.cv.items()}
    # minimised: the optimum's predicted loss is no worse than the best run's measured one, by more than noise
    assert fit["predictions"][target]["value"] <= float(Y[:, j].min()) + 0.05


# ----------------------------------------------------------------------------------------------- bad input
def _tables(folder: Path, ratios: str, metrics: str) -> None:
    (folder / "ratios.csv").write_text(ratios)
    (folder / "metrics.csv").write_text(metrics)


GOOD_RATIOS = "run_id,name,a,b\nr1,x,0.2,0.8\nr2,x,0.5,0.5\nr3,x,0.7,0.3\nr4,x,0.9,0.1\n"
GOOD_METRICS = "run_id,name,target\nr1,x,0.1\nr2,x,0.3\nr3,x,0.2\nr4,x,0.5\n"


@pytest.mark.parametrize("ratios,metrics,args,expect", [
    (None, GOOD_METRICS, (), ["ratios.csv", "not found"]),
    ("id,a,b\nr1,0.5,0.5\n", GOOD_METRICS, (), ["ratios.csv", "run_id", "'id'"]),
    (GOOD_RATIOS.replace("0.5,0.5", "0.5,0.6"), GOOD_METRICS, (), ["ratios.csv", "run_id 'r2'", "sum to 1", "1.1"]),
    (GOOD_RATIOS, GOOD_METRICS, ("--target", "acc"), ["metrics.csv", "--target", "'acc'"]),
    (GOOD_RATIOS, "run_id,name,target\nr1,x,0.1\nr2,x,nan\nr3,x,\nr4,x,0.5\n", (),
     ["metrics.csv", "at least 3 runs", "2 rows with a NaN"]),
    (GOOD_RATIOS, GOOD_METRICS.replace("0.3", "high"), (), ["metrics.csv", "column 'target', run_id 'r2'", "'high'"]),
    (GOOD_RATIOS.replace("0.7,0.3", "0.7,abc"), GOOD_METRICS, (), ["ratios.csv", "column 'b', run_id 'r3'", "'abc'"]),
])
def test_bad_tables_exit_2_with_one_line(tmp_path, monkeypatch, ratios, metrics, args, expect):
    monkeypatch.chdir(tmp_path)
    _tables(tmp_path, ratios or "", metrics)
    if ratios is None:
        (tmp_path / "ratios.csv").unlink()
    r = CliRunner().invoke(app, ["fit", "ratios.csv", "metrics.csv", "--bootstrap", "0", *args])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for e in expect:
        assert e in lines[0], lines[0]


def test_space_with_other_domains_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_space(tmp_path, tiny_space("other"))
    _tables(tmp_path, GOOD_RATIOS, GOOD_METRICS)
    r = CliRunner().invoke(app, ["fit", "ratios.csv", "metrics.csv", "--space", "space.yaml"])
    assert r.exit_code == 2 and "ratios.csv: columns" in r.output and "not a domain of the space" in r.output, r.output
