"""Published runs as ground truth (``../shared/data/anchors``, read in place): RegMix's mixture runs and an
oracle fitted on them to benchmark samplers without training, the Multi-Power Law schedule curves."""

from __future__ import annotations

import csv
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from optuna.distributions import FloatDistribution

    from autotune.config.space import SearchSpace
    from autotune.extrapolate.schedule import LossCurve
    from autotune.search.simplex import SimplexMap

from autotune.testing.paths import MPL, REGMIX


# ----------------------------------------------------------------------------------------------- RegMix runs by split
def _read_csv(path: Path) -> tuple[list[str], dict[int, list[float]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    return header[1:], {int(r[0]): [float(v) for v in r[1:]] for r in rows[1:]}


def load_regmix_split(split: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """``split``: ``train_1m`` (512 runs), ``test_1m`` (256), ``test_60m`` (the same 256 at 60M) or
    ``test_1B`` (64 runs at 1B x 25B tokens). Returns shares (runs x 17), losses (runs x 13), domain
    names, target names; rows joined on the index column."""
    kind, scale = split.split("_")
    wcols, weights = _read_csv(REGMIX / f"{kind}_mixture_{scale}.csv")
    lcols, losses = _read_csv(REGMIX / f"{kind}_pile_loss_{scale}.csv")
    idx = sorted(set(weights) & set(losses))
    domains = [c.removeprefix("train_the_pile_") for c in wcols]
    targets = [c.removeprefix("metric/the_pile_").removesuffix("_val_loss") for c in lcols]
    return (np.array([weights[i] for i in idx]), np.array([losses[i] for i in idx]), domains, targets)



# ----------------------------------------------------------------------------------------------- Multi-Power Law curves
MPL_TRAIN = ("cosine_24000", "constant_24000", "wsdcon_9")
MPL_TEST = ("cosine_72000", "constant_72000", "wsd_20000_24000", "wsdld_20000_24000", "wsdcon_3", "wsdcon_18")
MPL_SIZES = (25, 100, 400)


def mpl_lrs(name: str) -> np.ndarray:
    """Per-step LRs of the MPL paper's schedules (PROVENANCE.md): 2160 linear warm-up steps from 0 to
    3e-4; cosine to 3e-5; WSD exponential / linear decay 20k -> 24k to 3e-5; wsdcon_X: 3e-4 until step
    8000, then X e-5 until 16k. ``mpl_curve`` checks them against the logged LR column."""
    warm, peak, end = 2160, 3e-4, 3e-5
    up = np.linspace(0.0, peak, warm)
    if name.startswith(("cosine_", "constant_")):
        total = int(name.split("_")[1])
        s = np.arange(warm, total)
        if name.startswith("constant"):
            return np.concatenate([up, np.full(total - warm, peak)])
        return np.concatenate([up, end + 0.5 * (peak - end) * (1 + np.cos(np.pi * (s - warm) / (total - warm)))])
    if name.startswith("wsdcon_"):
        low = int(name.split("_")[1]) * 1e-5
        return np.concatenate([up, np.full(8000 - warm, peak), np.full(8000, low)])
    s = np.arange(20000, 24000)
    frac = (s - 20000) / 4000
    decay = peak ** (1 - frac) * end ** frac if name.startswith("wsd_") else peak * (1 - frac) + end * frac
    return np.concatenate([up, np.full(20000 - warm, peak), decay])


def mpl_curve(size: int, name: str, every: int = 1) -> LossCurve:
    """One published loss curve (``MPL/csv_<size>/<name>.csv``), every ``every``-th logged step, with its LRs."""
    from autotune.extrapolate.schedule import LossCurve

    with open(MPL / f"csv_{size}" / f"{name}.csv", newline="") as f:
        rows = [(int(float(r["step"])), float(r["lr"]), float(r["loss"])) for r in csv.DictReader(f)]
    lrs = mpl_lrs(name)
    rows = [r for r in rows if r[0] < len(lrs)][::every]
    steps = np.array([r[0] for r in rows])
    logged = np.array([r[1] for r in rows])
    if np.max(np.abs(lrs[steps] - logged) / logged) > 1e-6:
        raise ValueError(f"{name}: the reconstructed LR schedule does not match the logged LRs")
    return LossCurve(lrs, steps, np.array([r[2] for r in rows]), warmup_steps=2160)


def mpl_table(sizes=MPL_SIZES, train=MPL_TRAIN, test=MPL_TEST, every: int = 1) -> list[dict]:
    """Per model size: the law fitted on ``train``, its mean relative error per ``test`` curve, mean and worst."""
    from autotune.extrapolate.schedule import fit_multi_power_law, relative_errors

    out = []
    for size in sizes:
        t0 = time.time()
        law = fit_multi_power_law([mpl_curve(size, n, every) for n in train])
        errs = {n: relative_errors(law, mpl_curve(size, n)) for n in test}
        out.append({"size": size, "law": law, "seconds": time.time() - t0,
                    "per_curve": {n: float(e.mean()) for n, e in errs.items()},
                    "mean": float(np.mean([e.mean() for e in errs.values()])),
                    "worst": float(max(e.max() for e in errs.values()))})
    return out


# ----------------------------------------------------------------------------------------------- the RegMix oracle: its data
OBJECTIVES = ("pile_cc", "mean13")
# make_sampler reads search.trials only for TPE (its n_startup_trials); every other sampler is run once at
# the largest budget and read at each budget: its first n trials are those of an n-trial run (same seed,
# same history; tests/test_search_efficiency.py checks it).
_BUDGET_DEPENDENT = {"tpe"}
# Shares below this count as absent in the features: RegMix writes shares to 3 decimals.
_LOG_EPS = 1e-3


@dataclass(frozen=True)
class RegMixRuns:
    """RegMix's 1M-parameter runs: shares [N, K] over ``domains`` (rows sum to 1) and the objective [N]."""

    domains: tuple[str, ...]
    shares: np.ndarray
    loss: np.ndarray
    objective: str

    @property
    def max_share(self) -> np.ndarray:
        """Per domain, the largest share RegMix sampled, rounded up to 0.01: the search bounds."""
        return np.minimum(1.0, np.ceil(self.shares.max(axis=0) * 100 - 1e-9) / 100)


def load_regmix(objective: str = "pile_cc", domains: Sequence[str] | None = None, root: Path = REGMIX) -> RegMixRuns:
    """All 768 runs (train and test files joined on ``index`` within each split).

    ``domains``: keep only these (rows renormalised; rows with none of them dropped), for small tests.
    """
    import pandas as pd

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} (got {objective!r})")
    frames = []
    for split in ("train", "test"):
        mix = pd.read_csv(root / f"{split}_mixture_1m.csv")
        loss = pd.read_csv(root / f"{split}_pile_loss_1m.csv")
        frames.append(mix.merge(loss, on="index", validate="one_to_one"))
    runs = pd.concat(frames, ignore_index=True)
    mix_cols = [c for c in runs if c.startswith("train_the_pile_")]
    names = tuple(c.removeprefix("train_the_pile_") for c in mix_cols)
    keep = list(domains) if domains is not None else list(names)
    if missing := set(keep) - set(names):
        raise ValueError(f"not RegMix domains: {sorted(missing)}")
    shares = runs[[f"train_the_pile_{n}" for n in keep]].to_numpy(float)
    total = shares.sum(axis=1)
    rows = total > 0
    shares = shares[rows] / total[rows, None]  # RegMix's rows sum to 0.996-1.003 (3 decimals)
    if objective == "pile_cc":
        loss = runs["metric/the_pile_pile_cc_val_loss"].to_numpy(float)[rows]
    else:
        loss = runs[[c for c in runs if c.startswith("metric/")]].to_numpy(float).mean(axis=1)[rows]
    return RegMixRuns(domains=tuple(keep), shares=shares, loss=loss, objective=objective)


# ----------------------------------------------------------------------------------------------- the RegMix oracle: the model
def _log_shares(w: np.ndarray) -> np.ndarray:
    return np.log(w + _LOG_EPS)


def make_regressor():
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures, StandardScaler

    return make_pipeline(FunctionTransformer(_log_shares), StandardScaler(), PolynomialFeatures(2),
                         StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))


@dataclass(frozen=True)
class CvFit:
    r2: float
    rmse: float
    spearman: float


class Oracle:
    """The fitted landscape: loss of a mixture (rows of shares over the runs' domains)."""

    def __init__(self, runs: RegMixRuns) -> None:
        self.runs = runs
        self.model = make_regressor().fit(runs.shares, runs.loss)

    def __call__(self, shares: np.ndarray) -> np.ndarray:
        return self.model.predict(np.atleast_2d(shares))

    def cv_fit(self, folds: int = 5) -> CvFit:
        from scipy.stats import spearmanr
        from sklearn.model_selection import KFold, cross_val_predict

        y = self.runs.loss
        pred = cross_val_predict(make_regressor(), self.runs.shares, y, cv=KFold(folds, shuffle=True, random_state=0))
        r2 = 1 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
        return CvFit(r2=r2, rmse=float(np.sqrt(((pred - y) ** 2).mean())), spearman=float(spearmanr(pred, y)[0]))


@dataclass(frozen=True)
class Optimum:
    loss: float
    shares: np.ndarray
    random_points: int


def find_optimum(oracle: Oracle, simplex: SimplexMap, seed: int = 12345, random_points: int = 200_000,
                 starts: int = 16, climb_steps: int = 150) -> Optimum:
    """The oracle's minimum inside the bounds: random points over the whole simplex map, then a batched
    hill-climb from the best ``starts`` with a shrinking step, then L-BFGS-B (finite differences) from each."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)

    def f(u: np.ndarray) -> np.ndarray:
        return oracle(simplex.to_weights_batch(u))

    u = rng.random((random_points, simplex.dims))
    v = np.concatenate([f(chunk) for chunk in np.array_split(u, max(1, random_points // 50_000))])
    best_u, best_v = u[np.argsort(v)[:starts]], np.sort(v)[:starts]
    per_start = 128
    for step in np.geomspace(0.2, 0.002, climb_steps):
        cand = np.clip(best_u[:, None, :] + step * rng.standard_normal((starts, per_start, simplex.dims)), 0, 1)
        cv = f(cand.reshape(-1, simplex.dims)).reshape(starts, per_start)
        j = cv.argmin(axis=1)
        better = cv[np.arange(starts), j] < best_v
        best_u[better] = cand[np.arange(starts), j][better]
        best_v[better] = cv[np.arange(starts), j][better]

    h = 1e-6

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        pts = np.vstack([x, np.clip(x + h * np.eye(len(x)), 0, 1)])
        vals = f(pts)
        return float(vals[0]), (vals[1:] - vals[0]) / np.maximum(pts[1:] - x, 1e-300).sum(axis=1)

    results = [minimize(value_and_grad, x0, jac=True, method="L-BFGS-B", bounds=[(0, 1)] * simplex.dims)
               for x0 in best_u]
    xs = np.array([r.x for r in results] + list(best_u))
    vals = f(xs)
    i = int(vals.argmin())
    return Optimum(loss=float(vals[i]), shares=simplex.to_weights_batch(xs[i])[0], random_points=random_points)


# ----------------------------------------------------------------------------------------------- the RegMix oracle: a search
def benchmark_space(domains: Sequence[str], max_share: Sequence[float], sampler: str, trials: int) -> SearchSpace:
    """A search space over the RegMix domains; sources and evals only validate (nothing is trained)."""
    from autotune.config.space import SearchSpace

    return SearchSpace.model_validate({
        "name": "regmix-oracle",
        "domains": {n: {"source": "demo:prose", "role": "target"} for n in domains},
        "mixture": {n: {"min": 0.0, "max": float(m)} for n, m in zip(domains, max_share, strict=True)},
        "proxy": {"tokens": 4096},
        "evals": "unused.yaml",
        "objective": {"maximize": "target"},
        "search": {"sampler": sampler, "trials": trials},
    })


def mixture_distributions(simplex: SimplexMap) -> dict[str, FloatDistribution]:
    """``Controller.distributions()`` for a space whose schedule is fixed (tests check they agree)."""
    from optuna.distributions import FloatDistribution

    return {f"mix.{n}": FloatDistribution(0.0, 1.0) for n in simplex.domains[:-1]}


def prior_params(simplex: SimplexMap) -> dict[str, float]:
    """``Controller.prior_params()`` for a space with no prior and a fixed schedule: every coordinate 0.5."""
    return {f"mix.{n}": 0.5 for n in simplex.domains[:-1]}


@dataclass(frozen=True)
class SearchRun:
    losses: np.ndarray  # [trials], in trial order
    shares: np.ndarray  # [trials, K]
    seconds: float

    def best_at(self, n: int) -> float:
        return float(self.losses[:n].min())


def run_search(space: SearchSpace, oracle: Callable[[np.ndarray], np.ndarray], seed: int, trials: int,
               prior: bool = True) -> SearchRun:
    """One study, in memory, ask/tell: the sampler ``make_sampler`` builds for ``space``."""
    import optuna

    from autotune.search.controller import make_sampler
    from autotune.search.simplex import SimplexMap

    simplex = SimplexMap.from_space(space)
    dists = mixture_distributions(simplex)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(direction="minimize", sampler=make_sampler(space, seed))
    if prior:
        study.enqueue_trial(prior_params(simplex))
    losses, shares = [], []
    t0 = time.perf_counter()
    for _ in range(trials):
        trial = study.ask(dists)
        w = simplex.to_weights([trial.params[f"mix.{n}"] for n in simplex.domains[:-1]])
        row = np.array([w[n] for n in simplex.domains])
        loss = float(oracle(row)[0])
        study.tell(trial, loss)
        losses.append(loss)
        shares.append(row)
    return SearchRun(np.array(losses), np.array(shares), time.perf_counter() - t0)


@dataclass
class SamplerResult:
    regrets: dict[int, list[float]]  # budget -> one regret per seed
    seconds: dict[int, float]  # budget -> mean seconds of sampler + oracle per seed (the run read at it)
    runs: list[SearchRun]


def benchmark_sampler(sampler: str, runs: RegMixRuns, oracle: Oracle, optimum: float, seeds: Sequence[int],
                      budgets: Sequence[int], prior: bool = True, max_trials: int | None = None) -> SamplerResult:
    """Regret per budget and seed. ``max_trials`` caps a slow sampler: budgets above it are not run."""
    budgets = sorted(b for b in budgets if max_trials is None or b <= max_trials)
    out = SamplerResult(regrets={b: [] for b in budgets}, seconds={}, runs=[])
    groups = [[b] for b in budgets] if sampler in _BUDGET_DEPENDENT else [budgets]
    for group in groups:
        space = benchmark_space(runs.domains, runs.max_share, sampler, max(group))
        times = []
        for seed in seeds:
            run = run_search(space, oracle, seed, max(group), prior)
            out.runs.append(run)
            times.append(run.seconds)
            for b in group:
                out.regrets[b].append(run.best_at(b) - optimum)
        for b in group:
            out.seconds[b] = statistics.fmean(times)
    return out


# ----------------------------------------------------------------------------------------------- sampling speed
@dataclass(frozen=True)
class SamplingSpeed:
    simplex_s: float
    rejection_s: float
    rejection_draws: int
    rejection_accepted: int
    all_in_bounds: bool

    @property
    def acceptance(self) -> float:
        return self.rejection_accepted / self.rejection_draws


def rejection_sample(lo: np.ndarray, hi: np.ndarray, n: int, rng: np.random.Generator,
                     max_draws: int = 5_000_000, chunk: int = 100_000) -> tuple[np.ndarray, int]:
    """Uniform Dirichlet draws kept when inside [lo, hi]; stops after ``max_draws`` draws. (kept, draws)."""
    kept, draws, got = [], 0, 0
    while got < n and draws < max_draws:
        w = rng.dirichlet(np.ones(len(lo)), size=chunk)
        ok = w[np.all((w >= lo) & (w <= hi), axis=1)]
        kept.append(ok)
        got += len(ok)
        draws += chunk
    return np.concatenate(kept)[:n], draws


def sampling_speed(simplex: SimplexMap, n: int = 10_000, seed: int = 0, repeats: int = 3) -> SamplingSpeed:
    lo, hi = np.array(simplex.lo), np.array(simplex.hi)
    rng = np.random.default_rng(seed)
    best_simplex = best_rejection = float("inf")
    for _ in range(repeats):  # best of a few, both in this process
        t = time.perf_counter()
        w = simplex.to_weights_batch(rng.random((n, simplex.dims)))
        best_simplex = min(best_simplex, time.perf_counter() - t)
        t = time.perf_counter()
        r, draws = rejection_sample(lo, hi, n, rng)
        best_rejection = min(best_rejection, time.perf_counter() - t)
    tol = 1e-9
    ok = all(bool(np.all((x >= lo - tol) & (x <= hi + tol)) and np.allclose(x.sum(axis=1), 1)) for x in (w, r))
    return SamplingSpeed(best_simplex, best_rejection, draws, len(r), ok)
