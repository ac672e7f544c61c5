"""Learning-rate schedules as pure functions of the step.

``lr_at(step, total_steps, ...)`` returns the learning rate used for the update at ``step``
(0-based; ``step < total_steps``). Warmup is linear from ``peak_lr / warmup_steps`` (never 0) to
``peak_lr``. After warmup:

* ``constant``: ``peak_lr``;
* ``linear`` / ``cosine``: decay over all remaining steps to ``final_lr_ratio * peak_lr``;
* ``wsd`` (warmup-stable-decay, MiniCPM / DeepSeek style): stable at ``peak_lr``, then a linear decay over
  the last ``decay_fraction`` of the steps to ``final_lr_ratio * peak_lr``.

The last step of a decaying schedule runs at exactly the final LR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduleParams:
    kind: str
    peak_lr: float
    warmup_fraction: float = 0.0
    decay_fraction: float = 0.2
    final_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("wsd", "cosine", "linear", "constant"):
            raise ValueError(f"unknown schedule kind {self.kind!r}")


def _decay(shape: str, progress: float) -> float:
    """Decay multiplier from 1 (progress 0) to 0 (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def lr_at(step: int, total_steps: int, p: ScheduleParams) -> float:
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside [0, {total_steps})")
    warmup = min(int(round(p.warmup_fraction * total_steps)), total_steps - 1)
    if step < warmup:
        return p.peak_lr * (step + 1) / warmup
    final = p.final_lr_ratio * p.peak_lr
    if p.kind == "constant":
        return p.peak_lr
    if p.kind == "wsd":
        decay_steps = max(1, int(round(p.decay_fraction * total_steps))) if p.decay_fraction > 0 else 0
        decay_start = max(warmup, total_steps - decay_steps)
        if decay_steps == 0 or step < decay_start:
            return p.peak_lr
        span = total_steps - decay_start
        progress = (step - decay_start + 1) / span
        return final + (p.peak_lr - final) * _decay("linear", progress)
    span = total_steps - warmup
    progress = (step - warmup + 1) / span
    return final + (p.peak_lr - final) * _decay(p.kind, progress)


def lr_curve(total_steps: int, p: ScheduleParams) -> list[float]:
    return [lr_at(s, total_steps, p) for s in range(total_steps)]
