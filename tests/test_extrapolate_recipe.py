"""recipe.yaml from a small synthetic study: consistent numbers, loads back, refuses what it should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from autotune.errors import UserError
from autotune.extrapolate import (
    HARD_MAX_EPOCHS,
    Recipe,
    build_recipe,
    extrapolate_study,
    load_recipe,
    write_recipe,
)
from autotune.testing import SYNTHETIC_SPACE, make_study


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("runs") / "synthetic")


@pytest.fixture(scope="module")
def recipe(study) -> dict:
    return build_recipe(study, tokens=1e9 + 123, available_tokens={"math": 5e7, "code": 1e9}, bootstrap=8,
                        all_metrics=False)


@pytest.mark.slow
def test_numbers_are_consistent(recipe):
    r = Recipe.model_validate(recipe)
    assert r.batch_tokens == 1024 and r.requested_tokens == 1e9 + 123
    assert r.tokens == (int(1e9 + 123) // 1024) * 1024 == r.schedule.total_steps * r.batch_tokens
    assert sum(d.tokens for d in r.domains.values()) == r.tokens
    assert sum(d.share for d in r.domains.values()) == pytest.approx(1.0)
    for name, d in r.domains.items():
        assert d.tokens == pytest.approx(d.share * r.tokens, abs=1)
        if name in ("math", "code"):
            assert d.epochs == pytest.approx(d.tokens / d.available_tokens)
        else:
            assert d.available_tokens is None and d.epochs is None
    s = r.schedule
    assert s.warmup_steps + s.stable_steps + s.decay_steps == s.total_steps
    assert s.warmup_steps == round(0.05 * s.total_steps)
    assert s.kind in ("wsd", "cosine") and s.chosen_by == "multi_power_law" and s.law is not None
    assert s.final_lr == pytest.approx(s.final_lr_ratio * s.peak_lr)
    assert 3e-4 <= s.peak_lr <= 1e-2


@pytest.mark.slow
def test_mixture_honours_the_space_and_the_epoch_cap(recipe):
    d = recipe["domains"]
    assert d["math"]["share"] <= 0.7 + 1e-9 and d["code"]["share"] <= 0.6 + 1e-9
    assert d["general"]["share"] >= 0.1 - 1e-9
    # math has 5e7 tokens: at most 4 epochs = 2e8 of 1e9 tokens, a 0.2 share (the target wants more)
    assert d["math"]["epochs"] <= 4.0 + 1e-6
    assert recipe["provenance"]["optimizer"]["epoch_cap"] == 4.0


@pytest.mark.slow
def test_predictions_and_provenance(recipe):
    for key in ("target", "general"):
        p = recipe["predicted"]["at_proxy_scale"][key]
        assert p["low"] <= p["value"] <= p["high"] and p["bootstrap_samples"] > 0 and p["model"]
    prov = recipe["provenance"]
    assert prov["trials_used"] == list(range(12)) and prov["trials_failed"] == [12]
    assert set(prov["models"]) == {"target", "general"}
    target_model = prov["models"]["target"]
    assert target_model["model"].endswith("own_share") and target_model["folds"] == 5
    assert all(set(v) == {"spearman", "rmse"} for v in target_model["cv"].values())
    assert prov["optimizer"]["feasible"] and prov["optimizer"]["peak_lr_covariate"]
    # the known structure: target rises with math + code, general with general; the floor is -0.05
    assert recipe["predicted"]["at_proxy_scale"]["general"]["value"] >= -0.05 - 1e-9


@pytest.mark.slow
def test_writes_and_loads_back(recipe, tmp_path):
    path = write_recipe(recipe, tmp_path / "recipe.yaml", command="autotune extrapolate runs/synthetic --tokens 1e9")
    text = path.read_text()
    assert text.startswith("# autotune extrapolate runs/synthetic --tokens 1e9\n")
    loaded = load_recipe(path)
    assert loaded.model_dump(mode="json") == recipe
    with pytest.raises(ValidationError):  # frozen
        loaded.tokens = 1
    data = yaml.safe_load(text)
    data["domains"]["math"]["tokens"] += 1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="domain tokens sum"):
        load_recipe(tmp_path / "bad.yaml")


@pytest.mark.slow
def test_more_than_16_epochs_refused_unless_forced(study):
    # general has a 0.1 floor: 1e8 of 1e9 tokens from 1e6 available is 100 epochs whatever the mixture
    with pytest.raises(UserError, match=f"beyond {HARD_MAX_EPOCHS:g} epochs") as e:
        build_recipe(study, tokens=1e9, available_tokens={"general": 1e6}, bootstrap=0, all_metrics=False)
    assert e.value.field == "available_tokens"
    forced = build_recipe(study, tokens=1e9, available_tokens={"general": 1e6}, force=True, bootstrap=0,
                          all_metrics=False)
    assert forced["domains"]["general"]["epochs"] > HARD_MAX_EPOCHS
    assert any("forced" in w for w in forced["warnings"])
    assert any("epochs" in w for w in forced["warnings"])


@pytest.mark.parametrize("kwargs, field", [
    ({"tokens": 0}, "tokens"),
    ({"tokens": 100}, "tokens"),  # under one batch
    ({"tokens": 1e9, "available_tokens": {"poetry": 1e9}}, "available_tokens"),
    ({"tokens": 1e9, "available_tokens": {"math": -1}}, "available_tokens.math"),
    ({"tokens": 1e9, "max_epochs": 0}, "max_epochs"),
])
def test_bad_input_names_the_field(study, kwargs, field):
    with pytest.raises(UserError) as e:
        build_recipe(study, bootstrap=0, all_metrics=False, **kwargs)
    assert e.value.field == field


def test_bad_study_folders(tmp_path):
    with pytest.raises(UserError, match="study folder not found"):
        build_recipe(tmp_path / "nope", tokens=1e9)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="space.json not found"):
        build_recipe(tmp_path / "empty", tokens=1e9)
    few = make_study(tmp_path / "few", trials=2)
    with pytest.raises(UserError, match="at least 3 complete trials"):
        build_recipe(few, tokens=1e9)
    (few / "summary.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        build_recipe(few, tokens=1e9)


@pytest.mark.slow
def test_extrapolate_study_writes_recipe_yaml(tmp_path):
    study = make_study(tmp_path / "runs" / "synthetic", trials=8, seed=1, failed=0)
    path = extrapolate_study(study, 2e8, {"code": 5e8}, 4.0, False, bootstrap=0)
    assert path == study / "recipe.yaml"
    r = load_recipe(path)
    assert r.study == "synthetic" and r.domains["code"].epochs == pytest.approx(r.domains["code"].tokens / 5e8)
    assert r.predicted.at_proxy_scale.target.low is None  # no bootstrap asked for


@pytest.mark.slow
def test_cli_takes_the_full_run_from_the_space_files_extrapolate_section(tmp_path):
    """`autotune extrapolate runs/<study>` without --tokens reads the `extrapolate:` section of the space
    file the study was started from; without one (or without a study) it says what to give, exit 2."""
    import yaml
    from typer.testing import CliRunner

    from autotune.cli import app

    study = make_study(tmp_path / "runs" / "synthetic", trials=8, seed=1, failed=0)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(SYNTHETIC_SPACE))
    doc = json.loads((study / "space.json").read_text())
    (study / "space.json").write_text(json.dumps({**doc, "source_file": str(space_file)}))
    runner = CliRunner()
    missing = runner.invoke(app, ["extrapolate", str(study)])
    assert missing.exit_code == 2 and "extrapolate:" in missing.output and "--tokens" in missing.output
    space_file.write_text(yaml.safe_dump({**SYNTHETIC_SPACE, "extrapolate": {"tokens": 3e8, "available_tokens": {"code": 5e8}}}))
    done = runner.invoke(app, ["extrapolate", str(study)])
    assert done.exit_code == 0, done.output
    r = load_recipe(study / "recipe.yaml")
    assert r.tokens == pytest.approx(3e8, rel=1e-5) and r.domains["code"].epochs == pytest.approx(r.domains["code"].tokens / 5e8)
    assert runner.invoke(app, ["extrapolate", str(tmp_path / "nowhere")]).exit_code == 2
