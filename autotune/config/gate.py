"""The CI gate's settings file (``autotune gate --config gate.yaml``): the schema, its tolerances and rules."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from autotune.config.base import Float, Int, Seed, Spec
from autotune.config.load import PLAIN_ERRORS, read_yaml, validation_error_to_user_error
from autotune.config.suite import GROUPS
from autotune.errors import UserError


# ----------------------------------------------------------------------------------------------- tolerance
@dataclass(frozen=True)
class Tolerance:
    """How much worse than the baseline an entry may get: ``value`` in the metric's unit, or a fraction of
    the baseline's value when ``relative``."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, raw: Any, *, file: str | Path | None = None, field: str | None = None) -> Tolerance:
        """``0.02`` (absolute) or ``"2%"`` (relative); negative or unreadable values are a UserError."""
        text = str(raw).strip()
        relative = text.endswith("%")
        try:
            value = float(text[:-1] if relative else text)
        except ValueError:
            raise UserError("a tolerance is a number (absolute, in the metric's unit) or a percentage of the "
                            "baseline's value, e.g. 0.02 or 2%", file=file, field=field, value=raw) from None
        if not math.isfinite(value) or value < 0 or (relative and value > 100):
            raise UserError("a tolerance must be >= 0 (and a percentage <= 100%)", file=file, field=field, value=raw)
        return cls(value / 100 if relative else value, relative)

    def threshold(self, baseline_value: float) -> float:
        """The drop allowed, in the metric's unit."""
        return self.value * abs(baseline_value) if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


@dataclass(frozen=True)
class Rule:
    """``pattern`` (shell-style, on entry keys) -> ``tolerance``; ``file`` / ``field`` say where it was set."""

    pattern: str
    tolerance: Tolerance
    field: str
    file: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}: {self.field}" if self.file else self.field


# ----------------------------------------------------------------------------------------------- config
# The bootstrap bounds the gate offers (``gate.interval``, ``--interval``; ``autotune.gate.compare.bootstrap_bounds``).
Interval = Literal["bca", "percentile"]


class GateConfig(Spec):
    """The gate's settings (``--config gate.yaml``; every field has a default, CLI options override).

    ``tolerance`` maps entry-key patterns (shell-style: ``bpb/*``, ``*/gold_logprob``) to tolerances; the
    first matching pattern wins, CLI ``--tolerance`` rules before the file's, then ``autotune.gate.compare.DEFAULT_TOLERANCE``.
    ``skip`` patterns leave entries out; ``groups`` names the suite groups gated.
    """

    confidence: Float = Field(0.95, gt=0.5, lt=1.0,
                              description="one-sided confidence that the drop exceeds the tolerance")
    resamples: Int = Field(2000, ge=100, le=100_000, description="paired bootstrap resamples")
    seed: Seed = Field(0, description="seed of the bootstrap's resampling (the gate is deterministic)")
    # BCa by default: at the gate's 16-64 held-out windows, at worst (left-skewed, 16), the percentile lower
    # bound fails 19.6% of drops at the tolerance instead of 5%, BCa's 15.5% (benchmarks/gate_coverage.py)
    interval: Interval = Field(
        "bca", description="bootstrap bounds: bca (bias-corrected and accelerated, scipy) or percentile")
    tolerance: dict[str, Float | str] = Field(default_factory=dict)
    skip: list[str] = Field(default_factory=list)
    groups: list[Literal["target", "general", "report"]] = Field(default_factory=lambda: list(GROUPS), min_length=1)
    source_file: str | None = Field(None, exclude=True)

    @field_validator("tolerance")
    @classmethod
    def _tolerances(cls, v: dict[str, float | str]) -> dict[str, float | str]:
        for pattern, tol in v.items():
            Tolerance.parse(tol, field=f"tolerance.{pattern}")
        return v

    def rules(self) -> list[Rule]:
        """The file's tolerance rules, in its order."""
        return [Rule(p, Tolerance.parse(t), f"tolerance.{p}", self.source_file) for p, t in self.tolerance.items()]

    def skip_rules(self) -> list[tuple[str, str, str | None]]:
        """(pattern, field, file) of the file's skip patterns."""
        return [(p, f"skip[{i}]", self.source_file) for i, p in enumerate(self.skip)]


def load_gate_config(path: Path | None) -> GateConfig:
    """The gate config file (defaults when ``path`` is None); errors name the file, the field and the value."""
    if path is None:
        return GateConfig()
    data = read_yaml(Path(path), "gate config")
    try:
        return GateConfig.model_validate({**data, "source_file": str(path)})
    except UserError as e:  # raised inside a validator: add the file
        raise UserError(e.problem, file=path, field=e.field, value=e.value) from None
    except ValidationError as e:
        raise validation_error_to_user_error(e, path, data, PLAIN_ERRORS) from None
