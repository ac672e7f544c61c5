"""Scale transfer: do the proxy's rankings of mixtures hold as the proxy grows?

A ladder re-runs the same mixtures (the prior and the study's best trials, each with its own schedule and
seed) as complete proxy runs at several token budgets, its rungs (``autotune/search/ladder.py`` drives the runs,
``study_data.load_ladder`` reads them). This module, pure (numpy in, JSON-able records out; scipy inside
the functions):

* ``fit_power_law``: per mixture m, ``L_m(D) = E_m + A_m * (D / D_0) ** -alpha`` in tokens D, one ``alpha``
  shared by the mixtures of a metric (fitted with three or more rungs, fixed with two);
* ``rank_agreement``: Spearman rho and Kendall tau between two rungs' values of the same mixtures;
* ``analyze``: every pair of rungs, and the largest rung against the laws' prediction at the full run's
  tokens; loud warnings when the rungs disagree on a metric the study decides by (Kendall tau below
  ``min_kendall``, or another best mixture), with how many of the swapped pairs are inside the seed noise.

A ladder is a stronger check than ``proxy.rungs`` (held-out bits-per-byte at fractions of one run): those
points are mid-schedule, before the LR decays, while each ladder rung is a whole annealed run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from autotune.config.base import Frozen as _Frozen
from autotune.evaluate.metrics import key_higher_is_better

# One alpha shared by the mixtures of a metric, each with its own E and A. Chinchilla (Hoffmann et al. 2022,
# approach 3) fits one data exponent for all its runs, L = E + A/N^a + B/D^b; Data Mixing Laws (Ye et al.
# 2024, sec. 4) fit a law in training steps per mixture, from many more points per mixture than a ladder has.
# With three rungs a free (E, A, alpha) per mixture passes exactly through its points and leaves nothing to
# check; one shared alpha leaves M - 1 residual degrees of freedom over M mixtures.
ALPHA_BOUNDS = (0.02, 2.0)
# With two rungs alpha is not identifiable: it is fixed at Chinchilla's fitted data exponent b = 0.28
# (Besiroglu et al. 2024 re-fit 0.37 on the same data). It scales how far the last difference is carried.
ALPHA_PRIOR = 0.28
# Kendall tau between two rungs below this is a warning. With 5 mixtures tau moves in steps of 0.2: 0.6 is at
# most two of the ten pairs swapped; one swap among 3 mixtures is already tau 0.33.
MIN_KENDALL = 0.6
# Two runs differ beyond seed noise when |delta| > NOISE_K * sqrt(2) * std (as ``evaluate/noise.beyond_noise``).
NOISE_K = 2.0


# ----------------------------------------------------------------------------------------------- fits
@dataclass(frozen=True)
class PowerLaw:
    """``L_m(D) = E[m] + A[m] * (D / d0) ** -alpha`` per mixture m; NaN rows had fewer than two points."""

    alpha: float
    E: np.ndarray
    A: np.ndarray
    d0: float
    method: Literal["shared_alpha", "fixed_alpha"]
    alpha_at_bound: bool
    rmse: float
    points: int

    def predict(self, tokens: float) -> np.ndarray:
        """Every mixture's value at ``tokens`` (NaN where its law could not be fitted)."""
        return self.E + self.A * (float(tokens) / self.d0) ** -self.alpha


def _solve(x: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per row, least squares of ``Y[m] = E + A x`` over its finite entries: E, A and the summed squared error."""
    E, A = np.full(len(Y), np.nan), np.full(len(Y), np.nan)
    sse = 0.0
    for m, y in enumerate(Y):
        ok = np.isfinite(y)
        if ok.sum() < 2:
            continue
        X = np.column_stack([np.ones(ok.sum()), x[ok]])
        coef, *_ = np.linalg.lstsq(X, y[ok], rcond=None)
        E[m], A[m] = coef
        sse += float(np.sum((X @ coef - y[ok]) ** 2))
    return E, A, sse


def fit_power_law(tokens: Sequence[float], Y: np.ndarray, *, alpha: float | None = None,
                  bounds: tuple[float, float] = ALPHA_BOUNDS) -> PowerLaw:
    """Fit ``Y[m, r] ~ E_m + A_m (tokens[r] / tokens[0]) ** -alpha`` (rows mixtures, columns rungs, NaN missing).

    ``alpha=None``: fitted, shared by the rows, by variable projection (for each alpha, E and A per row are
    linear least squares; alpha minimises the summed squared error on a log grid, then refined), which
    needs some row with three finite points; otherwise (and when ``alpha`` is given) alpha is fixed at
    ``alpha`` or ``ALPHA_PRIOR``. Raises ValueError for tokens that are not positive and increasing."""
    from scipy.optimize import minimize_scalar

    t = np.asarray(tokens, float)
    Y = np.atleast_2d(np.asarray(Y, float))
    if t.ndim != 1 or len(t) < 2 or np.any(t <= 0) or np.any(np.diff(t) <= 0):
        raise ValueError(f"tokens must be at least two positive, increasing budgets (got {list(t)})")
    if Y.shape[1] != len(t):
        raise ValueError(f"Y has {Y.shape[1]} columns for {len(t)} rungs")
    d0 = float(t[0])
    points = int(np.isfinite(Y).sum())
    fitted = alpha is None and bool(np.any(np.isfinite(Y).sum(axis=1) >= 3))

    def sse(log_alpha: float) -> float:
        return _solve((t / d0) ** -math.exp(log_alpha), Y)[2]

    if fitted:
        lo, hi = math.log(bounds[0]), math.log(bounds[1])
        grid = np.linspace(lo, hi, 97)
        errs = np.array([sse(g) for g in grid])
        i = int(np.argmin(errs))
        res = minimize_scalar(sse, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]), method="bounded",
                              options={"xatol": 1e-6})
        best = float(res.x) if res.fun <= errs[i] else float(grid[i])
        a = math.exp(best)
        at_bound = best - lo < 1e-3 or hi - best < 1e-3
    else:
        a, at_bound = float(alpha if alpha is not None else ALPHA_PRIOR), False
    E, A, err = _solve((t / d0) ** -a, Y)
    n_fit = int(sum(np.isfinite(y).sum() for y, e in zip(Y, E, strict=True) if np.isfinite(e)))
    return PowerLaw(alpha=a, E=E, A=A, d0=d0, method="shared_alpha" if fitted else "fixed_alpha",
                    alpha_at_bound=at_bound, rmse=math.sqrt(err / n_fit) if n_fit else float("nan"), points=points)


# ----------------------------------------------------------------------------------------------- ranks
def rank_agreement(a: Sequence[float], b: Sequence[float]) -> tuple[float | None, float | None, int]:
    """Spearman rho and Kendall tau (tau-b) over the mixtures finite in both, and their number; None
    where undefined (fewer than two mixtures, or no spread)."""
    from scipy.stats import kendalltau, spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 2 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None, None, n
    if n == 2:  # scipy warns on two points; both coefficients are the sign of the co-movement
        s = float(np.sign((a[ok][1] - a[ok][0]) * (b[ok][1] - b[ok][0])))
        return s, s, n
    return float(spearmanr(a[ok], b[ok])[0]), float(kendalltau(a[ok], b[ok])[0]), n


def _best(values: np.ndarray, higher_is_better: bool) -> int | None:
    ok = np.isfinite(values)
    if not ok.any():
        return None
    v = np.where(ok, values if higher_is_better else -values, -np.inf)
    return int(np.argmax(v))


def _swapped_inside_noise(a: np.ndarray, b: np.ndarray, std: float) -> tuple[int, int]:
    """(discordant pairs, of which inside the noise at both rungs) between two rungs' values."""
    margin = NOISE_K * math.sqrt(2.0) * std
    swapped = inside = 0
    idx = [i for i in range(len(a)) if np.isfinite(a[i]) and np.isfinite(b[i])]
    for x, i in enumerate(idx):
        for j in idx[x + 1:]:
            da, db = a[i] - a[j], b[i] - b[j]
            if da * db < 0:
                swapped += 1
                inside += abs(da) < margin and abs(db) < margin
    return swapped, inside


# ----------------------------------------------------------------------------------------------- records
class RankPair(_Frozen):
    """Rank agreement of two rungs (``b`` may be the laws' prediction at the full run's tokens)."""

    a: int = Field(description="tokens of the smaller rung")
    b: int | Literal["extrapolated"]
    spearman: float | None
    kendall: float | None
    n: int = Field(ge=0, description="mixtures measured at both")


class PowerLawRecord(_Frozen):
    method: Literal["shared_alpha", "fixed_alpha"] = Field(
        description="shared_alpha: alpha fitted over all mixtures; fixed_alpha: fewer than 3 rungs, alpha = 0.28")
    alpha: float
    alpha_at_bound: bool = Field(description="the fitted alpha sits at a bound of [0.02, 2]: a weak fit")
    rmse: float | None
    points: int
    observed: list[float] = Field(description="the rung values the law was fitted on (mixture by mixture)")
    predicted: list[float] = Field(description="the law's values at the same points")


class LadderMetric(_Frozen):
    higher_is_better: bool
    decision: bool = Field(description="the study decides by this metric: its disagreement is a warning")
    values: dict[str, list[float | None]] = Field(description="per mixture, the value at each rung")
    fit: PowerLawRecord | None
    extrapolated: dict[str, float | None] | None = Field(description="per mixture, the law at the full run's tokens")
    pairs: list[RankPair]
    best: dict[str, str | None] = Field(description="best mixture per rung (tokens) and 'extrapolated'")
    regret: float | None = Field(description="at the largest rung: the best value minus that of the mixture the "
                                             "search's rung (else the smallest) ranks best, >= 0: what choosing "
                                             "at the small scale costs at the large one, in the metric's units")
    agree: bool


class LadderMixture(_Frozen):
    label: str
    trial: int = Field(description="the trial of the search it repeats")
    prior: bool
    mixture: dict[str, float]
    schedule: dict[str, Any]
    seed: int | None


class LadderSection(_Frozen):
    """recipe.yaml's ``ladder``: how the proxy's ranking of mixtures held across token budgets."""

    axis: Literal["tokens"] = "tokens"
    rungs: list[int] = Field(description="tokens trained per run at each rung, increasing")
    search_rung: int | None = Field(description="the rung that is the search's own runs")
    target_tokens: float | None = Field(description="the full run's tokens the laws extrapolate to")
    min_kendall: float
    mixtures: list[LadderMixture]
    metrics: dict[str, LadderMetric]
    agree: bool = Field(description="every decision metric agrees across the rungs and the extrapolation")
    warnings: list[str]


# ----------------------------------------------------------------------------------------------- analysis
def _clean(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _tok(n: float) -> str:
    return f"{n:,.0f}" if n < 1e7 else f"{n:.3g}"


def analyze(tokens: Sequence[int], mixtures: Sequence[Mapping[str, Any]], values: Mapping[str, np.ndarray],
            higher_is_better: Mapping[str, bool], *, decision: Sequence[str] = ("target",),
            target_tokens: float | None = None, min_kendall: float = MIN_KENDALL,
            noise_std: Mapping[str, float] | None = None, search_rung: int | None = None) -> dict:
    """The ladder's record (a ``LadderSection`` as a JSON-able dict).

    ``tokens``: rungs, increasing; ``mixtures``: one mapping per row (``label``, ``trial``, ``prior``,
    ``mixture``, ``schedule``, ``seed``); ``values``: per metric a (mixtures x rungs) array, NaN where a run
    is missing; ``decision``: metrics whose disagreement is a warning; ``target_tokens``: the full run's
    tokens (None: no extrapolation); ``noise_std``: seed std per metric (at the search's rung), to say
    which swaps are inside the noise."""
    tokens = [int(t) for t in tokens]
    labels = [str(m["label"]) for m in mixtures]
    noise_std = dict(noise_std or {})
    out_metrics: dict[str, dict] = {}
    warnings: list[str] = []
    for metric, Y in values.items():
        Y = np.asarray(Y, float)
        if Y.shape != (len(labels), len(tokens)):
            raise ValueError(f"{metric}: values of shape {Y.shape}, expected {(len(labels), len(tokens))}")
        if not np.isfinite(Y).any():
            continue
        hib = bool(higher_is_better.get(metric, True))
        is_decision = metric in decision
        law = fit_power_law(tokens, Y) if len(tokens) >= 2 else None
        fit = None
        pred = None
        if law is not None:
            ok = np.isfinite(Y) & np.isfinite(law.E)[:, None]
            fitted = law.E[:, None] + law.A[:, None] * (np.asarray(tokens, float) / law.d0)[None, :] ** -law.alpha
            fit = {"method": law.method, "alpha": law.alpha, "alpha_at_bound": law.alpha_at_bound,
                   "rmse": _clean(law.rmse), "points": law.points,
                   "observed": [float(v) for v in Y[ok]], "predicted": [float(v) for v in fitted[ok]]}
            if target_tokens is not None:
                pred = law.predict(target_tokens)
        pairs = []
        for i in range(len(tokens)):
            for j in range(i + 1, len(tokens)):
                rho, tau, n = rank_agreement(Y[:, i], Y[:, j])
                pairs.append({"a": tokens[i], "b": tokens[j], "spearman": rho, "kendall": tau, "n": n})
        if pred is not None:
            rho, tau, n = rank_agreement(Y[:, -1], pred)
            pairs.append({"a": tokens[-1], "b": "extrapolated", "spearman": rho, "kendall": tau, "n": n})
        best = {str(t): (labels[b] if (b := _best(Y[:, r], hib)) is not None else None) for r, t in enumerate(tokens)}
        if pred is not None:
            b = _best(pred, hib)
            best["extrapolated"] = labels[b] if b is not None else None
        chooser = tokens.index(search_rung) if search_rung in tokens and search_rung != tokens[-1] else 0
        picked, top = _best(Y[:, chooser], hib), _best(Y[:, -1], hib)
        regret, pick = None, None
        if picked is not None and top is not None and np.isfinite(Y[picked, -1]):
            regret = float(abs(Y[top, -1] - Y[picked, -1]))
            pick = (labels[picked], tokens[chooser], labels[top], regret)

        # ---- agreement and warnings
        low = [p for p in pairs if p["kendall"] is not None and p["kendall"] < min_kendall]
        measured_best = [v for k, v in best.items() if k != "extrapolated" and v is not None]
        best_moves = len(set(measured_best)) > 1
        extrapolated_moves = pred is not None and best.get("extrapolated") not in (None, best.get(str(tokens[-1])))
        agree = not low and not best_moves and not extrapolated_moves
        if is_decision and not agree:
            warnings.extend(_warnings(metric, tokens, labels, Y, pred, law, pairs, low, best, best_moves,
                                      extrapolated_moves, min_kendall, noise_std.get(metric), search_rung,
                                      target_tokens, pick))
        out_metrics[metric] = {
            "higher_is_better": hib, "decision": is_decision,
            "values": {lab: [_clean(v) for v in Y[m]] for m, lab in enumerate(labels)},
            "fit": fit,
            "extrapolated": ({lab: _clean(v) for lab, v in zip(labels, pred, strict=True)} if pred is not None else None),
            "pairs": pairs, "best": best, "regret": regret, "agree": agree}
    agree = all(out_metrics[m]["agree"] for m in decision if m in out_metrics)
    section = {"axis": "tokens", "rungs": tokens, "search_rung": search_rung,
               "target_tokens": float(target_tokens) if target_tokens is not None else None,
               "min_kendall": float(min_kendall),
               "mixtures": [{"label": str(m["label"]), "trial": int(m["trial"]), "prior": bool(m.get("prior")),
                             "mixture": dict(m["mixture"]), "schedule": dict(m.get("schedule") or {}),
                             "seed": m.get("seed")} for m in mixtures],
               "metrics": out_metrics, "agree": agree, "warnings": warnings}
    return LadderSection.model_validate(section).model_dump(mode="json")


def _warnings(metric, tokens, labels, Y, pred, law, pairs, low, best, best_moves, extrapolated_moves,
              min_kendall, std, search_rung, target_tokens, pick) -> list[str]:
    """Loud, one line each: they land in recipe.yaml's ``warnings`` and the terminal."""
    out = []
    measured = [p for p in low if p["b"] != "extrapolated"]
    if measured:
        worst = min(measured, key=lambda p: p["kendall"])
        i, j = tokens.index(worst["a"]), tokens.index(worst["b"])
        text = (f"LADDER: the rungs rank the mixtures differently by {metric}: Kendall tau {worst['kendall']:.2f} "
                f"(Spearman {worst['spearman']:.2f}) between {_tok(worst['a'])} and {_tok(worst['b'])} tokens over "
                f"{worst['n']} mixtures, below {min_kendall:g}")
        if len(measured) > 1:
            text += f" ({len(measured)} of {sum(p['b'] != 'extrapolated' for p in pairs)} rung pairs below)"
        if std is not None and std > 0:
            swapped, inside = _swapped_inside_noise(Y[:, i], Y[:, j], std)
            text += (f"; {inside} of the {swapped} swapped pairs differ by less than the seed noise at both rungs "
                     f"(2*sqrt(2)*std, std {std:.3g} at {_tok(search_rung or tokens[-1])} tokens)")
        if not best_moves:
            text += "; the best mixture is the same at every rung"
        out.append(text + ": the proxy's ranking may not hold at scale")
    if best_moves:
        seq = ", ".join(f"{best[str(t)]} at {_tok(t)}" for t in tokens if best[str(t)] is not None)
        text = f"LADDER: the best mixture by {metric} changes with the proxy's tokens: {seq}"
        if pick is not None:
            picked, at, top, regret = pick
            if regret == 0:
                text += f"; {picked}, the best at {_tok(at)}, is still the best at {_tok(tokens[-1])}"
            else:
                text += (f"; at {_tok(tokens[-1])} tokens {picked}, the best at {_tok(at)}, is {regret:.3g} worse than "
                         f"{top} (the {int(np.isfinite(Y[:, -1]).sum())} mixtures span "
                         f"{np.nanmax(Y[:, -1]) - np.nanmin(Y[:, -1]):.3g})")
        out.append(text)
    extra = [p for p in low if p["b"] == "extrapolated"]
    if extra or extrapolated_moves:
        p = next(q for q in pairs if q["b"] == "extrapolated")
        tau = f"Kendall tau {p['kendall']:.2f}" if p["kendall"] is not None else "no rank correlation"
        text = (f"LADDER: the power laws in tokens (alpha {law.alpha:.3g}, {law.method.replace('_', ' ')}) predict "
                f"another {metric} ranking at the full run's {_tok(target_tokens)} tokens "
                f"({target_tokens / tokens[-1]:,.0f}x the largest rung) than at {_tok(tokens[-1])} ({tau}")
        if extrapolated_moves:
            text += f"; best {best['extrapolated']} instead of {best[str(tokens[-1])]}"
        out.append(text + ")")
    return out


def decision_metrics(objective) -> list[str]:
    """The group scores a study decides by: what it maximises, and general when it is constrained."""
    if objective.pareto:
        return list(objective.pareto)
    out = [objective.maximize or "target"]
    if objective.general_floor is not None and "general" not in out:
        out.append("general")
    return out


def higher_is_better(metric: str) -> bool:
    """Orientation of a metric key of a study: group scores and task scores up, bits-per-byte and perplexities down."""

    return key_higher_is_better(metric)


def carry(tokens: Sequence[float], Y: np.ndarray, from_tokens: float, to_tokens: float) -> tuple[PowerLaw, np.ndarray]:
    """The ladder's power law in tokens (``fit_power_law`` on the rungs ``tokens`` x mixtures ``Y``) and, per
    mixture, its gain from ``from_tokens`` (the proxy's) to ``to_tokens`` (the full run's): ``L_m(to) -
    L_m(from)``, NaN where a mixture's law could not be fitted. ``recipe`` adds these gains to the
    proxy-scale prediction of a mixture no rung ran; their spread over the mixtures widens its interval."""
    law = fit_power_law(tokens, Y)
    return law, law.predict(to_tokens) - law.predict(from_tokens)
