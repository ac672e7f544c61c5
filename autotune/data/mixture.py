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


def phased_step_counts(phases: list[tuple[float, dict[str, float]]], seqs_per_step: int,
                       steps: int) -> list[dict[str, int]]:
    """Sequences per domain per step for a multi-phase mixture (OLMo 2 / Marin style mid-training).

    ``phases`` is ``[(start_fraction, ratios), ...]`` with the first start at 0 and starts increasing;
    phase ``i`` covers steps ``round(start_i * steps)`` up to the next phase's first step. Within each phase
    the counts are exact as in :func:`step_counts`. Every step's dict has every domain of every phase.
    """
    if not phases or phases[0][0] != 0.0:
        raise ValueError(f"the first phase must start at 0 (got {[p[0] for p in phases]})")
    starts = [round(f * steps) for f, _ in phases] + [steps]
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
        raise ValueError(f"phase starts {[p[0] for p in phases]} give an empty phase over {steps} steps")
    names = list(dict.fromkeys(n for _, r in phases for n in r))
    out: list[dict[str, int]] = []
    for (_, ratios), a, b in zip(phases, starts, starts[1:], strict=False):
        full = {n: ratios.get(n, 0.0) for n in names}
        out.extend(step_counts(full, seqs_per_step, b - a))
    return out
