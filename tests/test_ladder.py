"""Scale transfer (issue 6, item 3): power laws in tokens, rank agreement between rungs, warnings, the
``ladder`` section of recipe.yaml, the ``ladder:`` / ``extrapolate:`` space sections, and ``autotune ladder``
end to end on the real loop (demo data, a tiny Llama, lm-eval tasks, Optuna storage)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from autotune.cli import app
from autotune.config.space import Objective, SearchSpace, load_space
from autotune.errors import UserError
from autotune.extrapolate import build_recipe, load_recipe, write_recipe
from autotune.extrapolate.ladder import (
    ALPHA_PRIOR,
    analyze,
    decision_metrics,
    fit_power_law,
    higher_is_better,
    rank_agreement,
)
from autotune.extrapolate.study_data import load_ladder
from autotune.records import TrialRecord
from autotune.search.ladder import choose_trials
from autotune.search.study import space_identity
from autotune.testing import make_study, tiny_space, tiny_suite, write_space

TOKENS = [100_000, 200_000, 400_000, 800_000]


def law(E, A, alpha, tokens, d0=None):
    t = np.asarray(tokens, float)
    return np.asarray(E)[:, None] + np.asarray(A)[:, None] * (t / (d0 or t[0]))[None, :] ** -alpha


def mixtures(n):
    return [{"label": f"trial {i}", "trial": i, "prior": i == 0, "mixture": {"a": 0.5, "b": 0.5},
             "schedule": {"kind": "wsd"}, "seed": 0} for i in range(n)]


# ----------------------------------------------------------------------------------------------- fits
def test_shared_alpha_is_recovered_from_noisy_rungs():
    rng = np.random.default_rng(0)
    E, A = rng.uniform(2.0, 2.5, 6), rng.uniform(0.5, 1.5, 6)
    Y = law(E, A, 0.35, TOKENS) + 1e-3 * rng.standard_normal((6, 4))
    fit = fit_power_law(TOKENS, Y)
    assert fit.method == "shared_alpha" and not fit.alpha_at_bound
    assert fit.alpha == pytest.approx(0.35, abs=0.03)
    assert fit.rmse < 2e-3 and fit.points == 24
    # the prediction at 100x the largest rung carries the truth within a few noise units
    truth = law(E, A, 0.35, [TOKENS[0], 8e7])[:, 1]
    assert np.max(np.abs(fit.predict(8e7) - truth)) < 0.03


def test_three_rungs_noise_free_is_exact_and_rising_scores_fit_too():
    """Three rungs (the usual ladder) identify one shared alpha; A may be negative (a score that rises)."""
    E, A = np.array([0.30, 0.25, 0.40, 0.20]), np.array([-0.2, -0.1, -0.3, -0.05])
    tokens = TOKENS[:3]
    fit = fit_power_law(tokens, law(E, A, 0.5, tokens))
    assert fit.alpha == pytest.approx(0.5, rel=1e-3)
    assert np.allclose(fit.E, E, atol=1e-4) and np.allclose(fit.A, A, atol=1e-4)


def test_two_rungs_fix_alpha_and_missing_points_are_skipped():
    Y = np.array([[3.0, 2.8], [3.1, np.nan], [2.9, 2.85]])
    fit = fit_power_law(TOKENS[:2], Y)
    assert fit.method == "fixed_alpha" and fit.alpha == ALPHA_PRIOR
    assert math.isnan(fit.E[1]) and np.isfinite(fit.E[[0, 2]]).all()
    assert fit.rmse == pytest.approx(0.0, abs=1e-12)  # two points, two parameters
    # carried forward: the faster-improving mixture ends lower
    pred = fit.predict(1e9)
    assert pred[0] < pred[2] and math.isnan(pred[1])
    with pytest.raises(ValueError, match="increasing"):
        fit_power_law([2e5, 1e5], Y)


def test_rank_agreement_known_values():
    assert rank_agreement([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx((0.8, 2 / 3, 4))
    assert rank_agreement([1, 2, 3], [3, 2, 1])[:2] == pytest.approx((-1.0, -1.0))
    assert rank_agreement([1, 2, np.nan, 4], [2, 3, 1, 5]) == pytest.approx((1.0, 1.0, 3))
    assert rank_agreement([1, 1, 1], [1, 2, 3]) == (None, None, 3)
    assert rank_agreement([1, 2], [5, 4]) == (-1.0, -1.0, 2)


# ----------------------------------------------------------------------------------------------- analysis
def test_consistent_ranks_give_no_warning():
    E, A = np.array([2.0, 2.1, 2.2, 2.3]), np.array([1.0, 1.0, 1.0, 1.0])
    tokens = TOKENS[:3]
    sec = analyze(tokens, mixtures(4), {"bpb/math": law(E, A, 0.4, tokens)}, {"bpb/math": False},
                  decision=["bpb/math"], target_tokens=1e9)
    m = sec["metrics"]["bpb/math"]
    assert sec["agree"] and m["agree"] and sec["warnings"] == []
    assert all(p["kendall"] == pytest.approx(1.0) and p["n"] == 4 for p in m["pairs"])
    assert [p["b"] for p in m["pairs"]][-1] == "extrapolated"
    assert set(m["best"].values()) == {"trial 0"}  # lowest bpb is best
    assert m["fit"]["alpha"] == pytest.approx(0.4, rel=1e-3)


def test_rank_flip_between_rungs_is_a_loud_warning():
    # trials 0 and 1 swap between the first and the last rung; trial 2 stays last
    Y = np.array([[0.10, 0.12, 0.13], [0.08, 0.12, 0.16], [0.01, 0.02, 0.03]])
    sec = analyze(TOKENS[:3], mixtures(3), {"target": Y, "bpb/code": -Y}, {"target": True, "bpb/code": False},
                  decision=["target"])
    assert not sec["agree"] and not sec["metrics"]["target"]["agree"]
    text = "\n".join(sec["warnings"])
    assert "LADDER" in text and "by target" in text and "Kendall tau 0.33" in text
    assert "best mixture by target changes" in text and "trial 0 at 100,000" in text and "trial 1 at 400,000" in text
    assert sec["metrics"]["target"]["regret"] == pytest.approx(0.03)  # trial 0's 0.13 against trial 1's 0.16
    assert "at 400,000 tokens trial 0, the best at 100,000, is 0.03 worse than trial 1 (the 3 mixtures span 0.13)" in text
    # the same flip on a metric the study does not decide by is recorded, not warned about
    assert not sec["metrics"]["bpb/code"]["agree"] and "bpb/code" not in text


def test_swaps_inside_the_seed_noise_are_counted():
    Y = np.array([[0.100, 0.110], [0.101, 0.109], [0.300, 0.320]])
    sec = analyze(TOKENS[:2], mixtures(3), {"target": Y}, {"target": True}, decision=["target"],
                  noise_std={"target": 0.01}, search_rung=TOKENS[0])
    assert "1 of the 1 swapped pairs differ by less than the seed noise" in sec["warnings"][0]
    assert "the best mixture is the same at every rung" in sec["warnings"][0]
    assert sec["metrics"]["target"]["regret"] == 0.0
    sec = analyze(TOKENS[:2], mixtures(3), {"target": Y}, {"target": True}, decision=["target"],
                  noise_std={"target": 1e-5})
    assert "0 of the 1 swapped pairs" in sec["warnings"][0]


def test_curves_that_cross_beyond_the_ladder_warn_at_the_extrapolation():
    """Trial 0 is lower at every rung but flattens out: its asymptote E is above trial 1's."""
    tokens = TOKENS[:3]
    Y = law([2.0, 1.8, 2.6], [0.5, 1.0, 0.5], 0.5, tokens)
    assert (Y[0] < Y[1]).all()
    sec = analyze(tokens, mixtures(3), {"bpb/math": Y}, {"bpb/math": False}, decision=["bpb/math"], target_tokens=1e10)
    m = sec["metrics"]["bpb/math"]
    assert all(p["kendall"] == pytest.approx(1.0) for p in m["pairs"] if p["b"] != "extrapolated")
    assert m["best"]["extrapolated"] == "trial 1" and m["best"][str(tokens[-1])] == "trial 0"
    assert not m["agree"] and any("predict another bpb/math ranking" in w and "best trial 1 instead of trial 0" in w
                                  and "(25,000x the largest rung)" in w for w in sec["warnings"])


def test_orientation_and_decision_metrics():
    assert higher_is_better("target") and higher_is_better("demo_math_mc/acc") and higher_is_better("x/acc:chance")
    assert not higher_is_better("bpb/math") and not higher_is_better("wikitext/word_perplexity")
    assert decision_metrics(Objective(maximize="target", subject_to="general >= base - 0.01")) == ["target", "general"]
    assert decision_metrics(Objective(maximize="target")) == ["target"]
    assert decision_metrics(Objective(pareto=["target", "general"])) == ["target", "general"]


def test_choose_trials_prior_then_best_feasible():
    rows = [{"trial": 0, "state": "complete", "prior": True, "seed": 0, "target": 0.1, "feasible": True, "mixture": {"a": 1}},
            {"trial": 1, "state": "complete", "prior": True, "seed": 1, "target": 0.3, "feasible": True, "mixture": {"a": 1}},
            {"trial": 2, "state": "complete", "target": 0.9, "feasible": False, "mixture": {"a": 1}},
            {"trial": 3, "state": "complete", "target": 0.5, "feasible": True, "mixture": {"a": 1}},
            {"trial": 4, "state": "fail", "target": None, "mixture": {}},
            {"trial": 5, "state": "complete", "target": 0.4, "feasible": True, "mixture": {"a": 1}}]
    trials = [TrialRecord.from_row(r) for r in rows]
    assert [t.number for t in choose_trials(trials, "target", 2)] == [0, 3, 5]
    assert [t.number for t in choose_trials(trials, "target", 3)] == [0, 3, 5, 2]


# ----------------------------------------------------------------------------------------------- recipe
def _synthetic_ladder(root: Path, flip: bool) -> None:
    """A ladder of 3 of the synthetic study's trials at 2 more rungs (its own proxy tokens are 40,960)."""
    summary = json.loads((root / "summary.json").read_text())
    chosen = summary["trials"][:3]
    rungs = [{"tokens": 40 * 1024, "requested": 40 * 1024, "dir": ".", "search": True}]
    lo, hi = min(r["target"] for r in chosen), max(r["target"] for r in chosen)
    for i, tokens in enumerate([80 * 1024, 160 * 1024]):
        step = 0.02 * (i + 1)
        rows = []
        for j, row in enumerate(chosen):
            target = (lo + hi - row["target"] if flip else row["target"]) + step  # flip: the ranking reversed
            rows.append({**row, "trial": j, "target": target, "general": row["general"] + step / 2,
                         "metrics": {k: v - step for k, v in row["metrics"].items()}})
        folder = root / "ladder" / f"synthetic-tokens-{tokens}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"base": summary["base"], "trials": rows}))
        rungs.append({"tokens": tokens, "requested": tokens, "dir": str(folder.relative_to(root)), "search": False})
    mix = [{"label": f"trial {r['trial']}", "trial": r["trial"], "prior": False, "mixture": r["mixture"],
            "schedule": r["schedule"], "seed": r["seed"]} for r in chosen]
    (root / "ladder" / "ladder.json").write_text(json.dumps({"version": 1, "min_kendall": 0.6, "rungs": rungs,
                                                             "mixtures": mix}))


@pytest.mark.slow
@pytest.mark.parametrize("flip", [False, True], ids=["consistent", "flipped"])
def test_recipe_gets_the_ladder_section_and_loads_back(tmp_path, flip):
    root = make_study(tmp_path / "synthetic", trials=4, failed=0)
    _synthetic_ladder(root, flip)
    data = load_ladder(root)
    assert data.tokens == [40960, 81920, 163840] and data.search_rung == 40960
    assert np.isfinite(data.values["target"]).all() and set(data.values) >= {"bpb/math", "bpb/code"}
    recipe = build_recipe(root, tokens=1e9, bootstrap=0, all_metrics=False)
    lad = recipe["ladder"]
    assert lad["rungs"] == [40960, 81920, 163840] and len(lad["mixtures"]) == 3
    assert lad["target_tokens"] == recipe["tokens"]
    target = lad["metrics"]["target"]
    assert target["decision"] and target["fit"]["method"] == "shared_alpha"
    assert [(p["a"], p["b"]) for p in target["pairs"]] == [(40960, 81920), (40960, 163840), (81920, 163840),
                                                           (163840, "extrapolated")]
    ladder_warnings = [w for w in recipe["warnings"] if w.startswith("LADDER")]
    if flip:
        assert not lad["agree"] and ladder_warnings and recipe["warnings"][: len(ladder_warnings)] == ladder_warnings
        assert target["pairs"][0]["kendall"] == pytest.approx(-1.0) and "by target" in ladder_warnings[0]
    else:
        assert all(p["kendall"] == pytest.approx(1.0) for p in target["pairs"][:3])
        assert lad["metrics"]["general"]["agree"]
    path = write_recipe(recipe, tmp_path / "recipe.yaml")
    assert load_recipe(path).model_dump(mode="json") == recipe
    # a broken ladder manifest or a missing rung is one clear error naming the file
    (root / "ladder" / "synthetic-tokens-81920" / "summary.json").unlink()
    with pytest.raises(UserError, match="summary of the ladder rung at 81920 tokens not found") as e:
        load_ladder(root)
    assert e.value.file.endswith("synthetic-tokens-81920/summary.json")
    (root / "ladder" / "ladder.json").write_text(json.dumps({"rungs": "x"}))
    with pytest.raises(UserError, match="ladder.json is malformed"):
        load_ladder(root)


# ----------------------------------------------------------------------------------------------- space and CLI
@pytest.mark.parametrize("ladder, field, expect", [
    ({"tokens": ["3e5", "1e5"]}, "ladder.tokens", "positive and increasing"),
    ({"tokens": [2048], "top_k": 1}, "ladder.top_k", "greater than or equal to 2"),
    ({"tokens": [100]}, None, "below one batch"),
    ({"tokens": [2048, 2500]}, None, "same number of steps"),
    ({"tokens": [2048], "min_kendall": 2}, "ladder.min_kendall", "less than or equal to 1"),
])
def test_bad_ladder_sections(tmp_path, ladder, field, expect):
    path = write_space(tmp_path, tiny_space(ladder=ladder))
    with pytest.raises(UserError, match=expect) as e:
        load_space(path)
    assert e.value.field == field and Path(e.value.file) == path
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and expect in result.output


def test_space_sections_parse_and_stay_out_of_the_study_identity(tmp_path):
    path = write_space(tmp_path, tiny_space(ladder={"tokens": ["2e3", 8192.0], "top_k": 3},
                                            extrapolate={"tokens": "2e10", "available_tokens": {"math": "5e8"}}))
    space = load_space(path)
    assert space.ladder.tokens == [2000, 8192] and space.ladder.top_k == 3 and space.ladder.min_kendall == 0.6
    assert space.extrapolate.tokens == 2e10 and space.extrapolate.available_tokens == {"math": 5e8}
    plain = SearchSpace.model_validate({**tiny_space(), "source_file": str(path)})
    assert space_identity(space) == space_identity(plain)  # adding or changing them never blocks a resume
    with pytest.raises(UserError, match="not a domain") as e:
        load_space(write_space(tmp_path / "b", tiny_space(extrapolate={"tokens": 1e9, "available_tokens": {"poetry": 1}})))
    assert "extrapolate.available_tokens.poetry" in str(e.value)


def test_ladder_cli_bad_input(tmp_path):
    runner = CliRunner()
    no_section = write_space(tmp_path / "a", tiny_space("nosection"))
    r = runner.invoke(app, ["ladder", str(no_section)])
    assert r.exit_code == 2 and "has no ladder section" in r.output
    never_run = write_space(tmp_path / "b", tiny_space("neverrun", ladder={"tokens": [2048]},
                                                       search={"runs_dir": str(tmp_path / "runs")}))
    r = runner.invoke(app, ["ladder", str(never_run)])
    assert r.exit_code == 2 and "no study has run for this space yet" in r.output and "neverrun" in r.output
    r = runner.invoke(app, ["ladder", str(never_run), "--set", "ladder.top_k=1"])
    assert r.exit_code == 2 and "ladder.top_k" in r.output
    study = make_study(tmp_path / "runs" / "synthetic", trials=3, failed=0)
    r = runner.invoke(app, ["ladder", str(study)])
    assert r.exit_code == 2 and "this is a study folder" in r.output
    r = runner.invoke(app, ["extrapolate", str(tmp_path / "runs" / "nope"), "--tokens", "1e9"])
    assert r.exit_code == 2 and "study folder not found" in r.output


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_ladder_end_to_end(tmp_path):
    """search (3 trials, recipe.yaml at its end) -> ladder at 2,048 (new) and 4,096 tokens (the search's own) with
    top_k 2 -> recipe.yaml rewritten with the ladder section; a rerun reuses every run."""
    spec = tiny_space("lad", trials=3, ladder={"tokens": [2048, 4096], "top_k": 2},
                      extrapolate={"tokens": 1e6, "available_tokens": {"math": 2e5}})
    space = write_space(tmp_path, spec, tiny_suite(limit=8))
    env = {**os.environ, "COLUMNS": "200"}

    def autotune(*args):
        proc = subprocess.run([sys.executable, "-m", "autotune.cli", *args, "--quiet"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=400, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        return proc

    autotune("search", str(space))
    root = tmp_path / "runs" / "lad"
    assert load_recipe(root / "recipe.yaml").ladder is None  # the end-of-search recipe, before any ladder

    out = autotune("ladder", str(space))
    assert "rank agreement" in out.stdout and "recipe:" in out.stdout
    manifest = json.loads((root / "ladder" / "ladder.json").read_text())
    assert [r["tokens"] for r in manifest["rungs"]] == [2048, 4096]
    assert [m["prior"] for m in manifest["mixtures"]] == [True, False, False]
    rung = root / "ladder" / "lad-tokens-2048"
    assert len(list((rung / "trials").glob("*/result.json"))) == 3
    # the rung's runs trained 2,048 tokens on exactly the chosen mixtures and seeds
    rows = json.loads((rung / "summary.json").read_text())["trials"]
    assert sorted(json.dumps(r["mixture"], sort_keys=True) for r in rows) == \
        sorted(json.dumps(m["mixture"], sort_keys=True) for m in manifest["mixtures"])
    for result in (rung / "trials").glob("*/result.json"):
        assert json.loads(result.read_text())["train"]["tokens"] == 2048

    recipe = load_recipe(root / "recipe.yaml")
    lad = recipe.ladder
    assert lad is not None and lad.rungs == [2048, 4096] and lad.search_rung == 4096 and len(lad.mixtures) == 3
    assert lad.target_tokens == recipe.tokens
    for metric in ("target", "general", "bpb/math", "bpb/code", "bpb/general"):
        rec = lad.metrics[metric]
        assert all(v is not None for vals in rec.values.values() for v in vals), metric
        assert rec.fit.method == "fixed_alpha"  # two rungs
        first = rec.pairs[0]
        assert (first.a, first.b, first.n) == (2048, 4096, 3) and -1 <= first.kendall <= 1 and -1 <= first.spearman <= 1
    assert [w for w in recipe.warnings if w.startswith("LADDER")] == lad.warnings
    assert lad.agree == (lad.warnings == [])
    print(yaml.safe_dump({m: [(p.b, p.kendall, p.spearman) for p in r.pairs] for m, r in lad.metrics.items()}))

    # a rerun finds every run done: nothing is trained again
    before = {p: p.stat().st_mtime for p in (rung / "trials").glob("*/result.json")}
    again = autotune("ladder", str(space))
    assert "all 3 runs done" in again.stdout
    assert {p: p.stat().st_mtime for p in (rung / "trials").glob("*/result.json")} == before
