"""Schedule extrapolation: the Multi-Power Law (MPL) of loss curves across learning-rate schedules.

Luo et al. 2025, "A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules" (ICLR 2025,
arXiv:2503.12811), eq. (5)::

    L(t) = L0 + A * (S1(t) + S_W) ** -alpha - LD(t)
    S1(t) = sum_{tau=1..t} eta_tau                          (LR area after warmup; S_W: the warmup's area)
    LD(t) = B * sum_{k=1..t} (eta_{k-1} - eta_k) * G(eta_k ** -gamma * S_k(t))
    S_k(t) = sum_{tau=k..t} eta_tau,  G(x) = 1 - (C * x + 1) ** -beta

``eta_0`` is the LR at the end of warmup; LRs are in the optimiser's raw units. The loss logged at step
``s`` is taken to follow the updates of steps ``0 .. s-1`` (autotune's train log computes the loss of step
``s`` before its update). The fit minimises a Huber loss (delta 1e-3, as the paper) on log-loss residuals
with ``scipy.optimize.least_squares`` and an analytic Jacobian, from a grid of starts of the simplified
form ``L0 + A * S1**-alpha - B * (eta_0 - eta_t)`` (the paper's initialisation).

Only numpy/scipy; nothing here knows about studies. ``candidate_schedules`` + ``choose_schedule`` pick a
decay shape and fraction for a full run from a fitted law.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

# Huber delta on log-loss residuals: 1e-3 (0.1% relative error), the value of the MPL paper's fits.
HUBER_DELTA = 1e-3
_PARAMS = ("L0", "A", "alpha", "B", "C", "beta", "gamma")


@dataclass(frozen=True)
class LossCurve:
    """One training run: the LR of every step (``lrs[i]`` is used by the update of step ``i``) and the
    losses observed at some steps. ``warmup_steps``: the leading steps whose LR rises to the peak
    (detected when None). ``group``: curves of one group share ``L0`` when the fit allows an offset per
    group (proxy runs of different mixtures reach different losses under the same schedule law)."""

    lrs: np.ndarray
    steps: np.ndarray
    loss: np.ndarray
    warmup_steps: int | None = None
    group: str = ""

    def __post_init__(self) -> None:
        lrs = np.asarray(self.lrs, dtype=float)
        steps = np.asarray(self.steps, dtype=int)
        loss = np.asarray(self.loss, dtype=float)
        if lrs.ndim != 1 or steps.shape != loss.shape or steps.ndim != 1:
            raise ValueError("a loss curve needs 1-D lrs and equally long steps and loss")
        if len(steps) and (steps.min() < 1 or steps.max() > len(lrs)):
            raise ValueError(f"observed steps must lie in [1, {len(lrs)}] (got {steps.min()}..{steps.max()})")
        if np.any(lrs < 0) or not np.all(np.isfinite(lrs)):
            raise ValueError("learning rates must be finite and non-negative")
        if np.any(loss <= 0) or not np.all(np.isfinite(loss)):
            raise ValueError("losses must be finite and positive")
        object.__setattr__(self, "lrs", lrs)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "loss", loss)
        if self.warmup_steps is None:
            object.__setattr__(self, "warmup_steps", detect_warmup(lrs))


def detect_warmup(lrs: np.ndarray) -> int:
    """Index of the schedule's first peak: the step after which the LR stops rising (0: no warmup)."""
    lrs = np.asarray(lrs, dtype=float)
    if len(lrs) < 2:
        return 0
    rising = np.diff(lrs) > 0
    stop = np.flatnonzero(~rising)
    return int(stop[0]) if len(stop) else len(lrs) - 1


@dataclass(frozen=True)
class _Prepared:
    """What a curve contributes to the fit that does not depend on the parameters."""

    s1: np.ndarray        # (n_obs,) LR area after warmup + the warmup's area
    drops: np.ndarray     # (n_changes,) eta_{k-1} - eta_k at the LR changes after warmup
    log_eta: np.ndarray   # (n_changes,) log eta_k
    log_sk: np.ndarray    # (n_obs, n_changes) log S_k(t); -inf where k is after t
    mask: np.ndarray      # (n_obs, n_changes) k <= t
    log_loss: np.ndarray
    eta0: float
    eta_t: np.ndarray     # LR at the last update before each observation


def _prepare(curve: LossCurve, block: int = 1) -> _Prepared:
    lrs = curve.lrs
    w = int(curve.warmup_steps or 0)
    peak = float(lrs[w]) if len(lrs) else 0.0
    cum = np.concatenate([[0.0], np.cumsum(lrs)])  # cum[i] = sum of lrs[0..i-1]
    t = curve.steps  # the loss at step t follows updates 0..t-1
    s1 = cum[t]
    ks = np.arange(w + 1, len(lrs))
    d = lrs[ks - 1] - lrs[ks]
    keep = d != 0
    ks, d = ks[keep], d[keep]
    cum_k = cum[ks]
    eta = lrs[ks]
    if block > 1 and len(ks) > 1:
        # Merge runs of ``block`` consecutive LR changes into one at their drop-weighted centre (the
        # midpoint rule: exact where G is linear over a block). Blocks never straddle an observed step.
        bid = np.arange(len(ks)) // block
        cut = np.searchsorted(ks, np.unique(t), side="left")
        bid = bid + np.searchsorted(cut, np.arange(len(ks)), side="right")
        _, start = np.unique(bid, return_index=True)
        dsum = np.add.reduceat(d, start)
        wts = np.where(dsum != 0, dsum, 1.0)
        cum_k = np.add.reduceat(d * cum_k, start) / wts
        eta = np.add.reduceat(d * eta, start) / wts
        ks = ks[start]  # a block's first change decides which observations see it
        d = dsum
    # eta_k = 0 (a schedule ending at 0): eta**-gamma is infinite and G = 1; a floor keeps logs finite
    eta = np.maximum(eta, 1e-9 * max(peak, 1e-30))
    sk = cum[t][:, None] - cum_k[None, :]  # S_k(t) = sum lrs[k..t-1]
    mask = ks[None, :] < t[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_sk = np.where(mask & (sk > 0), np.log(np.where(sk > 0, sk, 1.0)), -np.inf)
    eta_t = lrs[np.maximum(t - 1, 0)]
    return _Prepared(s1=s1, drops=d, log_eta=np.log(eta), log_sk=log_sk, mask=mask,
                     log_loss=np.log(curve.loss), eta0=peak, eta_t=eta_t)


@dataclass(frozen=True)
class MultiPowerLaw:
    """Fitted MPL parameters. ``S0``: area added to every curve's LR area (see ``fit_multi_power_law``).
    ``offsets``: per-group shifts of ``L0`` (empty when one ``L0`` fits all curves)."""

    L0: float
    A: float
    alpha: float
    B: float
    C: float
    beta: float
    gamma: float
    S0: float = 0.0
    offsets: dict[str, float] = field(default_factory=dict)

    def params(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in (*_PARAMS, "S0")}

    def to_json(self) -> dict:
        return asdict(self)

    def predict(self, curve: LossCurve, steps: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Loss at ``steps`` (default: the curve's observed steps) under the curve's LR schedule."""
        if steps is not None:
            curve = LossCurve(curve.lrs, np.asarray(steps, dtype=int), np.ones(len(steps)), curve.warmup_steps,
                              curve.group)
        theta = self._theta()
        off = self.offsets.get(curve.group, 0.0)
        return np.concatenate([_forward(theta, p, off)[0] for p in _prepare_chunked(curve)])

    def _theta(self) -> np.ndarray:
        return np.array([self.L0, *np.log(np.maximum([self.A, self.alpha, self.B, self.C, self.beta, self.gamma,
                                                      self.S0], 1e-300))])


def _prepare_chunked(curve: LossCurve, max_cells: int = 4_000_000) -> list[_Prepared]:
    """Split the observations so that each (n_obs x n_changes) block stays under ``max_cells``."""
    n_changes = max(1, int(np.count_nonzero(np.diff(curve.lrs[int(curve.warmup_steps or 0):]))))
    # Merge up to 16 consecutive LR changes (a smooth decay changes the LR every step): measured on the
    # MPL paper's cosine curves, predictions move by < 1e-6 relative, and the fit runs 35x faster.
    block = max(1, min(16, n_changes // 1000))
    per = max(1, max_cells // max(1, n_changes // block))
    out = []
    for i in range(0, len(curve.steps), per):
        sl = slice(i, i + per)
        out.append(_prepare(LossCurve(curve.lrs, curve.steps[sl], curve.loss[sl], curve.warmup_steps, curve.group),
                            block))
    return out


def _forward(theta: np.ndarray, p: _Prepared, offset: float, jac: bool = False):
    """Predicted loss, and d pred / d theta for theta = [L0, log A, log alpha, log B, log C, log beta,
    log gamma, log S0], for one prepared curve."""
    L0 = theta[0]
    A, alpha, B, C, beta, gamma, S0 = np.exp(theta[1:8])
    area = p.s1 + S0
    power = A * area ** -alpha
    if p.drops.size:
        with np.errstate(over="ignore", invalid="ignore"):
            cx = C * np.exp(p.log_sk - gamma * p.log_eta[None, :])  # C eta_k^-gamma S_k(t); 0 outside the mask
            log_u = np.log1p(cx)
            pw = np.exp(-beta * log_u)                              # (1 + C x)^-beta
        g = np.where(p.mask, 1.0 - pw, 0.0)
        ld = B * (g @ p.drops)
    else:
        ld = np.zeros_like(p.s1)
    pred = L0 + offset + power - ld
    if not jac:
        return pred, None
    J = np.zeros((len(pred), 8))
    J[:, 0] = 1.0
    J[:, 1] = power
    J[:, 2] = -power * np.log(area) * alpha
    J[:, 7] = -alpha * power / area * S0
    if p.drops.size:
        dg_dlogc = np.where(p.mask, beta * cx * pw / (1.0 + cx), 0.0)
        dg_dlogb = np.where(p.mask, log_u * pw * beta, 0.0)
        dg_dlogg = dg_dlogc * (-gamma * p.log_eta[None, :])
        J[:, 3] = -ld
        J[:, 4] = -B * (dg_dlogc @ p.drops)
        J[:, 5] = -B * (dg_dlogb @ p.drops)
        J[:, 6] = -B * (dg_dlogg @ p.drops)
    return pred, J


# A weak prior on log C, log beta, log gamma at the MPL paper's starting values (C = 1, beta = gamma = 0.5):
# three curves identify the four decay parameters poorly, and unregularised fits drift to degenerate
# corners (beta -> 0 with B -> 1e9 at 25M). The weight 1e-3 (against ~450 points of Huber(1e-3) log
# residuals) moved the held-out error by < 0.01 points between 1e-4 and 1e-2 (docs/LOG.md, 2026-11-26).
PRIOR_LOG_CBG = np.log([1.0, 0.5, 0.5])
PRIOR_WEIGHT = 1e-3
# the simplified law's log-parameters are clipped to exp's float range; its objective's value for overflow
_MAX_LOG, _WORST = 700.0, 1e300


def fit_multi_power_law(curves: Sequence[LossCurve], *, offset_per_group: bool = False,
                        max_nfev: int = 300) -> MultiPowerLaw:
    """Fit the MPL to ``curves`` (at least one should decay, for ``B, C, beta, gamma`` to be identified).

    Besides the paper's seven parameters, ``S0 >= 0`` is fitted: area added to the warmup's (the warmup's
    updates need not count exactly as their LR area); on the paper's 400M curves it cut the held-out error
    from 0.21% to 0.19% (docs/LOG.md). ``offset_per_group``: each ``curve.group`` gets its own ``L0``
    (the first group, sorted, is the reference). Starts: the paper's grid over ``L0, A, alpha, B`` of the
    simplified law ``L0 + A * S1**-alpha - B * (eta_0 - eta_t)``, then the full law from the best three.
    """
    from scipy.optimize import least_squares, minimize

    if not curves:
        raise ValueError("no loss curves to fit")
    preps = [_prepare_chunked(c) for c in curves]
    groups = sorted({c.group for c in curves}) if offset_per_group else []
    gidx = {g: i for i, g in enumerate(groups)}
    n_off = max(0, len(groups) - 1)
    prior_w = math.sqrt(PRIOR_WEIGHT)

    def offset(z, c):
        gi = gidx[c.group] if n_off else 0
        return (z[8 + gi - 1] if gi > 0 else 0.0), gi

    def residuals(z):
        out = []
        for c, prep in zip(curves, preps, strict=True):
            off, _ = offset(z, c)
            for p in prep:
                pred, _ = _forward(z[:8], p, off)
                out.append(np.log(np.maximum(pred, 1e-12)) - p.log_loss)
        out.append(prior_w * (z[4:7] - PRIOR_LOG_CBG))
        return np.concatenate(out)

    def jacobian(z):
        rows = []
        for c, prep in zip(curves, preps, strict=True):
            off, gi = offset(z, c)
            for p in prep:
                pred, J = _forward(z[:8], p, off, jac=True)
                inv = 1.0 / np.maximum(pred, 1e-12)
                full = np.zeros((len(pred), 8 + n_off))
                full[:, :8] = J * inv[:, None]
                if gi > 0:
                    full[:, 8 + gi - 1] = inv
                rows.append(full)
        prior = np.zeros((3, 8 + n_off))
        prior[:, 4:7] = prior_w * np.eye(3)
        rows.append(prior)
        return np.vstack(rows)

    # -- starts from the simplified law (the paper's initialisation)
    flat = [p for prep in preps for p in prep]
    s1 = np.concatenate([p.s1 for p in flat])
    drop = np.concatenate([p.eta0 - p.eta_t for p in flat])
    y = np.exp(np.concatenate([p.log_loss for p in flat]))
    lmin = float(y.min())
    flat_lr = drop <= 0
    sel = flat_lr if flat_lr.sum() >= 3 else np.ones_like(drop, bool)
    slope, _ = np.polyfit(np.log(s1[sel]), np.log(np.maximum(y[sel] - lmin + 0.01, 1e-6)), 1) if sel.sum() > 1 else (-0.5, 0)
    peak = float(max(p.eta0 for p in flat))
    spread = max(float(y.max() - lmin), 1e-3)

    def simple(q):
        # L-BFGS-B's line search may try exponents past 709 (curves that jump, tiny LRs): math.exp would raise
        # OverflowError; np.exp of clipped logs stays finite, and a non-finite objective reads as very bad
        with np.errstate(all="ignore"):
            A, alpha, B = np.exp(np.clip(q[1:4], -_MAX_LOG, _MAX_LOG))
            pred = q[0] + A * s1 ** -alpha - B * drop
            value = float(np.sum(_huber(np.log(np.maximum(pred, 1e-12)) - np.log(y))))
        return value if math.isfinite(value) else _WORST

    starts = []
    for L0 in lmin - spread * np.array([0.0, 0.25, 0.5, 1.0]):
        for alpha in {round(a, 3) for a in (max(0.05, -slope), 0.3, 0.5)}:
            A0 = max(float(np.median((y - L0) * s1 ** alpha)), 1e-6)
            for b in (0.1, 0.5):
                q0 = [L0, math.log(A0), math.log(alpha), math.log(b * spread / max(peak, 1e-30))]
                with np.errstate(all="ignore"):
                    res = minimize(simple, q0, method="L-BFGS-B")
                if math.isfinite(res.fun) and np.all(np.isfinite(res.x)):
                    starts.append((res.fun, res.x))
    starts.sort(key=lambda s: s[0])
    best = None
    for _, q in starts[:3]:
        for s0 in (1e-3, 0.1):
            z0 = np.concatenate([q, PRIOR_LOG_CBG, [math.log(s0 * float(np.median(s1)))], np.zeros(n_off)])
            try:
                with np.errstate(all="ignore"):
                    res = least_squares(residuals, z0, jac=jacobian, loss="huber", f_scale=HUBER_DELTA,
                                        max_nfev=max_nfev, x_scale="jac")
            except (ValueError, FloatingPointError, np.linalg.LinAlgError):
                continue
            if np.all(np.isfinite(res.fun)) and (best is None or res.cost < best.cost):
                best = res
    if best is None:
        raise ValueError("the Multi-Power Law fit failed from every start")
    z = best.x
    A, alpha, B, C, beta, gamma, S0 = (float(v) for v in np.exp(z[1:8]))
    offsets = {g: (float(z[8 + i - 1]) if i > 0 else 0.0) for g, i in gidx.items()} if n_off else {}
    return MultiPowerLaw(float(z[0]), A, alpha, B, C, beta, gamma, S0, offsets)


def _huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def relative_errors(law: MultiPowerLaw, curve: LossCurve) -> np.ndarray:
    """|predicted - observed| / observed at the curve's observed steps."""
    return np.abs(law.predict(curve) - curve.loss) / curve.loss


# ----------------------------------------------------------------------------------------------- schedules
def schedule_lrs(kind: str, total_steps: int, peak_lr: float, warmup_fraction: float = 0.0,
                 decay_fraction: float = 0.2, final_lr_ratio: float = 0.0, decay_shape: str = "linear") -> np.ndarray:
    """Per-step LRs of autotune's schedules, vectorised; equal to ``autotune.train.schedules.lr_at``."""
    n = int(total_steps)
    if n < 1:
        raise ValueError(f"total_steps must be >= 1 (got {total_steps})")
    step = np.arange(n, dtype=float)
    warmup = min(int(round(warmup_fraction * n)), n - 1)
    final = final_lr_ratio * peak_lr
    out = np.full(n, float(peak_lr))
    if warmup > 0:
        out[:warmup] = peak_lr * (step[:warmup] + 1) / warmup
    if kind == "constant":
        return out
    if kind == "wsd":
        decay_steps = max(1, int(round(decay_fraction * n))) if decay_fraction > 0 else 0
        if decay_steps == 0:
            return out
        start = max(warmup, n - decay_steps)
        span = n - start
        prog = np.clip((step[start:] - start + 1) / span, 0.0, 1.0)
        mult = {"linear": 1.0 - prog, "cosine": 0.5 * (1.0 + np.cos(np.pi * prog)), "1-sqrt": 1.0 - np.sqrt(prog)}
        if decay_shape not in mult:
            raise ValueError(f"unknown decay shape {decay_shape!r}")
        out[start:] = final + (peak_lr - final) * mult[decay_shape]
        return out
    if kind in ("cosine", "linear"):
        span = n - warmup
        prog = np.clip((step[warmup:] - warmup + 1) / span, 0.0, 1.0)
        mult = 0.5 * (1.0 + np.cos(np.pi * prog)) if kind == "cosine" else 1.0 - prog
        out[warmup:] = final + (peak_lr - final) * mult
        return out
    raise ValueError(f"unknown schedule kind {kind!r}")


@dataclass(frozen=True)
class ScheduleCandidate:
    kind: str
    decay_fraction: float
    final_lr_ratio: float
    predicted_loss: float
    decay_shape: str | None = None  # of a wsd decay (None for the other kinds)


def choose_schedule(law: MultiPowerLaw, *, total_steps: int, peak_lr: float, warmup_fraction: float,
                    kinds: Sequence[str], decay_fractions: Sequence[float], final_lr_ratios: Sequence[float],
                    group: str = "", decay_shapes: Sequence[str] = ("linear",)) -> list[ScheduleCandidate]:
    """Predicted final loss of every candidate schedule at ``total_steps``, best first.

    ``decay_fractions`` and ``decay_shapes`` apply to ``wsd`` only (cosine / linear decay over all steps
    after warmup, constant does not decay)."""
    out = []
    for kind in dict.fromkeys(kinds):
        fracs = decay_fractions if kind == "wsd" else [1.0 - warmup_fraction if kind != "constant" else 0.0]
        ratios = final_lr_ratios if kind != "constant" else [1.0]
        shapes = list(dict.fromkeys(decay_shapes)) if kind == "wsd" else ["linear"]
        for frac in dict.fromkeys(float(f) for f in fracs):
            for ratio in dict.fromkeys(float(r) for r in ratios):
                for shape in shapes:
                    lrs = schedule_lrs(kind, total_steps, peak_lr, warmup_fraction, frac, ratio, shape)
                    curve = LossCurve(lrs, np.array([total_steps]), np.ones(1), group=group)
                    loss = float(law.predict(curve)[0])
                    out.append(ScheduleCandidate(kind, frac, ratio, loss, shape if kind == "wsd" else None))
    out.sort(key=lambda c: c.predicted_loss)
    return out
