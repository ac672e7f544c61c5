"""Every prediction says its scale: recipe.yaml, the console and the report label each predicted number
"at proxy scale (N tokens)" or "at full scale (N tokens)"; a full-scale value exists only where the ladder's
power law in tokens carries it there; intervals are checked on the CV residuals; version-1 recipes load."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from autotune.cli import app
from autotune.extrapolate import load_recipe
from autotune.extrapolate.recipe import _calibrate, prediction_lines, scale_label
from autotune.extrapolate.recipe_model import RECIPE_VERSION, V1_NOTE
from autotune.report import write_report
from autotune.testing import make_study

PROXY_TOKENS = 40 * 1024  # the synthetic study's proxy.tokens
RUN_TOKENS = 1024 * 1024 * 1024  # whole steps of its 1,024 batch tokens
OLD_RECIPE = Path(__file__).parent / "data" / "old_recipes" / "recipe_v1.yaml"
# the synthetic ladder: every mixture gains C * (1 - (D / PROXY_TOKENS) ** -ALPHA) over its search score
C, ALPHA = 0.05, 0.3


def _ladder(root: Path) -> None:
    """3 of the study's trials re-run at 2 more rungs, their scores on an exact power law in tokens."""
    summary = json.loads((root / "summary.json").read_text())
    chosen = summary["trials"][:3]
    rungs = [{"tokens": PROXY_TOKENS, "requested": PROXY_TOKENS, "dir": ".", "search": True}]
    for tokens in (2 * PROXY_TOKENS, 4 * PROXY_TOKENS):
        gain = C * (1 - (tokens / PROXY_TOKENS) ** -ALPHA)
        rows = [{**row, "trial": j, "target": row["target"] + gain, "general": row["general"] + gain / 2}
                for j, row in enumerate(chosen)]
        folder = root / "ladder" / f"synthetic-tokens-{tokens}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"base": summary["base"], "trials": rows}))
        rungs.append({"tokens": tokens, "requested": tokens, "dir": str(folder.relative_to(root)), "search": False})
    mix = [{"label": f"trial {r['trial']}", "trial": r["trial"], "prior": False, "mixture": r["mixture"],
            "schedule": r["schedule"], "seed": r["seed"]} for r in chosen]
    (root / "ladder" / "ladder.json").write_text(json.dumps({"version": 1, "min_kendall": 0.6, "rungs": rungs,
                                                             "mixtures": mix}))


def _predictions(node, path=()):
    """Every mapping of recipe.yaml holding a predicted ``value``, with its path."""
    if isinstance(node, dict):
        if "value" in node and "model" in node:
            yield path, node
        for k, v in node.items():
            yield from _predictions(v, (*path, k))


def _check_study(study: Path, tmp_path: Path, *, ladder: bool) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["extrapolate", str(study), "--tokens", str(RUN_TOKENS)])
    assert out.exit_code == 0, out.output
    data = yaml.safe_load((study / "recipe.yaml").read_text())
    assert data["recipe_version"] == RECIPE_VERSION == 2 and "predicted_metrics" not in data
    pred = data["predicted"]
    proxy, full = pred["at_proxy_scale"], pred["at_full_scale"]
    assert proxy["tokens"] == PROXY_TOKENS and set(proxy["metrics"]) == {"bpb/math", "bpb/code"}
    printed = [(scale_label("proxy", PROXY_TOKENS), key, proxy[key]) for key in ("target", "general")]
    # YAML: each predicted score sits under its scale, next to that scale's tokens, nowhere else
    found = list(_predictions(data))
    if ladder:
        assert full["tokens"] == data["tokens"] == RUN_TOKENS
        printed += [(scale_label("full", RUN_TOKENS), key, full[key]) for key in ("target", "general")]
        for key in ("target", "general"):
            law = full["laws"][key]
            assert law["rungs"] == [PROXY_TOKENS, 2 * PROXY_TOKENS, 4 * PROXY_TOKENS]
            assert law["mixtures"] == ["trial 0", "trial 1", "trial 2"] and law["method"] == "shared_alpha"
            assert law["from_tokens"] == PROXY_TOKENS and law["to_tokens"] == RUN_TOKENS
            assert law["alpha"] == pytest.approx(ALPHA, rel=1e-3)
            # the law's gain from the proxy's tokens to the full run's, on top of the proxy-scale prediction
            gain = C * (1 - (RUN_TOKENS / PROXY_TOKENS) ** -ALPHA) * (1 if key == "target" else 0.5)
            assert full[key]["value"] == pytest.approx(proxy[key]["value"] + gain, abs=1e-6)
            assert full[key]["low"] <= full[key]["value"] <= full[key]["high"]
            assert full[key]["low"] <= proxy[key]["low"] + gain + 1e-9
        assert "carried from the proxy's 4.1e4 tokens by the ladder's power law" in pred["full_scale_note"]
    else:
        assert full is None and "no fitted law carries" in pred["full_scale_note"]
    assert sorted(p for p, _ in found) == sorted(("predicted", scale, key) for scale, key in
                                                 [("at_proxy_scale", "target"), ("at_proxy_scale", "general")]
                                                 + ([("at_full_scale", "target"), ("at_full_scale", "general")]
                                                    if ladder else []))
    # the console: a line per prediction with its label and value; every line with "predicted" is labelled
    lines = out.output.splitlines()
    for label, key, p in printed:
        want = f"predicted {key} {label}: {p['value']:.4g} [{p['low']:.4g}, {p['high']:.4g}]"
        assert any(line.startswith(want) for line in lines), (want, out.output)
    pred_lines = [line for line in lines if line.startswith("predicted ")]
    assert len(pred_lines) == len(printed)
    assert all(re.search(r"at (proxy|full) scale \(\S+ tokens\)", line) for line in pred_lines)
    assert any(line.startswith("no full-scale prediction:") for line in lines) != ladder
    # the report: a row per prediction with its label and value, and the full-scale line
    page = html.unescape(write_report(study, tmp_path / "report").read_text())
    rows = re.findall(r"<tr>(.*?)</tr>", page[page.index("Predicted scores"):], flags=re.S)
    for label, key, p in printed:
        assert any(f"<td>{label}</td><td>{key}</td><td class=\"num\">{p['value']:.4g}</td>" in r for r in rows), label
    assert ("no full-scale prediction:" in page) != ladder


@pytest.mark.slow
def test_every_prediction_labelled_with_its_scale_without_a_ladder(tmp_path):
    study = make_study(tmp_path / "runs" / "synthetic", trials=8, seed=1, failed=0)
    _check_study(study, tmp_path, ladder=False)


@pytest.mark.slow
def test_the_ladder_law_carries_the_predictions_to_full_scale(tmp_path):
    study = make_study(tmp_path / "runs" / "synthetic", trials=8, seed=1, failed=0)
    _ladder(study)
    _check_study(study, tmp_path, ladder=True)


def test_a_version_1_recipe_loads_its_predictions_at_proxy_scale(tmp_path):
    rec = load_recipe(OLD_RECIPE)
    old = yaml.safe_load(OLD_RECIPE.read_text())
    assert old["recipe_version"] == 1 and rec.recipe_version == RECIPE_VERSION
    proxy = rec.predicted.at_proxy_scale
    assert proxy.tokens is None and rec.predicted.at_full_scale is None
    assert proxy.target.value == old["predicted"]["target"]["value"]
    assert proxy.general.high == old["predicted"]["general"]["high"]
    assert proxy.metrics == old["predicted_metrics"]
    assert rec.warnings[-1] == V1_NOTE == rec.predicted.full_scale_note
    lines = prediction_lines(rec)
    assert lines[0].startswith(f"predicted target at proxy scale (tokens not recorded): {proxy.target.value:.4g}")
    assert lines[-1] == f"no full-scale prediction: {V1_NOTE}"
    # the report of a study holding an old recipe labels it too
    study = make_study(tmp_path / "runs" / "synthetic", trials=4, failed=0)
    shutil.copy(OLD_RECIPE, study / "recipe.yaml")
    page = html.unescape(write_report(study, tmp_path / "report").read_text())
    assert f"<td>at proxy scale (tokens not recorded)</td><td>target</td><td class=\"num\">{proxy.target.value:.4g}" in page


def test_calibration_counts_and_widens_by_split_conformal():
    y = np.zeros(10)
    oof = np.array([0.0, 0.01, -0.01, 0.02, -0.02, 0.05, -0.06, 0.08, 0.1, -0.2])  # residuals y - oof
    # raw interval value -+ 0.03: residuals within [-0.03, 0.03] are inside: 5 of 10, below 90%
    cal = _calibrate(0.5, 0.47, 0.53, 0.9, y, oof)
    assert (cal.held_out, cal.inside, cal.coverage) == (10, 5, 0.5) and cal.calibrated
    # q: the ceil(11 * 0.9) = 10th smallest |residual|, 0.2
    assert cal.conformal_half_width == pytest.approx(0.2) and cal.calibrated_inside == 10
    assert (cal.raw_low, cal.raw_high) == (0.47, 0.53)
    wide = _calibrate(0.5, 0.0, 1.0, 0.9, y, oof)  # already covering: not widened
    assert wide.inside == 10 and not wide.calibrated
    few = _calibrate(0.5, 0.49, 0.51, 0.9, y[:5], oof[:5])  # ceil(6 * 0.9) = 6 > 5: no finite quantile
    assert few.conformal_half_width is None and not few.calibrated
    assert _calibrate(0.5, 0.4, 0.6, 0.9, y, None) is None
    assert math.isclose(cal.coverage, cal.inside / cal.held_out)


@pytest.mark.slow
def test_recipe_records_coverage_and_uses_the_widened_interval(tmp_path):
    from autotune.extrapolate import build_recipe

    study = make_study(tmp_path / "synthetic")
    r = build_recipe(study, tokens=1e9, bootstrap=8, all_metrics=False)
    for key in ("target", "general"):
        p = r["predicted"]["at_proxy_scale"][key]
        c = p["calibration"]
        assert c["held_out"] == 12 and 0 <= c["inside"] <= 12 and c["coverage"] == c["inside"] / 12
        if c["calibrated"]:
            assert c["coverage"] < 0.9 and c["calibrated_inside"] >= c["inside"]
            assert p["low"] <= c["raw_low"] and p["high"] >= c["raw_high"]
            assert p["high"] - p["low"] >= 2 * c["conformal_half_width"] - 1e-12
        else:
            assert (p["low"], p["high"]) == (c["raw_low"], c["raw_high"])
