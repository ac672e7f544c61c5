"""Multi-Power Law: exact schedules, recovery of a synthetic law, the paper's curves (a slice), choice."""

from __future__ import annotations

import numpy as np
import pytest

from autotune.extrapolate.schedule import (
    LossCurve,
    MultiPowerLaw,
    choose_schedule,
    detect_warmup,
    fit_multi_power_law,
    relative_errors,
    schedule_lrs,
)
from autotune.testing import MPL, mpl_table
from autotune.train.schedules import ScheduleParams, lr_curve


@pytest.mark.parametrize("kind", ["wsd", "cosine", "linear", "constant"])
@pytest.mark.parametrize("total", [1, 7, 100])
@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_vectorised_schedules_equal_the_trainers(kind, total, shape):
    p = ScheduleParams(kind=kind, peak_lr=2e-3, warmup_fraction=0.1, decay_fraction=0.3, final_lr_ratio=0.1,
                       decay_shape=shape)
    np.testing.assert_allclose(schedule_lrs(kind, total, 2e-3, 0.1, 0.3, 0.1, shape), lr_curve(total, p), rtol=1e-12)


def test_detect_warmup():
    assert detect_warmup(schedule_lrs("wsd", 100, 1.0, 0.1)) == 9
    assert detect_warmup(schedule_lrs("cosine", 100, 1.0, 0.0)) == 0


TRUE = MultiPowerLaw(L0=2.5, A=0.6, alpha=0.45, B=500.0, C=1.5, beta=0.55, gamma=0.6, S0=0.0)


def _synthetic(kind: str, total: int, decay: float = 0.2, every: int = 50, noise: float = 0.0, seed: int = 0):
    lrs = schedule_lrs(kind, total, 3e-4, 0.05, decay, 0.1)
    steps = np.arange(every, total + 1, every)
    loss = TRUE.predict(LossCurve(lrs, steps, np.ones(len(steps))))
    loss = loss * (1 + noise * np.random.default_rng(seed).standard_normal(len(loss)))
    return LossCurve(lrs, steps, loss)


@pytest.mark.slow
def test_fit_recovers_a_synthetic_law():
    train = [_synthetic("cosine", 6000), _synthetic("constant", 6000), _synthetic("wsd", 6000, decay=0.3)]
    law = fit_multi_power_law(train)
    for name in ("L0", "A", "alpha"):
        assert getattr(law, name) == pytest.approx(getattr(TRUE, name), rel=0.05), name
    # the decay term is what schedules differ by: its predictions must match on an unseen schedule
    held_out = _synthetic("wsd", 8000, decay=0.15)
    assert relative_errors(law, held_out).max() < 2e-3
    assert law.B * (1 - (1 + law.C) ** -law.beta) == pytest.approx(TRUE.B * (1 - (1 + TRUE.C) ** -TRUE.beta), rel=0.25)


def test_offsets_per_group_absorb_different_mixtures():
    a, b = _synthetic("cosine", 4000), _synthetic("wsd", 4000)
    b = LossCurve(b.lrs, b.steps, b.loss + 0.3, group="b")
    a = LossCurve(a.lrs, a.steps, a.loss, group="a")
    law = fit_multi_power_law([a, b], offset_per_group=True)
    assert law.offsets["b"] - law.offsets["a"] == pytest.approx(0.3, abs=0.02)
    assert relative_errors(law, b).mean() < 2e-3


def test_choose_schedule_ranks_candidates_best_first():
    opts = choose_schedule(TRUE, total_steps=5000, peak_lr=3e-4, warmup_fraction=0.05, kinds=["wsd", "cosine", "constant"],
                           decay_fractions=[0.1, 0.2, 0.4], final_lr_ratios=[0.0, 0.1])
    losses = [o.predicted_loss for o in opts]
    assert losses == sorted(losses)
    assert opts[0].kind == "wsd" and opts[0].predicted_loss < min(o.predicted_loss for o in opts if o.kind == "constant")
    assert {o.kind for o in opts} == {"wsd", "cosine", "constant"}


def test_curve_validation():
    with pytest.raises(ValueError, match="observed steps"):
        LossCurve(np.ones(10), np.array([11]), np.array([1.0]))
    with pytest.raises(ValueError, match="positive"):
        LossCurve(np.ones(10), np.array([5]), np.array([-1.0]))


@pytest.mark.skipif(not MPL.is_dir(), reason=f"Multi-Power Law anchor data not found at {MPL} (../shared/data)")
def test_paper_curves_25m_slice():
    """The benchmark's 25M row on every other point: fit on 3 schedules, predict 3 others within 0.25%."""
    rows = mpl_table(sizes=(25,), test=("wsd_20000_24000", "wsdld_20000_24000", "wsdcon_3"), every=2)
    assert rows[0]["mean"] < 0.0025, rows[0]["per_curve"]


def test_choose_schedule_compares_wsd_decay_shapes():
    """The same WSD at three decay shapes gets three different predictions, each candidate names its shape,
    and the shapes apply to wsd only."""
    opts = choose_schedule(TRUE, total_steps=5000, peak_lr=3e-4, warmup_fraction=0.05, kinds=["wsd", "cosine"],
                           decay_fractions=[0.2], final_lr_ratios=[0.0], decay_shapes=["linear", "cosine", "1-sqrt"])
    wsd = {o.decay_shape: o.predicted_loss for o in opts if o.kind == "wsd"}
    assert set(wsd) == {"linear", "cosine", "1-sqrt"} and len(set(wsd.values())) == 3
    assert [o.decay_shape for o in opts if o.kind == "cosine"] == [None]  # shapes are for wsd only
    assert [o.predicted_loss for o in opts] == sorted(o.predicted_loss for o in opts)
