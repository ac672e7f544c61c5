"""Pure numbers the report shows: the seed-noise floor, the Pareto front, the best feasible trial."""

from __future__ import annotations

from dataclasses import dataclass

from autotune.report.load import ReportTrial, StudyData


@dataclass(frozen=True)
class Noise:
    """Spread (max - min) of a value over the prior mixture's replicate seeds, and their mean.

    A trial whose value lies within ``mean +- spread`` differs from the prior by no more than the prior's
    own seeds differ among themselves: that difference is inside the noise floor.
    """

    mean: float
    spread: float
    n: int

    def inside(self, value: float) -> bool:
        return abs(value - self.mean) <= self.spread


def noise_floor(values: list[float]) -> Noise | None:
    """None with fewer than 2 replicates: the noise is then unknown, not zero."""
    if len(values) < 2:
        return None
    return Noise(mean=sum(values) / len(values), spread=max(values) - min(values), n=len(values))


def noise_of(data: StudyData, attr: str) -> Noise | None:
    """``attr``: ``target``, ``general`` or a metric key."""
    reps = data.prior_replicates
    if attr in ("target", "general"):
        return noise_floor([getattr(t, attr) for t in reps])
    return noise_floor([t.metrics[attr] for t in reps if attr in t.metrics])


def snr(data: StudyData, attr: str) -> float | None:
    """Signal-to-noise of a metric in this study: the standard deviation of its value over the complete trials
    that are not prior replicates (how much the mixtures move it), over the sample standard deviation of the
    prior's replicate seeds (how much a seed moves it). Below about 1 the metric cannot rank the mixtures at
    this proxy scale; None without 2 replicates, 2 other trials, or with a zero seed deviation."""
    import statistics

    def value(t: ReportTrial) -> float | None:
        v = getattr(t, attr) if attr in ("target", "general") else t.metrics.get(attr)
        return None if v is None else float(v)

    reps = [v for v in (value(t) for t in data.prior_replicates) if v is not None]
    ids = {t.number for t in data.prior_replicates}
    others = [v for v in (value(t) for t in data.complete if t.number not in ids) if v is not None]
    if len(reps) < 2 or len(others) < 2:
        return None
    noise = statistics.stdev(reps)
    return statistics.stdev(others) / noise if noise > 0 else None


def pareto_front(trials: list[ReportTrial]) -> list[ReportTrial]:
    """Non-dominated trials when maximising both target and general, by general ascending (target descending)."""
    front = []
    for t in trials:
        dominated = any(o.target >= t.target and o.general >= t.general and (o.target > t.target or o.general > t.general)
                        for o in trials)
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: (t.general, -t.target))


def is_feasible(t: ReportTrial) -> bool:
    if t.feasible is not None:
        return bool(t.feasible)
    return t.constraint is None or t.constraint <= 0


def best_feasible(data: StudyData) -> ReportTrial | None:
    feasible = [t for t in data.complete if is_feasible(t)]
    return max(feasible, key=lambda t: t.target) if feasible else None
