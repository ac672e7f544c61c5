"""``runs/<study>/recipe.yaml``: ``Recipe`` (frozen pydantic, one documented field each), ``write_recipe``
and ``load_recipe``.

``Recipe`` checks the numbers agree when built or loaded: domain tokens sum to ``tokens``, ``tokens =
schedule.total_steps * batch_tokens``, epochs = tokens / available tokens, warmup + stable + decay steps =
total steps. ``autotune.extrapolate.recipe.build_recipe`` builds it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from autotune.config.base import Frozen as _Frozen
from autotune.config.load import read_yaml
from autotune.errors import UserError
from autotune.extrapolate.ladder import LadderSection

RECIPE_VERSION = 1


class DomainPlan(_Frozen):
    """One domain of the full run."""

    role: Literal["target", "general"] = Field(description="the domain's role in the search space")
    share: float = Field(ge=0, le=1, description="share of the full run's training tokens")
    tokens: int = Field(ge=0, description="training tokens of this domain in the full run")
    available_tokens: float | None = Field(None, gt=0, description="unique tokens the user has (None: not given)")
    epochs: float | None = Field(None, ge=0, description="tokens / available_tokens: passes over the data")


class ScheduleOption(_Frozen):
    kind: str
    decay_fraction: float
    final_lr_ratio: float
    decay_shape: Literal["linear", "cosine", "1-sqrt"] | None = None  # wsd only
    loss_vs_best: float = Field(ge=0, description="predicted final loss minus the best candidate's (Multi-Power Law)")


class SchedulePlan(_Frozen):
    """The full run's LR schedule in steps (same conventions as ``autotune.train.schedules.lr_at``)."""

    kind: Literal["wsd", "cosine", "linear", "constant"]
    total_steps: int = Field(ge=1, description="optimizer steps of batch_tokens tokens each")
    warmup_steps: int = Field(ge=0, description="linear warmup to peak_lr")
    stable_steps: int = Field(ge=0, description="steps at peak_lr after warmup")
    decay_steps: int = Field(ge=0, description="steps decaying from peak_lr to final_lr")
    peak_lr: float = Field(gt=0, description="the proxies' peak LR; rescale it for a larger model (e.g. muP)")
    final_lr: float = Field(ge=0, description="LR of the last step (final_lr_ratio * peak_lr)")
    warmup_fraction: float = Field(ge=0, lt=1)
    decay_fraction: float = Field(ge=0, le=1, description="decay_steps / total_steps")
    final_lr_ratio: float = Field(ge=0, le=1)
    decay_shape: Literal["linear", "cosine", "1-sqrt"] | None = Field(
        None, description="shape of a wsd decay (autotune.train.schedules); None for the other kinds")
    chosen_by: Literal["multi_power_law", "best_trial"]
    predicted_final_loss: float | None = Field(
        None, description="the law's final training loss (proxy model and data) at total_steps; None when the "
                          "law extrapolates out of range (only the candidates' ranking is used then)")
    candidates: list[ScheduleOption] = Field(default_factory=list, description="best candidates, best first")
    law: dict[str, float] | None = Field(None, description="fitted Multi-Power Law parameters (shared ones)")

    @model_validator(mode="after")
    def _check(self) -> SchedulePlan:
        if self.warmup_steps + self.stable_steps + self.decay_steps != self.total_steps:
            raise ValueError(f"warmup {self.warmup_steps} + stable {self.stable_steps} + decay {self.decay_steps} "
                             f"!= total_steps {self.total_steps}")
        return self


class Prediction(_Frozen):
    """A predicted score relative to the base model (higher is better) with a bootstrap interval."""

    value: float
    low: float | None = Field(None, description="lower end of the interval (None: not computed)")
    high: float | None = None
    level: float = Field(0.9, description="interval coverage")
    bootstrap_samples: int = 0
    model: str = Field(description="the mixture -> metric model that predicted it")


class Provenance(_Frozen):
    study: str
    study_dir: str
    space_digest: str
    created: str = Field(description="UTC time the recipe was built")
    autotune_version: str
    trials_used: list[int] = Field(description="complete trials the models were fitted on")
    trials_failed: list[int]
    best_trial: dict[str, Any] = Field(description="the best feasible trial as measured at proxy scale")
    models: dict[str, dict[str, Any]] = Field(description="per metric: chosen model, CV-best ensemble, CV scores")
    optimizer: dict[str, Any] = Field(description="mixture search: evaluated points, feasibility, nearest trial")


class Recipe(_Frozen):
    """``recipe.yaml``: the full-scale mixture and schedule an autotune study recommends."""

    recipe_version: int = RECIPE_VERSION
    study: str
    tokens: int = Field(ge=1, description="training tokens of the full run (whole steps of batch_tokens)")
    requested_tokens: float = Field(gt=0, description="the budget asked for, before rounding to whole steps")
    batch_tokens: int = Field(ge=1)
    domains: dict[str, DomainPlan]
    schedule: SchedulePlan
    predicted: dict[str, Prediction] = Field(description="'target' and 'general' at the recipe's mixture")
    predicted_metrics: dict[str, float] = Field(default_factory=dict, description="every suite metric, raw units")
    warnings: list[str] = Field(default_factory=list)
    provenance: Provenance
    ladder: LadderSection | None = Field(None, description="scale transfer: the study's mixtures re-run at several "
                                         "proxy token budgets (autotune ladder); None: no ladder was run")

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        total_share = sum(d.share for d in self.domains.values())
        if not math.isclose(total_share, 1.0, abs_tol=1e-6):
            raise ValueError(f"domain shares sum to {total_share:.8g}, not 1")
        total_tokens = sum(d.tokens for d in self.domains.values())
        if total_tokens != self.tokens:
            raise ValueError(f"domain tokens sum to {total_tokens}, not tokens={self.tokens}")
        if self.schedule.total_steps * self.batch_tokens != self.tokens:
            raise ValueError(f"schedule.total_steps {self.schedule.total_steps} x batch_tokens {self.batch_tokens} "
                             f"!= tokens {self.tokens}")
        for name, d in self.domains.items():
            if (d.available_tokens is None) != (d.epochs is None):
                raise ValueError(f"domains.{name}: epochs needs available_tokens and vice versa")
            if d.available_tokens and not math.isclose(d.epochs, d.tokens / d.available_tokens, rel_tol=1e-6):
                raise ValueError(f"domains.{name}: epochs {d.epochs} != tokens / available_tokens")
        return self


# ----------------------------------------------------------------------------------------------- load / write
def load_recipe(path: str | Path) -> Recipe:
    """Read ``recipe.yaml`` back into a validated ``Recipe``; problems are a UserError naming the field."""
    path = Path(path)
    data = read_yaml(path, "recipe")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise UserError(first["msg"].removeprefix("Value error, "), file=path, field=field) from None


def write_recipe(recipe: Recipe | dict, path: str | Path, command: str | None = None) -> Path:
    """Write the recipe as YAML (validated first), with a header naming the study and the command."""
    rec = recipe if isinstance(recipe, Recipe) else Recipe.model_validate(recipe)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = [f"# {command or 'autotune extrapolate ' + rec.provenance.study_dir}",
            f"# full-scale recipe of study {rec.study!r} (recipe_version {rec.recipe_version}); fields documented in",
            "# autotune/extrapolate/recipe.py. Load it with autotune.extrapolate.load_recipe(path)."]
    body = yaml.safe_dump(rec.model_dump(mode="json"), sort_keys=False, width=110)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("\n".join(head) + "\n" + body)
    tmp.replace(path)
    return path
