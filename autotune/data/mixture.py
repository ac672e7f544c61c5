"""Exact mixture ratios per step.

Each step draws ``seqs_per_step`` sequences. Per domain, the count is ``floor(ratio * seqs)`` plus one
of the leftover slots, which go to the domains with the largest carried deficit (largest remainder with
carry). So after any number of steps, every domain's cumulative count is within one sequence of
``ratio * seqs_per_step * steps``: exact per step up to rounding, not only in expectation.
Pure and deterministic: ties break by domain order.
"""

from __future__ import annotations

import math


def step_counts(ratios: dict[str, float], seqs_per_step: int, steps: int) -> list[dict[str, int]]:
    """Sequences per domain for each of ``steps`` steps."""
    if seqs_per_step < 1:
        raise ValueError(f"seqs_per_step must be >= 1 (got {seqs_per_step})")
    total = sum(ratios.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6) or any(r < 0 for r in ratios.values()):
        raise ValueError(f"ratios must be >= 0 and sum to 1 (got {ratios})")
    names = list(ratios)
    given = dict.fromkeys(names, 0)
    out: list[dict[str, int]] = []
    for t in range(1, steps + 1):
        target = {n: ratios[n] * seqs_per_step * t for n in names}
        counts = {n: math.floor(ratios[n] * seqs_per_step) for n in names}
        left = seqs_per_step - sum(counts.values())
        deficit = sorted(names, key=lambda n: (-(target[n] - given[n] - counts[n]), names.index(n)))
        for n in deficit[:left]:
            counts[n] += 1
        for n in names:
            given[n] += counts[n]
        out.append(counts)
    return out
