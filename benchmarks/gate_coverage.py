"""Coverage of the gate's bootstrap bounds (BCa vs percentile) on synthetic paired data of known drop.

    .venv/bin/python benchmarks/gate_coverage.py [--reps 2000] [--resamples 1000] [--confidence 0.95]

For each distribution of per-document values and each number of documents n (the gate's 16-64 held-out
windows, and 200 documents of a small task), draws ``reps`` independent paired samples whose true drop is
known, computes the one-sided bounds with ``autotune.gate.compare.bootstrap_bounds`` (both methods on the
same resamples), and prints the fraction of samples whose lower bound lies at or below the true drop
(``low``: what keeps the gate from failing a checkpoint that is exactly at its tolerance) and whose upper
bound lies at or above it (``high``). Nominal: ``confidence`` each; a binomial standard error of
sqrt(p (1 - p) / reps) applies (0.005 at 0.95 and 2000 reps). ``worst``: the larger distance of the two
bounds' coverage from nominal, per method; the ratio is BCa's over the percentile's (below 1: BCa is
closer to nominal).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotune.gate.compare import bootstrap_bounds  # noqa: E402


def draw(dist: str, reps: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """``parts`` [4, reps, n] (base num, base den, checkpoint num, checkpoint den), the sign (+1: higher is
    better) and the true drop (population value, positive = the checkpoint is worse)."""
    ones = np.ones((reps, n))
    if dist == "normal":  # symmetric control: a continuous metric, normal differences
        base = rng.normal(-1.0, 0.5, (reps, n))
        return np.stack([base, ones, base - 0.05 - rng.normal(0, 0.2, (reps, n)), ones]), 1.0, 0.05
    if dist in ("lognormal", "lognormal-left"):  # skewed differences: a few documents lost (or gained) a lot
        d = rng.lognormal(0.0, 1.0, (reps, n)) - 1.0  # mean e^0.5 - 1
        d = d if dist == "lognormal" else -d
        base = rng.normal(-1.0, 0.5, (reps, n))
        truth = (math.exp(0.5) - 1.0) * (1 if dist == "lognormal" else -1)
        return np.stack([base, ones, base - d, ones]), 1.0, truth
    if dist == "bpb-windows":  # held-out bits-per-byte: ratio of summed bits over summed bytes, lower is better
        nbytes = rng.uniform(600, 1200, (reps, n))
        rate = rng.gamma(4.0, 0.25, (reps, n))  # bits per byte of each window under the baseline, mean 1
        worse = rate + 0.02 + 0.1 * (rng.exponential(1.0, (reps, n)) - 1.0)  # right-skewed per-window loss
        return np.stack([rate * nbytes, nbytes, worse * nbytes, nbytes]), -1.0, 0.02
    if dist == "accuracy":  # 0/1 per document, documents of varied difficulty, 5 points lost on average
        p = rng.uniform(0.2, 0.9, (reps, n))
        base = (rng.random((reps, n)) < p).astype(float)
        cand = (rng.random((reps, n)) < p - 0.05).astype(float)
        return np.stack([base, ones, cand, ones]), 1.0, 0.05
    raise ValueError(dist)


def coverage(dist: str, n: int, *, reps: int, resamples: int, confidence: float, seed: int) -> dict[str, tuple]:
    """{method: (lower-bound coverage, upper-bound coverage, fallbacks)} over ``reps`` samples."""
    parts, sign, truth = draw(dist, reps, n, np.random.default_rng(seed))

    def drop(nb, db, nc, dc):
        return sign * (nb / db - nc / dc)

    out = {}
    for method in ("percentile", "bca"):
        b = bootstrap_bounds(parts, drop, confidence=confidence, resamples=resamples, seed=seed, interval=method)
        out[method] = (float(np.mean(b.low <= truth)), float(np.mean(b.high >= truth)),
                       int(np.count_nonzero(b.fallback != "")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--n", type=int, nargs="+", default=[16, 32, 64, 200])
    ap.add_argument("--dists", nargs="+", default=["normal", "lognormal", "lognormal-left", "bpb-windows", "accuracy"])
    a = ap.parse_args()
    se = math.sqrt(a.confidence * (1 - a.confidence) / a.reps)
    print(f"nominal {a.confidence} per bound; {a.reps} samples per row (binomial s.e. {se:.4f}); "
          f"{a.resamples} resamples")
    print(f"{'distribution':<15} {'n':>4} | {'percentile low':>14} {'high':>6} {'worst':>6} | {'BCa low':>8} "
          f"{'high':>6} {'worst':>6} {'fallbacks':>9} | {'ratio':>5} | {'s':>5}")
    for dist in a.dists:
        for n in a.n:
            t = time.perf_counter()
            c = coverage(dist, n, reps=a.reps, resamples=a.resamples, confidence=a.confidence, seed=n)
            (pl, ph, _), (bl, bh, fb) = c["percentile"], c["bca"]
            p_worst = max(abs(pl - a.confidence), abs(ph - a.confidence))
            b_worst = max(abs(bl - a.confidence), abs(bh - a.confidence))
            ratio = b_worst / p_worst if p_worst else float("nan")
            print(f"{dist:<15} {n:>4} | {pl:>14.3f} {ph:>6.3f} {p_worst:>6.3f} | {bl:>8.3f} {bh:>6.3f} "
                  f"{b_worst:>6.3f} {fb:>9} | {ratio:>5.2f} | {time.perf_counter() - t:>5.1f}", flush=True)


if __name__ == "__main__":
    main()
