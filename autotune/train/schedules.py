"""Learning-rate schedules as pure functions of the step.

``lr_at(step, total_steps, ...)`` returns the learning rate used for the update at ``step``
(0-based; ``step < total_steps``). Warmup is linear over ``warmup_fraction`` of the steps, from
``start_lr`` (default ``peak_lr / warmup_steps``, never 0) to ``peak_lr``. Mid-training usually
re-warms from where pre-training ended: ``start_lr`` = the base run's final LR (``schedule.start_lr: base``).
After warmup:

* ``constant``: ``peak_lr``;
* ``linear`` / ``cosine``: decay over all remaining steps to ``final_lr_ratio * peak_lr``;
* ``wsd`` (warmup-stable-decay, MiniCPM / DeepSeek style): stable at ``peak_lr``, then a decay over
  the last ``decay_fraction`` of the steps to ``final_lr_ratio * peak_lr``, of shape ``decay_shape``:
  ``linear``, ``cosine``, or ``1-sqrt`` (1 - sqrt(progress): Hägele et al. 2024, "Scaling Laws and
  Compute-Optimal Training Beyond Fixed Training Durations", found it matches cosine at a fraction of
  the cost).

The last step of a decaying schedule runs at exactly the final LR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("wsd", "cosine", "linear", "constant")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


@dataclass(frozen=True)
class ScheduleParams:
    kind: str
    peak_lr: float
    warmup_fraction: float = 0.0
    decay_fraction: float = 0.2
    final_lr_ratio: float = 0.0
    decay_shape: str = "linear"  # of the WSD decay
    start_lr: float | None = None  # first warmup LR (None: peak_lr / warmup_steps)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        if self.decay_shape not in DECAY_SHAPES:
            raise ValueError(f"unknown decay shape {self.decay_shape!r} (choose {', '.join(DECAY_SHAPES)})")
        if self.start_lr is not None and not self.start_lr >= 0:
            raise ValueError(f"start_lr must be >= 0 (got {self.start_lr})")


def _decay(shape: str, progress: float) -> float:
    """Decay multiplier from 1 (progress 0) to 0 (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    return 1.0 - progress


def lr_at(step: int, total_steps: int, p: ScheduleParams) -> float:
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside [0, {total_steps})")
    warmup = min(int(round(p.warmup_fraction * total_steps)), total_steps - 1)
    if step < warmup:
        if p.start_lr is None:
            return p.peak_lr * (step + 1) / warmup
        # from start_lr at step 0 to peak_lr at the first post-warmup step
        return p.start_lr + (p.peak_lr - p.start_lr) * step / warmup
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
        return final + (p.peak_lr - final) * _decay(p.decay_shape, progress)
    span = total_steps - warmup
    progress = (step - warmup + 1) / span
    return final + (p.peak_lr - final) * _decay(p.kind, progress)


def lr_curve(total_steps: int, p: ScheduleParams) -> list[float]:
    return [lr_at(s, total_steps, p) for s in range(total_steps)]
