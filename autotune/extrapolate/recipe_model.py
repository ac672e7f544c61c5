"""``runs/<study>/recipe.yaml``: ``Recipe`` (frozen pydantic, one documented field each), ``write_recipe``
and ``load_recipe``.

``Recipe`` checks the numbers agree when built or loaded: domain tokens sum to ``tokens``, ``tokens =
schedule.total_steps * batch_tokens``, epochs = tokens / available tokens, warmup + stable + decay steps =
total steps. ``autotune.extrapolate.recipe.build_recipe`` builds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from autotune.config.base import Frozen as _Frozen
from autotune.config.load import read_yaml
from autotune.errors import UserError
from autotune.extrapolate.ladder import LadderSection
from autotune.extrapolate.verify import Verification

# 2: ``predicted`` says its scale (``at_proxy_scale`` / ``at_full_scale``), ``predicted_metrics`` moved into
# ``predicted.at_proxy_scale.metrics``. Version 1 files still load (``_upgrade_v1``).
RECIPE_VERSION = 2
V1_NOTE = ("read from a recipe_version 1 file: its predictions are of proxy-scale scores (the proxy's tokens were "
           "not recorded) and it has no full-scale prediction; run autotune extrapolate again to rebuild it")


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


class Calibration(_Frozen):
    """How the interval did on the study's own held-out values: each trial's out-of-fold prediction (K-fold
    CV, ``selection.py``) with the raw interval's offsets around it, against the trial's measured score."""

    held_out: int = Field(ge=0, description="trials with an out-of-fold prediction")
    inside: int = Field(ge=0, description="held-out values inside the raw interval (placed around their prediction)")
    coverage: float | None = Field(description="inside / held_out; compare with level")
    raw_low: float
    raw_high: float
    conformal_half_width: float | None = Field(
        description="split-conformal quantile of the absolute CV residuals at level (None: too few residuals)")
    calibrated: bool = Field(description="coverage was below level: low/high widened to value -+ the conformal "
                                         "half-width (never narrowed)")
    calibrated_inside: int = Field(ge=0, description="held-out values inside the calibrated interval")


class Prediction(_Frozen):
    """A predicted score relative to the base model (higher is better) with a bootstrap interval."""

    value: float
    low: float | None = Field(None, description="lower end of the interval (None: not computed); the calibrated "
                                                "one when calibration.calibrated")
    high: float | None = None
    level: float = Field(0.9, description="interval coverage")
    bootstrap_samples: int = 0
    model: str = Field(description="the mixture -> metric model that predicted it")
    calibration: Calibration | None = Field(None, description="coverage of the interval on the CV residuals "
                                                              "(None: no interval, or a recipe_version 1 file)")


class ProxyScale(_Frozen):
    """Predictions of the proxy-scale scores: what a proxy run of ``tokens`` tokens on the recipe's mixture
    would score (the mixture -> metric models are fitted on proxy runs; they know no other scale)."""

    tokens: int | None = Field(description="tokens per proxy run (the space's proxy.tokens); None: not recorded "
                                           "(a recipe_version 1 file)")
    target: Prediction
    general: Prediction
    metrics: dict[str, float] = Field(default_factory=dict, description="every suite metric, raw units")


class ScaleLaw(_Frozen):
    """Provenance of a full-scale prediction: the ladder's power law in tokens that carried it there."""

    source: Literal["ladder"] = "ladder"
    law: str = Field("L_m(D) = E_m + A_m * (D / d0) ** -alpha", description="per ladder mixture m, in tokens D")
    method: Literal["shared_alpha", "fixed_alpha"]
    alpha: float
    alpha_at_bound: bool
    rmse: float | None = Field(description="the law's fit error on the rungs, in the score's units")
    rungs: list[int] = Field(description="tokens per run of the ladder rungs the law was fitted on")
    mixtures: list[str] = Field(description="the ladder mixtures whose laws carried the prediction")
    from_tokens: int = Field(description="the proxy-scale prediction's tokens")
    to_tokens: int = Field(description="the full run's tokens")
    gain: dict[str, float] = Field(description="per ladder mixture: its law at to_tokens minus at from_tokens")
    how: str = Field(description="how value and interval were formed")


class FullScale(_Frozen):
    """Predictions at the full run's tokens, carried from proxy scale by the ladder's power law in tokens."""

    tokens: int
    target: Prediction | None
    general: Prediction | None
    laws: dict[str, ScaleLaw] = Field(description="per score, the law that carried it")


class Predicted(_Frozen):
    """recipe.yaml's ``predicted``: every prediction with the scale it is at."""

    at_proxy_scale: ProxyScale
    at_full_scale: FullScale | None = Field(None, description="None: no fitted law carries the scores to the "
                                                              "full run (see full_scale_note)")
    full_scale_note: str = Field(description="why there is or is not a full-scale prediction, and its caveats")


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
    predicted: Predicted = Field(description="'target' and 'general' at the recipe's mixture, at proxy scale and "
                                             "(when a ladder's law carries them) at full scale")
    warnings: list[str] = Field(default_factory=list)
    provenance: Provenance
    ladder: LadderSection | None = Field(None, description="scale transfer: the study's mixtures re-run at several "
                                         "proxy token budgets (autotune ladder); None: no ladder was run")
    verification: Verification | None = Field(None, description="the recommendation and baselines trained at a "
                                              "larger budget with several seeds (autotune verify); None: not verified")

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("recipe_version", 1) == 1 and "predicted" in data:
            return _upgrade_v1(data)
        return data

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


def _upgrade_v1(data: dict) -> dict:
    """A recipe_version 1 mapping in the current layout: its ``predicted: {target, general}`` and
    ``predicted_metrics`` become ``predicted.at_proxy_scale`` (what they always were), tokens unknown unless
    its ladder names the search's rung; a warning says it was upgraded."""
    old = data.get("predicted")
    if not isinstance(old, dict) or "at_proxy_scale" in old:
        return data
    ladder = data.get("ladder") if isinstance(data.get("ladder"), dict) else {}
    tokens = ladder.get("search_rung")
    out = {k: v for k, v in data.items() if k != "predicted_metrics"}
    out["recipe_version"] = RECIPE_VERSION
    out["predicted"] = {
        "at_proxy_scale": {"tokens": tokens, "target": old.get("target"), "general": old.get("general"),
                           "metrics": data.get("predicted_metrics") or {}},
        "at_full_scale": None, "full_scale_note": V1_NOTE}
    out["warnings"] = [*(data.get("warnings") or []), V1_NOTE]
    return out


# ----------------------------------------------------------------------------------------------- labels
def tokens_text(n: float | None) -> str:
    """Tokens as the labels print them: ``3e5``, ``2e10``, ``1.5e5`` (``unknown`` for None)."""
    if n is None:
        return "unknown"
    text = f"{float(n):.2e}"
    mant, exp = text.split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def scale_label(scale: Literal["proxy", "full"], tokens: float | None) -> str:
    """The label every printed prediction carries: "at proxy scale (3e5 tokens)", "at full scale (2e10 tokens)"."""
    if tokens is None:
        return f"at {scale} scale (tokens not recorded)"
    return f"at {scale} scale ({tokens_text(tokens)} tokens)"


def interval_text(p: Prediction) -> str:
    """``[low, high] 90%`` (``conformal-widened`` when calibration widened it), or ``(no interval)``."""
    if p.low is None or p.high is None:
        return "(no interval)"
    text = f"[{p.low:.4g}, {p.high:.4g}] {p.level:.0%}"
    if p.calibration is not None and p.calibration.calibrated:
        text += " conformal-widened"
    return text


def coverage_text(p: Prediction) -> str:
    """"k of n held-out CV values inside the raw 90% interval" (and the widening), or "" without one."""
    c = p.calibration
    if c is None or c.coverage is None:
        return ""
    text = f"{c.inside} of {c.held_out} held-out CV values inside the raw {p.level:.0%} interval"
    if c.calibrated:
        text += (f"; widened by split-conformal calibration on the CV residuals to contain {c.calibrated_inside} "
                 f"of {c.held_out} (raw [{c.raw_low:.4g}, {c.raw_high:.4g}])")
    return text


@dataclass(frozen=True)
class PredictionRow:
    """One printed prediction: its scale's label, the score, the prediction and where it comes from."""

    label: str          # scale_label(...): "at proxy scale (3e5 tokens)"
    score: str          # "target" | "general"
    prediction: Prediction
    source: str         # the model, and for a full-scale value the law that carried it
    coverage: str       # coverage_text(prediction)


def prediction_rows(recipe: Recipe) -> list[PredictionRow]:
    """Every predicted score of the recipe, with its scale: the console and the report print these."""
    pred = recipe.predicted
    proxy = scale_label("proxy", pred.at_proxy_scale.tokens)
    rows = [PredictionRow(proxy, key, p, f"model {p.model}", coverage_text(p))
            for key in ("target", "general") for p in [getattr(pred.at_proxy_scale, key)]]
    full = pred.at_full_scale
    if full is not None:
        label = scale_label("full", full.tokens)
        for key in ("target", "general"):
            p, law = getattr(full, key), full.laws.get(key)
            if p is None or law is None:
                continue
            rows.append(PredictionRow(
                label, key, p, f"ladder power law in tokens ({law.method.replace('_', ' ')} {law.alpha:.3g}, rungs "
                f"{', '.join(tokens_text(t) for t in law.rungs)}, {len(law.mixtures)} mixtures, "
                f"{law.to_tokens / law.from_tokens:,.0f}x the proxy's tokens) on the proxy-scale prediction", ""))
    return rows


def full_scale_line(recipe: Recipe) -> str:
    """The line under the predictions: the full-scale caveats, or why there is no full-scale prediction."""
    pred = recipe.predicted
    if pred.at_full_scale is None:
        return f"no full-scale prediction: {pred.full_scale_note}"
    return f"full scale: {pred.full_scale_note}"


def prediction_lines(recipe: Recipe) -> list[str]:
    """One line per predicted score, each labelled with its scale, then ``full_scale_line``."""
    lines = []
    for r in prediction_rows(recipe):
        line = (f"predicted {r.score} {r.label}: {r.prediction.value:.4g} {interval_text(r.prediction)} "
                f"(base-relative; {r.source})")
        lines.append(line + (f"; {r.coverage}" if r.coverage else ""))
    return [*lines, full_scale_line(recipe)]


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
