"""Mixture -> metric models over the simplex (their choice per metric by K-fold cross-validation: ``selection.py``).

A model sees ``X``: one row per run, the first ``len(domains)`` columns the mixture shares (a point on
the simplex), then ``n_extra`` covariates (e.g. log peak LR), and predicts one metric ``y``.

Candidates (``CANDIDATES``), each a small class with ``fit(X, y) -> self`` and ``predict(X)``:

* ``linear``: ridge on the shares (RegMix's linear baseline);
* ``log_linear``: ridge on the shares and their logs (log-ratio features: with an intercept, the logs of
  shares that sum to one carry the same information as their ratios);
* ``mixing_law``: the Data Mixing Laws form ``y = c + s * exp(b + t . r)`` (Ye et al. 2024, eq. 1);
* ``power_law``: loss as a power law of effective data, ``y = E + s * B * (own + sum_j tau_j r_j + eps)^-a``,
  ``tau_j >= 0`` the transfer from domain j to the metric's own domains (a data-constrained scaling law
  read per domain; ranks by effective data, which is what carries across model scale);
* ``gbt``: gradient-boosted trees (sklearn's HistGradientBoosting with RegMix's LightGBM settings: 1000
  rounds at learning rate 0.01, 31 leaves; measured equal to LightGBM on RegMix, docs/LOG.md);
* ``gp``: a Gaussian process (RBF, one length scale per feature) on log shares, around a prior mean;
* ``own_share``: the prior, ``y = a + b * log(own share + eps)``: the metric moves with its own domain's
  share (RegMix's "minus own weight" baseline, as a regression so it can join an ensemble).

numpy/scipy at import; scikit-learn inside the models that use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# Shares are floored at EPS inside logs: RegMix's shares have 3 decimals, so 1e-3 is the smallest
# non-zero share there; proxies rarely train on less than 0.1% of a domain.
EPS = 1e-3


@dataclass(frozen=True)
class Problem:
    """What a metric model needs to know besides the data: the domains (the first columns of X), the
    indices of the metric's own domains (empty when the metric has none), and how many extra columns."""

    domains: tuple[str, ...]
    own: tuple[int, ...] = ()
    n_extra: int = 0

    @property
    def k(self) -> int:
        return len(self.domains)


def _split(problem: Problem, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=float)
    return X[:, : problem.k], X[:, problem.k:]


def _own_share(problem: Problem, R: np.ndarray) -> np.ndarray:
    return R[:, list(problem.own)].sum(axis=1)


class _Standardizer:
    def __init__(self, Z: np.ndarray) -> None:
        self.mu = Z.mean(axis=0) if len(Z) else np.zeros(Z.shape[1])
        sd = Z.std(axis=0) if len(Z) else np.ones(Z.shape[1])
        self.sd = np.where(sd > 1e-12, sd, 1.0)

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        return (Z - self.mu) / self.sd


# ----------------------------------------------------------------------------------------------- models
class OwnShare:
    """``y = a + b * log(own share + EPS) + w . extra``: the own-domain prior as a regression."""

    name = "own_share"

    def __init__(self, problem: Problem) -> None:
        if not problem.own:
            raise ValueError("own_share needs a metric with own domains")
        self.problem = problem

    def _design(self, X):
        R, E = _split(self.problem, X)
        return np.column_stack([np.ones(len(R)), np.log(_own_share(self.problem, R) + EPS), E])

    def fit(self, X, y):
        D = self._design(X)
        self.coef = np.linalg.lstsq(D, y, rcond=None)[0]
        return self

    def predict(self, X):
        return self._design(X) @ self.coef


class _Ridge:
    name = "ridge"

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def _features(self, X):
        raise NotImplementedError

    def fit(self, X, y):
        from sklearn.linear_model import RidgeCV

        F = self._features(X)
        self.std = _Standardizer(F)
        self.model = RidgeCV(alphas=np.logspace(-6, 3, 28)).fit(self.std(F), y)
        return self

    def predict(self, X):
        return self.model.predict(self.std(self._features(X)))


class Linear(_Ridge):
    """Ridge regression on the shares (and extra covariates); the ridge strength by leave-one-out GCV."""

    name = "linear"

    def _features(self, X):
        return np.asarray(X, dtype=float)


class LogLinear(_Ridge):
    """Ridge regression on the shares and log(shares + EPS) (and extra covariates)."""

    name = "log_linear"

    def _features(self, X):
        R, E = _split(self.problem, X)
        return np.column_stack([R, np.log(R + EPS), E])


def _sign_from_own(problem: Problem, R: np.ndarray, y: np.ndarray) -> list[float]:
    """+1: y falls as the own share grows (a loss); -1: y rises (a score). Both when unknown."""
    if problem.own:
        s = _own_share(problem, R)
        if np.std(s) > 0 and np.std(y) > 0:
            return [1.0 if np.corrcoef(s, y)[0, 1] <= 0 else -1.0]
    return [1.0, -1.0]


# Function evaluations per start of a law's fit: on RegMix's 512 runs the fits converge in 15-400; on a
# dozen noisy proxies they can wander along flat directions, where a longer search only costs time.
MAX_NFEV = 600


class _LeastSquaresLaw:
    """A parametric law fitted by robust nonlinear least squares (soft-L1 at one sd of y), on
    standardised y. Predictions are clipped to the observed range widened by its width on each side:
    an exponential law can blow up off the data, and no law is trusted that far out."""

    name = "law"

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def fit(self, X, y):
        from scipy.optimize import least_squares

        R, E = _split(self.problem, X)
        y = np.asarray(y, dtype=float)
        self.ystd = _Standardizer(y[:, None])
        ys = self.ystd(y[:, None])[:, 0]
        self.estd = _Standardizer(E)
        Es = self.estd(E)
        best = None
        for sign in _sign_from_own(self.problem, R, y):
            for p0 in self._starts(R, ys, sign):
                z0 = np.concatenate([p0, np.zeros(Es.shape[1])])
                try:
                    with np.errstate(all="ignore"):
                        res = least_squares(lambda z, s=sign: self._f(z, R, Es, s) - ys, z0,
                                            jac=lambda z, s=sign: self._jac(z, R, Es, s),
                                            loss="soft_l1", f_scale=1.0, max_nfev=MAX_NFEV,
                                            bounds=self._bounds(len(z0)))
                except (ValueError, np.linalg.LinAlgError):
                    continue
                if np.all(np.isfinite(res.fun)) and (best is None or res.cost < best[0].cost):
                    best = (res, sign)
        if best is None:
            raise ValueError(f"{self.name}: the fit failed from every start")
        self.z, self.sign = best[0].x, best[1]
        lo, hi = float(ys.min()), float(ys.max())
        self.ylim = (lo - (hi - lo), hi + (hi - lo))
        return self

    def predict(self, X):
        R, E = _split(self.problem, X)
        with np.errstate(all="ignore"):
            ys = self._f(self.z, R, self.estd(E), self.sign)
        ys = np.nan_to_num(ys, nan=0.0, posinf=self.ylim[1], neginf=self.ylim[0])
        return np.clip(ys, *self.ylim) * self.ystd.sd[0] + self.ystd.mu[0]

    def _bounds(self, n):
        return (-np.inf, np.inf)


class MixingLaw(_LeastSquaresLaw):
    """Data Mixing Laws (Ye et al. 2024): ``y = c + s * exp(b + t . r)`` on standardised y."""

    name = "mixing_law"

    def _starts(self, R, ys, sign):
        k = R.shape[1]
        return [np.concatenate([[-sign * 2.0, math.log(2.0)], np.zeros(k)]),
                np.concatenate([[-sign * 1.0, 0.0], np.zeros(k)])]

    def _f(self, z, R, E, s):
        k = R.shape[1]
        c, b, t, w = z[0], z[1], z[2:2 + k], z[2 + k:]
        return c + s * np.exp(np.clip(b + R @ t, -50, 50)) + E @ w

    def _jac(self, z, R, E, s):
        k = R.shape[1]
        ex = s * np.exp(np.clip(z[1] + R @ z[2:2 + k], -50, 50))
        return np.column_stack([np.ones(len(R)), ex, ex[:, None] * R, E])


class PowerLaw(_LeastSquaresLaw):
    """Effective-data power law: ``y = E + s * B * (own + sum_j tau_j r_j + eps)^-a`` on standardised y.

    Parameters: E, log B, log a, log eps, log tau_j for the non-own domains (tau of own domains is 1;
    with no own domain every tau is free), then a linear term per extra covariate."""

    name = "power_law"

    def _free(self, k):
        own = set(self.problem.own)
        return [j for j in range(k) if j not in own]

    def _starts(self, R, ys, sign):
        k = len(self._free(R.shape[1]))
        tau0 = math.log(0.1) if self.problem.own else math.log(1.0)
        return [np.concatenate([[-sign * 1.5, 0.0, math.log(0.3), math.log(0.01)], np.full(k, tau0)]),
                np.concatenate([[-sign * 3.0, math.log(0.5), math.log(0.5), math.log(0.05)], np.full(k, tau0 - 2)])]

    def _bounds(self, n):
        lo = np.full(n, -np.inf)
        hi = np.full(n, np.inf)
        lo[2], hi[2] = math.log(0.01), math.log(5.0)     # exponent a
        lo[3], hi[3] = math.log(1e-6), math.log(1.0)     # eps
        nt = n - 4 - self._n_extra
        lo[4:4 + nt], hi[4:4 + nt] = -15.0, 3.0          # log tau
        return lo, hi

    def fit(self, X, y):
        self._n_extra = np.asarray(X).shape[1] - self.problem.k
        return super().fit(X, y)

    def _parts(self, z, R):
        k = R.shape[1]
        free = self._free(k)
        nt = len(free)
        tau = np.exp(z[4:4 + nt])
        base = _own_share(self.problem, R) if self.problem.own else 0.0
        d = base + R[:, free] @ tau + math.exp(z[3])
        return free, tau, d

    def _f(self, z, R, E, s):
        free, tau, d = self._parts(z, R)
        nt = len(free)
        return z[0] + s * np.exp(z[1]) * d ** -np.exp(z[2]) + E @ z[4 + nt:]

    def _jac(self, z, R, E, s):
        free, tau, d = self._parts(z, R)
        a = math.exp(z[2])
        term = s * math.exp(z[1]) * d ** -a
        dd = -a * term / d
        cols = [np.ones(len(R)), term, -term * np.log(d) * a, dd * math.exp(z[3])]
        return np.column_stack([*cols, dd[:, None] * (R[:, free] * tau[None, :]), E])


class GradientBoosting:
    """sklearn HistGradientBoosting with RegMix's LightGBM settings (1000 rounds, learning rate 0.01,
    31 leaves, 20 samples a leaf, shrunk for small studies)."""

    name = "gbt"

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def fit(self, X, y):
        from sklearn.ensemble import HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits

        n = len(y)
        # Under 200 runs: 200 rounds at 0.05, the same total shrinkage (10) in a fifth of the time; a study
        # of a dozen proxies gains nothing from finer steps.
        rounds, rate = (1000, 0.01) if n >= 200 else (200, 0.05)
        # one OpenMP thread: on 500 runs x 17 domains it is 4-8x faster than two (thread start-up per round)
        with threadpool_limits(1, user_api="openmp"):
            self.model = HistGradientBoostingRegressor(
                max_iter=rounds, learning_rate=rate, max_leaf_nodes=31, min_samples_leaf=max(2, min(20, n // 10)),
                early_stopping=False, random_state=0).fit(np.asarray(X, dtype=float), y)
        return self

    def predict(self, X):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="openmp"):
            return self.model.predict(np.asarray(X, dtype=float))


class GaussianProcess:
    """GP regression: RBF kernel with one length scale per feature (ARD) + white noise, on standardised
    log(shares + EPS) and extra covariates, around a prior mean (the ``own_share`` law when the metric has
    own domains, else a constant). Hyperparameters by type-II maximum likelihood (L-BFGS-B, analytic
    gradient in O(n^2 d) memory: no n x n x d tensor) on at most ``HYPER_RUNS`` runs, then the GP is
    conditioned on all of them: 500 runs x 17 domains fit in about 2 s instead of 60 s."""

    HYPER_RUNS = 256

    name = "gp"

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def _features(self, X):
        R, E = _split(self.problem, X)
        return np.column_stack([np.log(R + EPS), E])

    def fit(self, X, y):
        from threadpoolctl import threadpool_limits

        # one BLAS thread: these matrices are small, and a second thread loses more than it gains when
        # the machine is busy (a 256-run Cholesky + inverse: 7 ms on one thread, 175 ms on two under load)
        with threadpool_limits(1, user_api="blas"):
            return self._fit(X, y)

    def _fit(self, X, y):
        from scipy.linalg import cho_factor, cho_solve
        from scipy.optimize import minimize

        y = np.asarray(y, dtype=float)
        self.mean = OwnShare(self.problem).fit(X, y) if self.problem.own else None
        resid = y - (self.mean.predict(X) if self.mean else y.mean())
        self.offset = 0.0 if self.mean else float(y.mean())
        self.ysd = float(resid.std()) or 1.0
        r = resid / self.ysd
        F = self._features(X)
        self.std = _Standardizer(F)
        Z_all = self.std(F)
        r_all = r
        if len(r) > self.HYPER_RUNS:
            sub = np.random.default_rng(0).choice(len(r), self.HYPER_RUNS, replace=False)
            Z, r = Z_all[sub], r_all[sub]
        else:
            Z = Z_all
        n, d = Z.shape

        def nll(theta):
            log_s2, log_n2, log_l = theta[0], theta[1], theta[2:]
            inv_l2 = np.exp(-2 * log_l)
            Zs = Z * np.sqrt(inv_l2)
            q = (Zs * Zs).sum(axis=1)
            D2 = np.maximum(q[:, None] + q[None, :] - 2 * Zs @ Zs.T, 0.0)
            K0 = np.exp(log_s2) * np.exp(-0.5 * D2)
            K = K0 + (np.exp(log_n2) + 1e-8) * np.eye(n)
            try:
                c = cho_factor(K, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                return 1e10, np.zeros_like(theta)
            alpha = cho_solve(c, r, check_finite=False)
            val = 0.5 * r @ alpha + np.log(np.diag(c[0])).sum() + 0.5 * n * math.log(2 * math.pi)
            W = np.outer(alpha, alpha) - cho_solve(c, np.eye(n), check_finite=False)
            M = W * K0
            g = np.empty_like(theta)
            g[0] = -0.5 * M.sum()
            g[1] = -0.5 * np.trace(W) * np.exp(log_n2)
            # d K0 / d log l_j = K0 * (z_ij - z_kj)^2 / l_j^2; sum_ik M_ik (z_ij - z_kj)^2 in O(n^2 d)
            m1 = M.sum(axis=1)
            quad = 2 * (Z * Z * m1[:, None]).sum(axis=0) - 2 * np.einsum("ij,ij->j", Z, M @ Z)
            g[2:] = -0.5 * quad * inv_l2
            return val, g

        best = None
        for l0, n0 in ((math.log(math.sqrt(d)), math.log(0.1)), (math.log(math.sqrt(d) / 3), math.log(0.01))):
            theta0 = np.concatenate([[0.0, n0], np.full(d, l0)])
            bounds = [(-5, 5), (-12, 2)] + [(-3, 6)] * d
            res = minimize(nll, theta0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 200})
            if best is None or res.fun < best.fun:
                best = res
        self.theta = best.x
        log_s2, log_n2, log_l = self.theta[0], self.theta[1], self.theta[2:]
        self.inv_l = np.exp(-log_l)
        self.Zs = Z_all * self.inv_l
        K = np.exp(log_s2) * np.exp(-0.5 * self._d2(self.Zs, self.Zs)) + (np.exp(log_n2) + 1e-8) * np.eye(len(r_all))
        self.alpha = cho_solve(cho_factor(K, lower=True), r_all)
        return self

    @staticmethod
    def _d2(A, B):
        return np.maximum((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T, 0.0)

    def predict(self, X):
        Zs = self.std(self._features(X)) * self.inv_l
        Ks = np.exp(self.theta[0]) * np.exp(-0.5 * self._d2(Zs, self.Zs))
        mean = self.mean.predict(X) if self.mean else self.offset
        return mean + self.ysd * (Ks @ self.alpha)


class Ensemble:
    """Equal-weight mean of member models' predictions."""

    def __init__(self, members: Sequence) -> None:
        self.members = list(members)
        self.name = "+".join(m.name for m in self.members)

    def fit(self, X, y):
        for m in self.members:
            m.fit(X, y)
        return self

    def predict(self, X):
        return np.mean([m.predict(X) for m in self.members], axis=0)


CANDIDATES: dict[str, Callable[[Problem], object]] = {
    "linear": Linear,
    "log_linear": LogLinear,
    "mixing_law": MixingLaw,
    "power_law": PowerLaw,
    "gbt": GradientBoosting,
    "gp": GaussianProcess,
}
PRIOR = "own_share"


def make(name: str, problem: Problem):
    """A fresh (unfitted) model: a candidate name, ``own_share``, or members joined by '+'."""
    parts = name.split("+")
    if len(parts) > 1:
        return Ensemble([make(p, problem) for p in parts])
    if name == PRIOR:
        return OwnShare(problem)
    if name not in CANDIDATES:
        raise ValueError(f"unknown mixture model {name!r}; choose from {[*CANDIDATES, PRIOR]}")
    return CANDIDATES[name](problem)
