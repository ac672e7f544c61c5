"""Optimise a predicted objective over the constrained simplex, and bootstrap the predictions' uncertainty.

Every mixture considered comes from ``autotune.search.simplex.SimplexMap.to_weights`` (the controller's own map
from the unit cube), so per-domain bounds and per-role floors hold by construction. The search: a
scrambled Sobol design of the cube plus the runs' own mixtures, then a shrinking-radius random local
search around the best feasible points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from autotune.search.simplex import SimplexMap

Predict = Callable[[np.ndarray], np.ndarray]  # shares (n x K) -> values (n,)


@dataclass(frozen=True)
class Optimum:
    weights: dict[str, float]
    objective: float           # predicted value of the maximised metric
    constraint: float | None   # predicted value of the constrained metric (None: unconstrained)
    feasible: bool             # the constraint holds on the prediction
    evaluated: int             # mixtures evaluated
    history: list[float] = field(default_factory=list, repr=False)


def _weights_matrix(smap: SimplexMap, U: np.ndarray) -> np.ndarray:
    return np.array([[w for w in smap.to_weights(list(u)).values()] for u in U])


def maximize(smap: SimplexMap, objective: Predict, *, constraint: Predict | None = None,
             floor: float | None = None, starts: Sequence[dict[str, float]] = (), n_design: int = 2048,
             n_local: int = 6, per_round: int = 128, seed: int = 0) -> Optimum:
    """Maximise ``objective`` subject to ``constraint >= floor`` (when both given) over the mixtures of
    ``smap``. Infeasible everywhere: returns the mixture with the least violation, ``feasible=False``."""
    from scipy.stats import qmc

    rng = np.random.default_rng(seed)
    d = smap.dims
    if d == 0:
        U = np.zeros((1, 0))
    else:
        U = qmc.Sobol(d, scramble=True, seed=seed).random(n_design)
        extra = []
        for w in starts:
            try:
                extra.append(smap.to_unit(w))
            except ValueError:
                continue
        if extra:
            U = np.vstack([U, np.clip(np.array(extra), 0, 1)])

    def evaluate(U):
        W = _weights_matrix(smap, U)
        obj = np.asarray(objective(W), float)
        if constraint is None or floor is None:
            return W, obj, None
        return W, obj, np.asarray(constraint(W), float)

    def rank_key(obj, con):
        if con is None:
            return obj
        slack = con - floor
        # feasible points rank by objective; infeasible ones below all of them, by violation
        return np.where(slack >= 0, obj, -1e12 + slack)

    W, obj, con = evaluate(U)
    key = rank_key(obj, con)
    evaluated = len(U)
    history = [float(key.max())]
    radius = 0.15
    for _ in range(n_local if d > 0 else 0):
        top = np.argsort(-key)[:4]
        cand = np.clip(U[rng.choice(top, per_round)] + rng.normal(0, radius, (per_round, d)), 0, 1)
        W2, obj2, con2 = evaluate(cand)
        U = np.vstack([U, cand])
        W = np.vstack([W, W2])
        obj = np.concatenate([obj, obj2])
        con = None if con is None else np.concatenate([con, con2])
        key = rank_key(obj, con)
        evaluated += len(cand)
        history.append(float(key.max()))
        radius *= 0.5
    i = int(np.argmax(key))
    weights = dict(zip(smap.domains, (float(v) for v in W[i]), strict=True))
    c = None if con is None else float(con[i])
    return Optimum(weights=weights, objective=float(obj[i]), constraint=c,
                   feasible=c is None or c >= floor, evaluated=evaluated, history=history)


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    level: float
    samples: int


def bootstrap_interval(fit_predict: Callable[[np.ndarray], float], n_runs: int, *, value: float,
                       samples: int = 100, level: float = 0.9, seed: int = 0) -> Interval:
    """Percentile interval of ``fit_predict(indices)`` over bootstrap resamples of the runs.

    ``fit_predict`` refits the model on the runs at ``indices`` (drawn with replacement) and returns its
    prediction at the point of interest; resamples whose fit fails are skipped. The interval is widened
    to contain ``value`` (the full-data prediction), which a biased model's percentiles can miss."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        idx = rng.integers(0, n_runs, n_runs)
        if len(np.unique(idx)) < 3:
            continue
        try:
            v = float(fit_predict(idx))
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            continue
        if np.isfinite(v):
            out.append(v)
    if not out:
        return Interval(value, float("nan"), float("nan"), level, 0)
    lo, hi = np.quantile(out, [(1 - level) / 2, (1 + level) / 2])
    return Interval(value, float(min(lo, value)), float(max(hi, value)), level, len(out))
