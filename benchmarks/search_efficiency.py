# python benchmarks/search_efficiency.py            (about 6 min on 2 cores; --help for a smaller run)
"""Search efficiency of autotune's samplers on a realistic mixture landscape, without training.

The landscape: a regressor fitted on all 768 RegMix 1M-parameter proxy runs (512 train + 256 test
mixtures over the Pile's 17 domains, each with 13 validation losses; ``shared/data/anchors/regmix``).
The objective is the Pile-CC validation loss, the target RegMix itself optimises: web text as the proxy
for general quality, a single target like autotune's ``maximize: target``; it is also the better-fitted
of the two candidates (CV R^2 0.978 against 0.953 for the mean of the 13 losses), and its optimum lies
closer to the data (``--objective mean13`` runs the other one).

The regressor: ridge on the quadratic features of ``log(share + 1e-3)``: smooth, fast, and on 5-fold CV
as good as a GP regressor and better than gradient boosting (which is piecewise constant anyway, a poor
landscape for GP and CMA-ES). Measured on 2 cores, 2026-11-26 (R^2 / RMSE, mean13 and pile_cc):
gradient boosting 0.912 / 0.092 (213 s for the 5 folds; not run on pile_cc); ridge on log shares 0.849 / 0.121;
this model 0.953 / 0.068 and 0.978 / 0.048; GP regressor on log shares 0.963 / 0.060 (400 s); MLP 0.09.

Every sampler proposes through autotune's own machinery: ``make_sampler`` on a ``SearchSpace`` with the
17 domains (bounds: [0, the largest share RegMix sampled, rounded up to 0.01], so the oracle is never
asked about shares beyond its data), the ``mix.<domain>`` distributions of ``Controller.distributions()``,
and ``SimplexMap.to_weights``; an in-memory Optuna study, ask/tell; the prior mixture enqueued first, as
``autotune search`` does (``--no-prior`` leaves it out). Regret is the best loss found minus the oracle's
optimum (found by random search over the simplex, then hill-climbing and L-BFGS-B from the best points).

A second table times 10,000 mixtures from ``SimplexMap.to_weights_batch`` against rejection sampling
(uniform Dirichlet draws kept when inside the same bounds).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import FloatDistribution

from autotune.config.space import SearchSpace
from autotune.search.controller import make_sampler
from autotune.search.simplex import SimplexMap

REGMIX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "anchors" / "regmix"
SAMPLERS = ("random", "tpe", "gp", "cmaes", "qmc")
BUDGETS = (16, 32, 64, 128)
OBJECTIVES = ("pile_cc", "mean13")
# GPSampler's cost grows with the trials seen: on 2 cores, without greenlet, a 128-trial run took 192 s
# (32 trials: 32 s; 64: 78 s; greenlet makes 64 trials 44 s), so 10 seeds fit the 10-minute budget only
# up to 32 trials, the budget the acceptance compares.
GP_MAX_TRIALS = 32
# make_sampler reads search.trials only for TPE (its n_startup_trials); every other sampler is run once at
# the largest budget and read at each budget: its first n trials are those of an n-trial run (same seed,
# same history; tests/test_search_efficiency.py checks it).
_BUDGET_DEPENDENT = {"tpe"}
# Shares below this count as absent in the features: RegMix writes shares to 3 decimals.
_LOG_EPS = 1e-3


# ----------------------------------------------------------------------------------------------- the data
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


# ----------------------------------------------------------------------------------------------- the oracle
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


# ----------------------------------------------------------------------------------------------- the search
def benchmark_space(domains: Sequence[str], max_share: Sequence[float], sampler: str, trials: int) -> SearchSpace:
    """A search space over the RegMix domains; sources and evals only validate (nothing is trained)."""
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


# ----------------------------------------------------------------------------------------------- the tables
def regret_table(results: dict[str, SamplerResult], budgets: Sequence[int]) -> str:
    lines = [f"{'sampler':<8}" + "".join(f"{'@' + str(b):>10}" for b in budgets) + f"{'s/seed':>9}"]
    for name, res in results.items():
        cells = "".join(f"{statistics.median(res.regrets[b]):>10.4f}" if b in res.regrets else f"{'-':>10}"
                        for b in budgets)
        lines.append(f"{name:<8}{cells}{res.seconds[max(res.seconds)]:>9.1f}")
    return "\n".join(lines)


def ratio_line(results: dict[str, SamplerResult], small: int = 32, large: int = 128) -> str:
    if "random" not in results or large not in results["random"].regrets:
        return f"(ratio needs random @{large})"
    rivals = {n: statistics.median(r.regrets[small]) for n, r in results.items() if n != "random" and small in r.regrets}
    if not rivals:
        return f"(ratio needs a sampler other than random @{small})"
    best = min(rivals, key=rivals.get)
    ref = statistics.median(results["random"].regrets[large])
    ratio = rivals[best] / ref if ref > 0 else float("inf")
    verdict = "meets" if rivals[best] <= ref else "misses"
    return (f"best sampler @{small} vs random @{large}: {best} {rivals[best]:.4f} / {ref:.4f} = {ratio:.2f} "
            f"({verdict} the acceptance: <= 1)")


def _seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-9", help="sampler seeds, '0-9' or '1,2,3' (the figures in docs/LOG.md: 0-9; "
                                                  "settings were chosen on 100-109)")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--objective", default="pile_cc", choices=OBJECTIVES)
    p.add_argument("--no-prior", action="store_true", help="do not enqueue the prior mixture as the first trial")
    p.add_argument("--gp-max-trials", type=int, default=GP_MAX_TRIALS,
                   help="GP's largest budget (about 1.5 s a trial at 128 trials without greenlet; 0: no cap)")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t_all = time.perf_counter()
    seeds = _seeds(args.seeds)

    runs = load_regmix(args.objective)
    t = time.perf_counter()
    oracle = Oracle(runs)
    fit = oracle.cv_fit()
    simplex = SimplexMap.from_space(benchmark_space(runs.domains, runs.max_share, "random", 1))
    opt = find_optimum(oracle, simplex)
    print(f"oracle: {args.objective} loss of {len(runs.loss)} RegMix 1M runs over {len(runs.domains)} domains; "
          f"ridge on quadratic log-share features, 5-fold CV R^2 {fit.r2:.3f}, RMSE {fit.rmse:.4f}, "
          f"Spearman {fit.spearman:.3f} ({time.perf_counter() - t:.0f} s with the optimum search)")
    print(f"optimum: {opt.loss:.4f} (best RegMix run {runs.loss.min():.4f}; the oracle at it "
          f"{oracle(runs.shares[runs.loss.argmin()])[0]:.4f}); {opt.random_points} random points + hill-climb + L-BFGS-B")
    top = sorted(zip(runs.domains, opt.shares, strict=True), key=lambda x: -x[1])[:6]
    print("  optimum mixture (top 6): " + ", ".join(f"{n} {w:.3f}" for n, w in top))
    print(f"seeds {args.seeds}; prior first: {not args.no_prior}; regret = best loss found - optimum; "
          f"median over {len(seeds)} seeds")

    results: dict[str, SamplerResult] = {}
    for name in args.samplers:
        t = time.perf_counter()
        cap = (args.gp_max_trials or None) if name == "gp" else None
        results[name] = benchmark_sampler(name, runs, oracle, opt.loss, seeds, args.budgets, not args.no_prior, cap)
        print(f"  {name}: {time.perf_counter() - t:.0f} s", flush=True)
    print()
    print(regret_table(results, args.budgets))
    print(ratio_line(results, 32, max(args.budgets)))
    print()
    speed = sampling_speed(simplex)
    print(f"10,000 mixtures over {len(simplex.domains)} domains within the bounds (best of 3, this process):")
    print(f"{'method':<34}{'seconds':>9}{'ratio':>8}")
    print(f"{'SimplexMap.to_weights_batch':<34}{speed.simplex_s:>9.4f}{1.0:>8.2f}")
    print(f"{'rejection (uniform Dirichlet)':<34}{speed.rejection_s:>9.4f}{speed.rejection_s / speed.simplex_s:>8.2f}"
          f"  acceptance {speed.acceptance:.3f} ({speed.rejection_accepted} of {speed.rejection_draws} draws)")
    print(f"all within bounds and summing to 1: {speed.all_in_bounds}")
    print(f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
