"""Closed-loop verification (issue 14, item 1): ``autotune verify`` trains recipe.yaml's recommendation and
baselines at a larger budget with several seeds, tests them paired over seeds, and puts the result into
recipe.yaml; the statistics are checked on known values, the driver end to end on the real loop (demo data,
a tiny Llama, lm-eval tasks, Optuna storage)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from autotune.cli import app
from autotune.config.space import SearchSpace, load_space
from autotune.errors import UserError
from autotune.extrapolate import build_recipe, load_recipe, write_recipe
from autotune.extrapolate.verify import VerifyData, analyze, load_verify, paired_tests, pooled_sd
from autotune.records import TrialRecord
from autotune.search.verify import choose_candidates, natural_mixture, target_only, verify_space
from autotune.testing import make_study, run_cli, tiny_space, tiny_suite, write_space


# ----------------------------------------------------------------------------------------------- statistics
def test_pooled_sd_and_paired_tests_match_a_hand_computation():
    assert pooled_sd([[1.0, 3.0], [2.0, 2.0, 5.0], [None, 4.0]]) == (pytest.approx(math.sqrt((2 + 6) / 3)), 3)
    rec = [0.50, 0.54, 0.52]
    base = {"a": [0.40, 0.45, 0.41], "b": [0.51, 0.52, 0.55], "c": [None, 0.60, 0.62]}
    noise = pooled_sd([rec, *base.values()])
    out = {c.baseline: c for c in paired_tests(rec, base, higher=True, alpha=0.05, metric="target", noise=noise)}
    d = {"a": [0.10, 0.09, 0.11], "b": [-0.01, 0.02, -0.03], "c": [-0.06, -0.10]}
    groups = [rec, [0.40, 0.45, 0.41], [0.51, 0.52, 0.55], [0.60, 0.62]]
    ss = sum(np.sum((np.array(g) - np.mean(g)) ** 2) for g in groups)
    df = 2 + 2 + 2 + 1
    sd = math.sqrt(ss / df)
    assert noise == (pytest.approx(sd), df)
    for name, v in d.items():
        c = out[name]
        se = sd * math.sqrt(2 / len(v))  # the difference of two independent runs
        t = np.mean(v) / se
        assert (c.seeds, c.df) == (len(v), df)
        assert c.diff == pytest.approx(np.mean(v)) and c.se == pytest.approx(se) and c.t == pytest.approx(t)
        assert c.p_better == pytest.approx(stats.t.sf(t, df))
    assert (out["a"].verdict, out["b"].verdict, out["c"].verdict) == ("better", "within noise", "worse")
    # lower-is-better metrics are oriented: a lower bits-per-byte is better
    low = paired_tests([1.0, 1.1], {"x": [1.5, 1.7]}, higher=False, alpha=0.05, metric="bpb/math",
                       noise=(0.05, 2))[0]
    assert low.diff == pytest.approx(0.55) and low.p_better < 0.05 and low.verdict == "better"
    # no degrees of freedom, or a seed noise of exactly 0: nothing is tested (a verdict would be certain)
    for noise in [(None, 0), (0.0, 4)]:
        c = paired_tests([1.0, 1.0], {"x": [0.5, 0.5]}, higher=True, alpha=0.05, metric="target", noise=noise)[0]
        assert c.verdict == "not tested" and c.diff == pytest.approx(0.5) and c.p_better is None


def _data(values: dict[str, dict[str, list]], tokens: int = 8192, proxy: int = 4096) -> VerifyData:
    cands = [{"label": label, "kind": "recommended" if i == 0 else "uniform", "trial": None,
              "mixture": {"a": 0.5, "b": 0.5}, "schedule": {"kind": "wsd", "peak_lr": 1e-3}} for i, label in
             enumerate(values)]
    return VerifyData({"tokens": tokens, "proxy_tokens": proxy, "seeds": [0, 1, 2], "alpha": 0.05, "dir": "verify/x",
                       "candidates": cands}, values)


def _pred(t: float, g: float, half: float = 0.05) -> dict:
    return {"target": {"value": t, "low": t - half, "high": t + half, "level": 0.9},
            "general": {"value": g, "low": g - half, "high": g + half, "level": 0.9}}


def test_analyze_ranks_tests_and_checks_coverage_only_at_the_same_scale():
    values = {"rec": {"target": [0.50, 0.52, 0.51], "general": [0.00, 0.01, 0.00]},
              "b1": {"target": [0.40, 0.41, 0.42], "general": [0.02, 0.02, 0.03]},
              "b2": {"target": [0.60, 0.61, 0.62], "general": [-0.20, -0.21, -0.19]}}  # better target, infeasible
    preds = {"rec": _pred(0.49, 0.0), "b1": _pred(0.45, 0.02), "b2": _pred(0.70, -0.2)}
    v = analyze(_data(values), preds, maximize="target", floor=-0.05, inside_space={"rec": True, "b1": True, "b2": False})
    assert v.ranking == ["rec", "b1", "b2"] and v.rank == 1  # the infeasible one ranks last despite its target
    by = {(c.baseline, c.metric): c.verdict for c in v.comparisons}
    assert by[("b1", "target")] == "better" and by[("b2", "target")] == "worse"
    assert not v.wins  # it does not beat b2 on target
    assert v.coverage is None and "2x the proxy" in v.scale and "4.1e3 tokens" in v.predicted_scale
    assert v.seed_noise["target"] == pytest.approx(pooled_sd([x["target"] for x in values.values()])[0])
    assert v.rank_agreement["target"] == pytest.approx(1.0)
    assert "ranks 1 of 3" in v.summary and "worse than b2" in v.summary
    same = analyze(_data(values, tokens=4096), preds, maximize="target", floor=-0.05, inside_space={})
    # target: rec 3 of 3 inside [0.44, 0.54]; b1 1 of 3 inside [0.40, 0.50] (0.40, 0.41, 0.42 -> all 3); b2 0 of 3
    inside = sum(p["target"]["low"] <= x <= p["target"]["high"] for k, p in preds.items()
                 for x in values[k]["target"])
    assert same.coverage["target"] == {"inside": inside, "n": 9, "level": 0.9}
    # drop the infeasible baseline: the recommendation wins
    two = {k: values[k] for k in ("rec", "b1")}
    won = analyze(_data(two), preds, maximize="target", floor=-0.05, inside_space={})
    assert won.wins and "better beyond the seed noise than 1 of 1 baselines (b1)" in won.summary


# ----------------------------------------------------------------------------------------------- candidates
def _recipe(tmp_path):
    root = make_study(tmp_path / "synthetic", trials=8, failed=0)
    recipe = build_recipe(root, tokens=1e9, available_tokens={"math": 1e8, "code": 3e8, "general": 6e8},
                          bootstrap=0, all_metrics=False)
    path = write_recipe(recipe, root / "recipe.yaml")
    return root, load_recipe(path)


def test_candidates_baselines_and_the_sub_space(tmp_path):
    root, recipe = _recipe(tmp_path)
    summary = json.loads((root / "summary.json").read_text())
    trials = [TrialRecord.from_row(r) for r in summary["trials"]]
    space = SearchSpace.model_validate({**json.loads((root / "space.json").read_text())["identity"],
                                        "extrapolate": {"tokens": 1e9, "available_tokens":
                                                        {"math": 1e8, "code": 3e8, "general": 6e8}}})
    cands, notes = choose_candidates(space, trials, recipe)
    kinds = [c["kind"] for c in cands]
    assert kinds[0] == "recommended" and set(kinds) <= {"recommended", "prior", "best_trial", "uniform", "natural",
                                                         "target_only"}
    by = {c["kind"]: c for c in cands}
    assert by["recommended"]["mixture"] == pytest.approx({d: p.share for d, p in recipe.domains.items()})
    assert by["recommended"]["schedule"]["peak_lr"] == recipe.schedule.peak_lr
    assert by["natural"]["mixture"] == pytest.approx({"math": 0.1, "code": 0.3, "general": 0.6})
    assert by["uniform"]["mixture"] == pytest.approx({d: 1 / 3 for d in space.domains})
    best = max((t for t in trials if not t.prior and t.feasible), key=lambda t: t.target)
    assert by["best_trial"]["trial"] == best.number and by["best_trial"]["mixture"] == best.mixture
    # the mixture baselines train the recommended schedule: only the mixture differs
    for k in ("uniform", "natural", "target_only"):
        assert by[k]["schedule"] == by["recommended"]["schedule"]
    if any(t.prior and t.complete for t in trials):
        assert by["prior"]["trial"] == min(t.number for t in trials if t.prior and t.complete)
    else:
        assert "prior" not in by and any(n.startswith("prior:") for n in notes)
    floor = max(space.mixture.floors.get("general", 0.0), space.bounds("general").min)
    assert target_only(space)["general"] == pytest.approx(floor)
    assert sum(target_only(space).values()) == pytest.approx(1.0)
    # without available tokens for every domain there is no natural mixture (and a note says so)
    partial = SearchSpace.model_validate({**space.model_dump(mode="json"),
                                          "extrapolate": {"tokens": 1e9, "available_tokens": {"math": 1e8}}})
    assert natural_mixture(partial) is None
    assert any(n.startswith("natural:") for n in choose_candidates(partial, trials, recipe)[1])
    # the sub-study's space: 4x tokens, the whole simplex, each schedule field exactly the candidates' values
    sub = verify_space(space, 4 * space.proxy.tokens, cands, 2 * len(cands))
    assert sub.proxy.tokens == 4 * space.proxy.tokens and sub.search.pruner == "none"
    assert sub.mixture.floors == {} and all(sub.bounds(d).min == 0 and sub.bounds(d).max == 1 for d in sub.domains)
    lrs = sorted({c["schedule"]["peak_lr"] for c in cands})
    assert len(lrs) > 1  # the trials' own LRs and the recipe's
    assert (sub.schedule.peak_lr.low, sub.schedule.peak_lr.high) == (lrs[0], lrs[-1])
    assert sub.proxy.rungs is None and sub.name.startswith(f"{space.name}-verify-tokens-{4 * space.proxy.tokens}-")
    # other candidate schedules (say, a re-extrapolated recipe) make another sub-study, never a refused resume
    moved = [dict(c, schedule=dict(c["schedule"], peak_lr=c["schedule"]["peak_lr"] * 1.5)) for c in cands]
    assert verify_space(space, 4 * space.proxy.tokens, moved, 2).name != sub.name
    assert verify_space(space, 4 * space.proxy.tokens, cands, 7).name == sub.name


@pytest.mark.slow
def test_recipe_keeps_a_verification_of_its_own_mixture_only(tmp_path):
    """A synthetic verify.json and sub-study summary: build_recipe attaches the analysis (with the recipe's
    own prediction for the recommendation), and warns instead when the recommendation has changed."""
    root, recipe = _recipe(tmp_path)
    rec = {d: p.share for d, p in recipe.domains.items()}
    cands = [{"label": "recommended", "kind": "recommended", "trial": None, "mixture": rec, "requested_mixture": rec,
              "schedule": {"kind": recipe.schedule.kind, "peak_lr": recipe.schedule.peak_lr}, "context": {}},
             {"label": "uniform", "kind": "uniform", "trial": None, "mixture": {d: 1 / 3 for d in rec},
              "schedule": {"kind": recipe.schedule.kind, "peak_lr": recipe.schedule.peak_lr}, "context": {}}]
    sub = root / "verify" / "synthetic-verify-tokens-163840"
    sub.mkdir(parents=True)
    rows = [{"trial": 2 * i + s, "state": "complete", "mixture": c["mixture"], "schedule": c["schedule"], "seed": s,
             "target": 0.3 - 0.1 * i + 0.01 * s, "general": 0.0, "metrics": {"bpb/math": 1.0 + i}}
            for i, c in enumerate(cands) for s in (0, 1)]
    (sub / "summary.json").write_text(json.dumps({"trials": rows}))
    (root / "verify" / "verify.json").write_text(json.dumps({
        "version": 1, "tokens": 163840, "proxy_tokens": 40960, "seeds": [0, 1], "alpha": 0.05,
        "dir": str(sub.relative_to(root)), "candidates": cands}))
    data = load_verify(root)
    assert data.values["uniform"]["target"] == pytest.approx([0.2, 0.21])
    assert data.values["recommended"]["bpb/math"] == [1.0, 1.0]
    again = build_recipe(root, tokens=1e9, available_tokens={"math": 1e8, "code": 3e8, "general": 6e8},
                         bootstrap=20, all_metrics=False)
    v = again["verification"]
    assert v is not None and v["ranking"] == ["recommended", "uniform"] and v["rank"] == 1
    pred = v["candidates"][0]["predicted"]["target"]
    assert pred["value"] == pytest.approx(again["predicted"]["at_proxy_scale"]["target"]["value"])
    assert (pred["low"], pred["high"]) == pytest.approx((again["predicted"]["at_proxy_scale"]["target"]["low"],
                                                        again["predicted"]["at_proxy_scale"]["target"]["high"]))
    assert load_recipe(write_recipe(again, root / "recipe.yaml")).verification.rank == 1
    # another recommendation: no verification, a warning naming verify.json
    moved = dict(rec, math=rec["math"] + 0.01, general=rec["general"] - 0.01)
    m = json.loads((root / "verify" / "verify.json").read_text())
    m["candidates"][0]["requested_mixture"] = moved
    (root / "verify" / "verify.json").write_text(json.dumps(m))
    stale = build_recipe(root, tokens=1e9, bootstrap=0, all_metrics=False)
    assert stale["verification"] is None
    assert any(w.startswith("verify.json verified another recommendation") for w in stale["warnings"])
    # a damaged verify.json never costs the recipe: the verification is left out with a warning
    (root / "verify" / "verify.json").write_text(json.dumps({"seeds": [0], "candidates": [{"kind": "x"}]}))
    with pytest.raises(UserError, match="verify.json is malformed"):
        load_verify(root)
    damaged = build_recipe(root, tokens=1e9, bootstrap=0, all_metrics=False)
    assert damaged["verification"] is None
    assert any(w.startswith("the verification was left out: ") and "malformed" in w for w in damaged["warnings"])


# ----------------------------------------------------------------------------------------------- input
@pytest.mark.parametrize("verify, field, expect", [
    ({"seeds": 1}, "verify.seeds", "greater than or equal to 2"),
    ({"tokens_factor": 0}, "verify.tokens_factor", "greater than 0"),
    ({"baselines": ["median"]}, "verify.baselines[0]", "Input should be"),
    ({"natural": {"math": 0.5, "code": 0.6, "general": 0.1}}, "verify.natural", "sum to 1"),
    ({"natural": {"math": 0.5, "general": 0.5}}, None, "needs a share for each domain"),
    ({"tokens_factor": 0.1}, None, "below one batch"),
    ({"baselines": []}, "verify.baselines", "at least 1 item"),
])
def test_bad_verify_sections(tmp_path, verify, field, expect):
    path = write_space(tmp_path, tiny_space(verify=verify))
    with pytest.raises(UserError, match=expect) as e:
        load_space(path)
    assert e.value.field == field
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and expect in result.output


def test_a_ladder_rung_is_not_verified(tmp_path):
    """A verify section valid for the search (half its tokens is a batch) is not checked on a one-batch ladder
    rung, where it would not fit: what validate accepts, the ladder accepts."""
    from autotune.search.ladder import rung_space

    space = load_space(write_space(tmp_path, tiny_space(ladder={"tokens": [1024]}, verify={"tokens_factor": 0.5})))
    rung = rung_space(space, 1024, 2)
    assert rung.verify is None and rung.proxy.tokens == 1024


def test_verify_cli_bad_input(tmp_path):
    runner = CliRunner()
    never_run = write_space(tmp_path / "b", tiny_space("neverrun", search={"runs_dir": str(tmp_path / "runs")}))
    r = runner.invoke(app, ["verify", str(never_run)])
    assert r.exit_code == 2 and "no study has run for this space yet" in r.output
    r = runner.invoke(app, ["verify", str(never_run), "--set", "verify.seeds=1"])
    assert r.exit_code == 2 and "verify.seeds" in r.output


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_verify_end_to_end(tmp_path):
    """search (3 trials, recipe.yaml at its end) -> verify at 2x the proxy tokens, 2 seeds, against the prior and
    uniform -> verify.json, the sub-study's runs (trained tokens, seeds, shares as listed), recipe.yaml's
    verification section; a rerun trains nothing; autotune extrapolate keeps the section; the report shows it."""
    spec = tiny_space("ver", trials=3, extrapolate={"tokens": 1e6, "available_tokens": {"math": 2e5}},
                      verify={"tokens_factor": 2, "seeds": 2, "baselines": ["prior", "uniform"]})
    space = write_space(tmp_path, spec, tiny_suite(limit=8))
    def autotune(*args, quiet=True):
        proc = run_cli(*args, *(["--quiet"] if quiet else []), cwd=tmp_path, timeout=400)
        assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        return proc

    autotune("search", str(space))
    root = tmp_path / "runs" / "ver"
    assert load_recipe(root / "recipe.yaml").verification is None
    out = autotune("verify", str(space))
    print(out.stdout)
    assert "paired over seeds" in out.stdout and "recipe:" in out.stdout
    manifest = json.loads((root / "verify" / "verify.json").read_text())
    assert manifest["tokens"] == 8192 and manifest["proxy_tokens"] == 4096 and manifest["seeds"] == [0, 1]
    assert [c["kind"] for c in manifest["candidates"]] == ["recommended", "prior", "uniform"]
    sub = root / manifest["dir"]
    results = [json.loads(p.read_text()) for p in (sub / "trials").glob("*/result.json")]
    assert len(results) == 6 and all(r["train"]["tokens"] == 8192 for r in results)
    rows = json.loads((sub / "summary.json").read_text())["trials"]
    assert sorted((json.dumps(r["mixture"], sort_keys=True), r["seed"]) for r in rows) == \
        sorted((json.dumps(c["mixture"], sort_keys=True), s) for c in manifest["candidates"] for s in (0, 1))
    recipe = load_recipe(root / "recipe.yaml")
    v = recipe.verification
    assert v is not None and v.tokens == 8192 and [c.label for c in v.candidates][0] == "recommended"
    rec = v.candidates[0]
    assert rec.mixture == pytest.approx({d: p.share for d, p in recipe.domains.items()}, abs=1e-9)
    for c in v.candidates:
        assert all(x is not None for x in c.values["target"] + c.values["general"]), c.label
        assert c.mean["target"] == pytest.approx(np.mean(c.values["target"]))
        assert set(c.predicted) == {"target", "general"}
    assert rec.predicted["target"].value == pytest.approx(recipe.predicted.at_proxy_scale.target.value)
    assert {(c.baseline, c.metric) for c in v.comparisons} >= {("prior (trial 0)", "target"), ("uniform", "general")}
    assert v.coverage is None and sorted(v.ranking) == sorted(c.label for c in v.candidates)
    assert "verify: at 8.19e3 tokens, 2 seeds: the recommendation ranks" in out.stdout

    before = {p: p.stat().st_mtime for p in (sub / "trials").glob("*/result.json")}
    again = autotune("verify", str(space))
    assert "all 6 runs done" in again.stdout
    assert {p: p.stat().st_mtime for p in (sub / "trials").glob("*/result.json")} == before
    autotune("extrapolate", str(root), quiet=False)
    kept = load_recipe(root / "recipe.yaml").verification
    assert kept is not None and kept.ranking == v.ranking
    autotune("report", str(root), "--out", str(tmp_path / "report"), quiet=False)
    html = (tmp_path / "report" / "index.html").read_text()
    assert "Verification" in html and "recommended" in html


def test_dry_run_shows_the_verification(tmp_path):
    path = write_space(tmp_path, tiny_space(verify={"tokens_factor": 3, "seeds": 2, "baselines": ["uniform"]}))
    r = CliRunner().invoke(app, ["search", str(path), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "verify (autotune verify, after the recipe): up to 2 mixtures x 2 seeds at 12,288 tokens (12 steps)" \
        in r.output.replace("\n", " ")


def test_a_best_trial_schedule_takes_the_trials_own_decay_fraction(tmp_path):
    """recipe.yaml chose the best trial's schedule: verify trains that trial's decay fraction, not the full run's
    rounded plan; a trial that did not record it takes the space's range's low end (no traceback)."""
    from types import SimpleNamespace

    from autotune.search.verify import recommended

    space = load_space(write_space(tmp_path, tiny_space(schedule={"kind": "wsd", "decay_fraction": {"low": 0.2,
                                                                                                   "high": 0.5}})))
    sched = SimpleNamespace(kind="wsd", peak_lr=1e-3, warmup_fraction=0.02, decay_fraction=0.3333337,
                            final_lr_ratio=0.0, decay_shape="linear", chosen_by="best_trial", candidates=[])
    recipe = SimpleNamespace(schedule=sched, domains={}, provenance=SimpleNamespace(best_trial={"trial": 3}))
    own = TrialRecord(number=3, state="complete", schedule={"decay_fraction": 0.41})
    assert recommended(recipe, space, [own])["schedule"]["decay_fraction"] == 0.41
    bare = TrialRecord(number=3, state="complete", schedule={})
    assert recommended(recipe, space, [bare])["schedule"]["decay_fraction"] == 0.2
