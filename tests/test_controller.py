"""The controller on a real Optuna SQLite storage, with synthetic scores (no training): every sampler, the
constraint and Pareto objectives, and duplicate proposals answered from the earlier run."""

from __future__ import annotations

import optuna
import pytest

from autotune.config.run import SAMPLERS
from autotune.config.space import load_space
from autotune.objective import Score
from autotune.search.controller import Controller
from autotune.testing import tiny_space, write_space


def _space(tmp_path, **search):
    spec = tiny_space("ctl", trials=8)
    spec["mixture"] = {"math": {"max": 0.7}, "code": {"min": 0.05, "max": 0.6}, "general": {"min": 0.1},
                       "floors": {"general": 0.2}, "prior": {"math": 0.3, "code": 0.2, "general": 0.5}}
    spec["search"].update(search)
    return load_space(write_space(tmp_path, spec))


def _fake_score(mix: dict[str, float], floor: float = -0.05) -> Score:
    target, general = mix["math"] + 0.5 * mix["code"], mix["general"] - 0.5
    return Score(target=target, general=general, values=(target,), constraint=floor - general)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_proposes_mixtures_inside_bounds_and_floors(tmp_path, sampler):
    space = _space(tmp_path, sampler=sampler, storage="sqlite")
    ctl = Controller(space, tmp_path / "study")
    ctl.enqueue_prior()
    seen = []
    for i in range(8):
        asked = ctl.ask()
        mix = asked.proposal.mixture
        if i == 0:
            assert mix == pytest.approx(space.mixture.prior)  # the prior runs first
        space.check_mixture(mix, f"{sampler} trial {i}")  # raises when outside bounds or floors
        assert mix["general"] >= 0.2 - 1e-9
        assert set(asked.proposal.schedule) == {"kind", "peak_lr", "warmup_fraction", "decay_fraction", "final_lr_ratio",
                                                "decay_shape", "start_lr"}
        seen.append(tuple(round(v, 6) for v in mix.values()))
        ctl.tell_score(asked.trial, _fake_score(mix), {})
    assert len(set(seen)) == len(seen)  # no repeated proposals
    assert ctl.finished() == 8
    best = ctl.study.best_trial  # feasible by the constraint
    assert max(best.constraints.values()) <= 0


def test_pareto_objective_has_two_directions(tmp_path):
    spec = tiny_space("pareto")
    spec["objective"] = {"pareto": ["target", "general"]}
    space = load_space(write_space(tmp_path, spec))
    ctl = Controller(space, tmp_path / "study")
    assert ctl.study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    for _ in range(4):
        asked = ctl.ask()
        mix = asked.proposal.mixture
        ctl.tell_score(asked.trial, Score(target=mix["math"], general=mix["general"], values=(mix["math"], mix["general"]),
                                          constraint=None), {})
    assert ctl.study.best_trials  # the Pareto front


@pytest.mark.slow
def test_duplicate_proposal_is_answered_from_the_earlier_run(tmp_path, monkeypatch):
    """Two trials with the same proposal: the second reuses the first one's folder and launches nothing."""
    from autotune.search.study import Study

    monkeypatch.chdir(tmp_path)
    space = load_space(write_space(tmp_path, tiny_space("dup")))
    study = Study(space)
    study.prepare()

    class CountingLauncher:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def run(self, job_file, on_progress, timeout_s=None):
            self.calls += 1
            return self.inner.run(job_file, on_progress, timeout_s)

    study.launcher = CountingLauncher(study.launcher)
    ctl = study.controller()
    asked = ctl.ask()
    folder1, r1 = study.run(asked.proposal, "first")
    folder2, r2 = study.run(asked.proposal, "again")
    assert study.launcher.calls == 1 and folder1 == folder2 and r1.metrics == r2.metrics and r1.ok
