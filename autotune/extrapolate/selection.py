"""The choice of a metric's mixture -> metric model (``mixture.py``) by K-fold cross-validation.

``select_model`` scores every candidate on the same K folds (Spearman and RMSE of the pooled out-of-fold
predictions), grows an equal-weight ensemble greedily by out-of-fold Spearman (Caruana et al. 2004), and,
when the metric has own domains, adds the ``own_share`` prior as one more member: cross-validation at
proxy scale cannot see how a model transfers to a larger scale, and the own-share ranking is the one
that held from 1M to 1B parameters in RegMix. Both the CV-best ensemble and the shrunk one are recorded.

numpy at import; scipy inside ``spearman``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from autotune.extrapolate.mixture import CANDIDATES, PRIOR, Problem, make


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def kfold_indices(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffled K folds (leave-one-out when ``folds >= n``)."""
    k = max(2, min(folds, n))
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[i::k] for i in range(k)]


def out_of_fold(name: str, problem: Problem, X: np.ndarray, y: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    """Out-of-fold predictions of a fresh model per fold; NaN where the fit failed."""
    pred = np.full(len(y), np.nan)
    for va in folds:
        tr = np.setdiff1d(np.arange(len(y)), va)
        try:
            pred[va] = make(name, problem).fit(X[tr], y[tr]).predict(X[va])
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            pass
    return pred


@dataclass(frozen=True)
class CVScore:
    spearman: float
    rmse: float

    def key(self) -> tuple[float, float]:
        """Sort key, best first: higher Spearman, then lower RMSE; NaN last."""
        s = self.spearman if math.isfinite(self.spearman) else -2.0
        r = self.rmse if math.isfinite(self.rmse) else math.inf
        return (-s, r)


def _score(pred: np.ndarray, y: np.ndarray) -> CVScore:
    if not np.all(np.isfinite(pred)):
        return CVScore(float("nan"), float("nan"))
    return CVScore(spearman(pred, y), rmse(pred, y))


@dataclass
class Selection:
    """A metric's chosen model (fitted on all runs) and the evidence for it."""

    name: str                       # what predicts: e.g. "gp+power_law+own_share"
    model: object
    cv: dict[str, CVScore]          # every candidate, the CV-best ensemble and the final model
    cv_best: str                    # the ensemble chosen by CV alone
    folds: int
    n_runs: int
    oof: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"model": self.name, "cv_best": self.cv_best, "folds": self.folds, "runs": self.n_runs,
                "cv": {k: {"spearman": _round(v.spearman), "rmse": _round(v.rmse)} for k, v in self.cv.items()}}


def _round(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


def select_model(X: np.ndarray, y: np.ndarray, problem: Problem, *, candidates: Sequence[str] | None = None,
                 folds: int = 5, seed: int = 0, max_members: int = 3, prior: bool = True) -> Selection:
    """Choose a metric's model by K-fold cross-validation on these runs only, then fit it on all of them.

    Every candidate is scored on the same folds; an equal-weight ensemble grows greedily from the best
    single candidate while the pooled out-of-fold Spearman rises (at most ``max_members``); with
    ``prior`` and own domains, ``own_share`` joins as one more member (see the module docstring)."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(y) < 3:
        raise ValueError(f"need at least 3 runs to fit a mixture model (got {len(y)})")
    names = list(candidates or CANDIDATES)
    fold_idx = kfold_indices(len(y), folds, seed)
    oof = {n: out_of_fold(n, problem, X, y, fold_idx) for n in names}
    cv = {n: _score(p, y) for n, p in oof.items()}
    # A candidate whose out-of-fold RMSE is over 3x the spread of y predicts worse than the mean by far:
    # it extrapolates wildly between folds and would mislead the optimiser, whatever its ranks.
    limit = 3.0 * float(np.std(y))
    ranked = sorted((n for n in names if math.isfinite(cv[n].spearman) and cv[n].rmse <= limit),
                    key=lambda n: cv[n].key())
    if not ranked:
        ranked = sorted(names, key=lambda n: cv[n].rmse if math.isfinite(cv[n].rmse) else math.inf)
    members = [ranked[0]]
    current = cv[ranked[0]]
    while len(members) < max_members:
        trials = []
        for n in ranked:
            if n in members:
                continue
            pred = np.mean([oof[m] for m in [*members, n]], axis=0)
            trials.append((_score(pred, y), n))
        if not trials:
            break
        score, n = min(trials, key=lambda t: t[0].key())
        if not score.spearman > current.spearman + 1e-4:
            break
        members.append(n)
        current = score
    best = "+".join(members)
    cv[best] = current
    oof[best] = np.mean([oof[m] for m in members], axis=0)
    final_members = [*members, PRIOR] if (prior and problem.own) else members
    final = "+".join(final_members)
    if final != best:
        oof[PRIOR] = out_of_fold(PRIOR, problem, X, y, fold_idx)
        cv[PRIOR] = _score(oof[PRIOR], y)
        oof[final] = np.mean([oof[m] for m in final_members], axis=0)
        cv[final] = _score(oof[final], y)
    model = make(final, problem).fit(X, y)
    return Selection(name=final, model=model, cv=cv, cv_best=best, folds=len(fold_idx), n_runs=len(y), oof=oof)
