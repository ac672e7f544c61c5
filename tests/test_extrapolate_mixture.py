"""Mixture -> metric models: each candidate fits, CV picks the right family, RegMix on a slice."""

from __future__ import annotations

import numpy as np
import pytest

from autotune.extrapolate.mixture import CANDIDATES, PRIOR, Problem, make
from autotune.extrapolate.selection import kfold_indices, select_model, spearman
from autotune.testing import REGMIX, load_regmix_split


def _mixtures(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    W = rng.dirichlet(np.full(k, 0.6), n)
    W[W < 0.01] = 0.0  # sparse, like RegMix's mixtures
    return W / W.sum(axis=1, keepdims=True)


def _effective_data_loss(W: np.ndarray, seed: int, noise: float = 0.01) -> np.ndarray:
    """Domain 0's loss: a power law in its effective data (own share + transfer from domains 1, 2)."""
    d = W[:, 0] + 0.3 * W[:, 1] + 0.05 * W[:, 2] + 0.01
    return 2.0 + 0.8 * d ** -0.4 + noise * np.random.default_rng(seed).standard_normal(len(W))


@pytest.mark.parametrize("name", [*CANDIDATES, PRIOR])
def test_every_candidate_fits_and_ranks_a_known_law(name):
    W, Wt = _mixtures(120, 5, 0), _mixtures(200, 5, 1)
    problem = Problem(tuple("abcde"), own=(0,))
    model = make(name, problem).fit(W, _effective_data_loss(W, 0))
    pred = model.predict(Wt)
    assert pred.shape == (200,) and np.all(np.isfinite(pred))
    assert spearman(pred, _effective_data_loss(Wt, 1, noise=0.0)) > (0.6 if name == "linear" else 0.85)


def test_extra_covariates_are_used():
    W = _mixtures(80, 3, 2)
    lr = np.random.default_rng(3).uniform(-8, -4, 80)
    y = W[:, 0] + 0.5 * lr
    X = np.column_stack([W, lr])
    model = make("log_linear", Problem(("a", "b", "c"), own=(0,), n_extra=1)).fit(X, y)
    assert spearman(model.predict(X), y) > 0.95


def test_cv_selection_prefers_the_true_family_and_records_scores():
    W = _mixtures(150, 4, 4)
    y = _effective_data_loss(W, 5, noise=0.005)
    problem = Problem(tuple("abcd"), own=(0,))
    sel = select_model(W, y, problem, candidates=["linear", "power_law", "log_linear"], folds=5)
    assert sel.cv_best.split("+")[0] == "power_law"
    assert sel.name == sel.cv_best + "+own_share"  # the prior joins as one more member
    assert set(sel.cv) >= {"linear", "power_law", "log_linear", sel.cv_best, sel.name, "own_share"}
    assert sel.cv["power_law"].spearman > sel.cv["linear"].spearman
    assert sel.folds == 5 and sel.n_runs == 150
    js = sel.to_json()
    assert js["model"] == sel.name and js["cv"]["power_law"]["spearman"] == pytest.approx(sel.cv["power_law"].spearman, abs=1e-6)


def test_no_prior_without_own_domains_and_loo_for_small_studies():
    W = _mixtures(8, 3, 6)
    y = W[:, 1] - W[:, 2]
    sel = select_model(W, y, Problem(("a", "b", "c")), candidates=["linear", "log_linear"], folds=10)
    assert "own_share" not in sel.name and sel.folds == 8  # leave-one-out
    assert len(kfold_indices(8, 10)) == 8


def test_broken_candidates_are_not_chosen(monkeypatch):
    """Perfect ranks but predictions a million times off: it would mislead the optimiser."""
    from autotune.extrapolate import mixture

    class Wild:
        name = "wild"

        def __init__(self, problem):
            pass

        def fit(self, X, y):
            return self

        def predict(self, X):
            return 1e6 * X[:, 0]

    monkeypatch.setitem(mixture.CANDIDATES, "wild", Wild)
    W = _mixtures(40, 3, 7)
    y = W[:, 0] + 0.05 * W[:, 1]
    sel = select_model(W, y, Problem(("a", "b", "c"), own=(0,)), candidates=["wild", "linear"], prior=False)
    assert sel.cv["wild"].spearman > sel.cv["linear"].spearman - 0.05
    assert sel.name == "linear"
    with pytest.raises(ValueError, match="at least 3 runs"):
        select_model(W[:2], y[:2], Problem(("a", "b", "c")))


@pytest.mark.skipif(not REGMIX.is_dir(), reason=f"RegMix anchor data not found at {REGMIX} (../shared/data)")
def test_regmix_slice_ranks_unseen_mixtures():
    """Fit on 160 of the 1M runs, rank the 256 unseen 1M mixtures for two targets (the benchmark's path)."""
    X, Y, domains, targets = load_regmix_split("train_1m")
    assert X.shape == (512, 17) and Y.shape == (512, 13) and len(targets) == 13
    Xt, Yt, _, _ = load_regmix_split("test_1m")
    for target in ("pile_cc", "hackernews"):
        j, own = targets.index(target), domains.index(target)
        problem = Problem(tuple(domains), (own,))
        sel = select_model(X[:160], Y[:160, j], problem, candidates=["log_linear", "power_law", "gp"], folds=4)
        ours = spearman(sel.model.predict(Xt), Yt[:, j])
        trivial = spearman(-Xt[:, own], Yt[:, j])
        assert ours > 0.9 and ours > trivial, (target, sel.name, ours, trivial)
