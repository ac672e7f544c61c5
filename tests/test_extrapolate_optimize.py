"""Optimisation over the constrained simplex, and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from autotune.extrapolate.optimize import bootstrap_interval, maximize
from autotune.search.simplex import SimplexMap

SMAP = SimplexMap(domains=("math", "code", "web", "books"), lo=(0.05, 0.0, 0.1, 0.0), hi=(0.5, 0.4, 1.0, 0.3),
                  role=("target", "target", "general", "general"), floors={"general": 0.4})


def _check(w: dict[str, float]) -> None:
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-9)
    for d, lo, hi in zip(SMAP.domains, SMAP.lo, SMAP.hi, strict=True):
        assert lo - 1e-9 <= w[d] <= hi + 1e-9, (d, w[d])
    assert w["web"] + w["books"] >= 0.4 - 1e-9


def test_maximum_sits_on_the_binding_bounds():
    # more math and code is better: the optimum takes math to its max 0.5, then general's floor binds
    opt = maximize(SMAP, lambda W: 2 * W[:, 0] + W[:, 1], seed=0)
    _check(opt.weights)
    assert opt.weights["math"] == pytest.approx(0.5, abs=0.02)
    assert opt.weights["code"] == pytest.approx(0.1, abs=0.02)
    assert opt.feasible and opt.evaluated > 2000
    assert opt.history == sorted(opt.history)


def test_constraint_is_honoured_and_infeasibility_reported():
    target = lambda W: W[:, 0] + W[:, 1]  # noqa: E731
    general = lambda W: W[:, 3]  # noqa: E731  (books carry the general score)
    opt = maximize(SMAP, target, constraint=general, floor=0.25, seed=1)
    _check(opt.weights)
    assert opt.feasible and opt.constraint >= 0.25
    assert opt.weights["books"] == pytest.approx(0.25, abs=0.03)
    bad = maximize(SMAP, target, constraint=general, floor=0.9, seed=1)
    assert not bad.feasible and bad.weights["books"] == pytest.approx(0.3, abs=0.01)  # the least violation


def test_starts_are_considered():
    best = {"math": 0.05, "code": 0.0, "web": 0.65, "books": 0.3}
    peak = np.array([best[d] for d in SMAP.domains])
    opt = maximize(SMAP, lambda W: -np.abs(W - peak).sum(axis=1), starts=[best], n_design=16, n_local=0)
    assert opt.objective == pytest.approx(0.0, abs=1e-6)


def test_bootstrap_interval_covers_the_sampling_spread():
    rng = np.random.default_rng(0)
    y = rng.normal(1.0, 0.5, 60)
    iv = bootstrap_interval(lambda idx: y[idx].mean(), len(y), value=float(y.mean()), samples=200, seed=0)
    se = 0.5 / np.sqrt(60)
    assert iv.low < iv.value < iv.high and iv.samples == 200
    assert iv.high - iv.low == pytest.approx(2 * 1.645 * se, rel=0.3)
