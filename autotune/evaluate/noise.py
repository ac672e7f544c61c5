"""The seed-noise floor: how much a metric moves between replicate proxy runs of one mixture.

A study runs the prior mixture ``proxy.replicates`` times with seeds ``seed, seed + 1, ...``; the spread
of each metric over those runs is the noise a difference between two trials must beat before it means
anything (Marin measured signal-to-noise 1-2 for accuracy at small scale, 8-22 for bits-per-byte).
Pure functions: the study records the floor, the objective and the report compare against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class NoiseStat:
    """One metric over ``n`` replicates: mean, sample standard deviation and spread (max - min)."""

    n: int
    mean: float
    std: float
    spread: float

    def to_json(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "spread": self.spread}


def noise_floor(replicates: list[dict[str, float]]) -> dict[str, NoiseStat]:
    """Per metric key (present and finite in at least two replicates) its seed-noise statistics."""
    keys = sorted({k for r in replicates for k in r})
    out: dict[str, NoiseStat] = {}
    for k in keys:
        vals = [float(r[k]) for r in replicates if k in r and r[k] is not None and math.isfinite(float(r[k]))]
        if len(vals) < 2:
            continue
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        out[k] = NoiseStat(len(vals), mean, std, max(vals) - min(vals))
    return out


def beyond_noise(delta: float, stat: NoiseStat, k: float = 2.0) -> bool:
    """Whether a difference between two runs exceeds ``k`` seed standard deviations of one metric.

    The difference of two runs has sqrt(2) times one run's seed noise: ``|delta| > k * sqrt(2) * std``.
    """
    return abs(delta) > k * math.sqrt(2.0) * stat.std
