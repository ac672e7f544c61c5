"""A finished study -> the full-scale mid-training recipe (``runs/<study>/recipe.yaml``), and its loader.

``build_recipe`` does, in order:

1. reads the study (``study_data.load_study``): the space as run, the base metrics, the complete trials;
2. per metric (``target``, ``general``, then every suite metric) chooses a mixture -> metric model by
   K-fold cross-validation on the trials (``mixture.select_model``); the trials' log peak LR joins the
   shares as a covariate when it varies;
3. picks the peak LR (geometric mean over the best feasible trials), then maximises the predicted
   objective over the space's simplex (bounds, role floors, and caps that keep each domain under
   ``max_epochs`` of its available tokens where the space allows it) subject to the predicted general
   score staying at the objective's floor (``optimize.maximize``); bootstraps the trials for intervals;
4. fits the Multi-Power Law to the trials' loss curves (``schedule.fit_multi_power_law``, one ``L0`` per
   trial since mixtures differ) and chooses the schedule kind, decay fraction and final LR ratio the law
   predicts best at the full run's step count (falls back to the best trial's schedule when it cannot);
5. turns shares into tokens and epochs per domain for the full budget: warns above ``max_epochs``
   epochs and refuses above ``HARD_MAX_EPOCHS`` unless forced;
6. when the study has a ladder (``autotune ladder``: the prior and best trials re-run at several proxy
   token budgets), fits a power law in tokens per mixture, checks that the rungs rank the mixtures alike
   (``ladder.analyze``) and puts its warnings first.

``Recipe`` (frozen pydantic) documents every field and checks the numbers agree when built or loaded:
domain tokens sum to ``tokens``, ``tokens = schedule.total_steps * batch_tokens``, epochs = tokens /
available tokens, warmup + stable + decay steps = total steps.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autotune.errors import UserError
from autotune.extrapolate.ladder import LadderSection

# Epochs of repeated data: Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models") find up
# to ~4 epochs worth almost as much as fresh data, and returns that vanish around 16 (their fitted
# R*_D ~ 15.4 repetitions). Above WARN we warn; above HARD_MAX_EPOCHS we refuse unless forced.
WARN_EPOCHS = 4.0
HARD_MAX_EPOCHS = 16.0
RECIPE_VERSION = 1
# How many of the best feasible trials set the peak LR (geometric mean) and a searched warmup fraction.
TOP_TRIALS = 3


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
    from autotune.config.space import read_yaml

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


# ----------------------------------------------------------------------------------------------- building
def _own_domains(metric: str, space) -> tuple[int, ...]:
    names = list(space.domains)
    if metric in ("target", "general"):
        return tuple(i for i, n in enumerate(names) if space.domains[n].role == metric)
    if metric.startswith("bpb/") and metric[4:] in names:
        return (names.index(metric[4:]),)
    return ()


def _largest_remainder(shares: list[float], total: int) -> list[int]:
    raw = [s * total for s in shares]
    out = [int(math.floor(v)) for v in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)[: total - sum(out)]:
        out[i] += 1
    return out


def _schedule_steps(kind: str, total: int, warmup_fraction: float, decay_fraction: float) -> tuple[int, int, int]:
    """(warmup, stable, decay) steps, rounded as ``autotune.train.schedules.lr_at`` rounds them."""
    warmup = min(int(round(warmup_fraction * total)), total - 1)
    if kind == "constant":
        return warmup, total - warmup, 0
    if kind in ("cosine", "linear"):
        return warmup, 0, total - warmup
    decay = max(1, int(round(decay_fraction * total))) if decay_fraction > 0 else 0
    if decay == 0:
        return warmup, total - warmup, 0
    start = max(warmup, total - decay)
    return warmup, start - warmup, total - start


def _check_inputs(study, tokens: float, available_tokens: dict[str, float] | None, max_epochs: float,
                  batch_tokens: int) -> None:
    if not (isinstance(tokens, (int, float)) and math.isfinite(tokens) and tokens > 0):
        raise UserError("the full run's token budget must be a positive number", field="tokens", value=tokens)
    if tokens < batch_tokens:
        raise UserError(f"the token budget is below one batch of {batch_tokens} tokens", field="tokens", value=tokens)
    if not (isinstance(max_epochs, (int, float)) and max_epochs > 0):
        raise UserError("max_epochs must be positive", field="max_epochs", value=max_epochs)
    for name, v in (available_tokens or {}).items():
        if name not in study.space.domains:
            raise UserError(f"not a domain of study {study.name!r} (domains: {list(study.space.domains)})",
                            field="available_tokens", value=name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise UserError("available tokens must be a positive number", field=f"available_tokens.{name}", value=v)


def _capped_map(space, tokens: int, available: dict[str, float], cap_epochs: float | None):
    """The space's SimplexMap with each domain's max share lowered to ``cap_epochs`` of its available
    tokens; None when the caps leave no feasible mixture."""
    from autotune.search.simplex import SimplexMap

    smap = SimplexMap.from_space(space)
    if cap_epochs is None or not available:
        return smap
    hi = tuple(min(h, cap_epochs * available[d] / tokens) if d in available else h
               for d, h in zip(smap.domains, smap.hi, strict=True))
    if any(h < lo - 1e-12 for h, lo in zip(hi, smap.lo, strict=True)) or sum(hi) < 1 - 1e-9:
        return None
    capped = SimplexMap(domains=smap.domains, lo=smap.lo, hi=hi, role=smap.role, floors=smap.floors)
    try:
        capped.to_weights([0.5] * capped.dims)
        capped.to_weights([0.0] * capped.dims)
        capped.to_weights([1.0] * capped.dims)
    except ValueError:
        return None
    return capped


def build_recipe(study_dir: str | Path, *, tokens: float, available_tokens: dict[str, float] | None = None,
                 max_epochs: float = WARN_EPOCHS, force: bool = False, batch_tokens: int | None = None,
                 bootstrap: int = 100, folds: int = 5, seed: int = 0, all_metrics: bool = True) -> dict:
    """The recipe of a finished study as a JSON-able dict (validated by ``Recipe``).

    ``tokens``: the full run's training tokens; ``available_tokens``: unique tokens per domain (any
    subset of domains); ``max_epochs``: warn above this many epochs of a domain (the optimiser keeps
    domains under it where the space allows); ``force``: allow more than ``HARD_MAX_EPOCHS`` epochs;
    ``batch_tokens``: tokens per optimizer step of the full run (default: the proxies'); ``bootstrap``:
    resamples for the intervals (0: none); ``all_metrics``: also model every suite metric (else only
    the target and general scores). Raises ``UserError`` for bad input."""
    from autotune import __version__
    from autotune.extrapolate.mixture import Problem, make, select_model
    from autotune.extrapolate.optimize import bootstrap_interval, maximize
    from autotune.extrapolate.study_data import load_study

    study = load_study(study_dir)
    space = study.space
    batch_tokens = int(batch_tokens or space.proxy.batch_tokens)
    if batch_tokens < 1:
        raise UserError("batch_tokens must be a positive integer", field="batch_tokens", value=batch_tokens)
    _check_inputs(study, tokens, available_tokens, max_epochs, batch_tokens)
    available = {k: float(v) for k, v in (available_tokens or {}).items()}
    total_steps = int(tokens // batch_tokens)
    run_tokens = total_steps * batch_tokens
    domains = list(study.domains)
    trials = study.trials
    warnings: list[str] = []

    # ---- epoch caps: keep domains under max_epochs where the space allows, else under HARD_MAX_EPOCHS;
    # when not even that fits, refuse before fitting anything (unless forced)
    smap, cap_used = None, None
    for cap in ((min(max_epochs, HARD_MAX_EPOCHS), HARD_MAX_EPOCHS, None) if available else (None,)):
        smap = _capped_map(space, run_tokens, available, cap)
        if smap is not None:
            cap_used = cap
            break
    if available and cap_used is None and not force:
        raise UserError(f"every mixture the space allows repeats some domain beyond {HARD_MAX_EPOCHS:g} epochs of its "
                        "available tokens, where repeated data stops helping; give more available tokens, a smaller "
                        "budget, or force it", field="available_tokens", value=available)
    if available and cap_used != max_epochs:
        warnings.append(f"the space's bounds and floors do not allow keeping every domain under {max_epochs:g} "
                        f"epochs of its available tokens" + (f"; capped at {cap_used:g} instead" if cap_used else ""))

    # ---- 2. data and models
    R = np.array([[t.mixture[d] for d in domains] for t in trials])
    peak_lrs = np.array([float(t.schedule.get("peak_lr") or "nan") for t in trials])
    use_lr = bool(np.all(np.isfinite(peak_lrs)) and np.all(peak_lrs > 0) and np.ptp(np.log(peak_lrs)) > 1e-9)
    X = np.column_stack([R, np.log(peak_lrs)]) if use_lr else R
    n_extra = 1 if use_lr else 0
    objective = space.objective
    maximise = objective.maximize or "target"
    floor = objective.general_floor
    if objective.pareto:
        floor = 0.0  # a Pareto study: maximise target without losing general ability against the base
    constrained = maximise == "target" and floor is not None
    values = {"target": np.array([t.target for t in trials]), "general": np.array([t.general for t in trials])}
    shared_metrics = sorted(set.intersection(*(set(t.metrics) for t in trials))) if all_metrics else []
    for m in shared_metrics:
        values[m] = np.array([t.metrics[m] for t in trials])
    selections, problems = {}, {}
    for metric, y in values.items():
        if np.ptp(y) == 0:
            continue  # constant over the trials: nothing to model
        problems[metric] = Problem(tuple(domains), _own_domains(metric, space), n_extra)
        selections[metric] = select_model(X, y, problems[metric], folds=folds, seed=seed)
    for key in ("target", "general"):
        if key not in selections:
            raise UserError(f"every trial has the same {key} score: nothing to extrapolate from",
                            file=study.root / "summary.json", field=f"trials[].{key}")

    # ---- 3. peak LR, then the mixture
    feasible = [t for t in trials if t.feasible] or trials
    ranked = sorted(feasible, key=lambda t: getattr(t, maximise), reverse=True)
    top = ranked[:TOP_TRIALS]
    best_trial = ranked[0]
    top_lrs = [float(t.schedule["peak_lr"]) for t in top if float(t.schedule.get("peak_lr", 0) or 0) > 0]
    peak_lr = float(math.exp(np.mean(np.log(top_lrs)))) if top_lrs else float(space.schedule.peak_lr
                                                                               if isinstance(space.schedule.peak_lr, float)
                                                                               else 1e-3)

    def design(W: np.ndarray) -> np.ndarray:
        return np.column_stack([W, np.full(len(W), math.log(peak_lr))]) if use_lr else W

    def predictor(metric):
        model = selections[metric].model
        return lambda W: model.predict(design(W))

    opt = maximize(smap, predictor(maximise), constraint=predictor("general") if constrained else None,
                   floor=floor if constrained else None, starts=[t.mixture for t in trials], seed=seed)
    if constrained and not opt.feasible:
        warnings.append(f"no mixture is predicted to keep general >= {floor:g} (base-relative); the recipe takes "
                        f"the least violation (predicted general {opt.constraint:.4g})")
    w_star = np.array([[opt.weights[d] for d in domains]])
    dist = np.abs(R - w_star).sum(axis=1)
    nearest = int(np.argmin(dist))

    # ---- intervals
    predicted = {}
    for metric in ("target", "general"):
        sel = selections[metric]
        value = float(sel.model.predict(design(w_star))[0])
        y = values[metric]

        def refit(idx, name=sel.name, problem=problems[metric], y=y):
            return make(name, problem).fit(X[idx], y[idx]).predict(design(w_star))[0]

        if bootstrap > 0:
            iv = bootstrap_interval(refit, len(trials), value=value, samples=bootstrap, seed=seed)
            predicted[metric] = {"value": value, "low": _finite(iv.low), "high": _finite(iv.high), "level": iv.level,
                                 "bootstrap_samples": iv.samples, "model": sel.name}
        else:
            predicted[metric] = {"value": value, "model": sel.name}
    predicted_metrics = {m: float(selections[m].model.predict(design(w_star))[0]) for m in shared_metrics
                         if m in selections}

    # ---- 4. schedule
    schedule = _choose_schedule(study, trials, top, best_trial, peak_lr, total_steps, warnings)

    # ---- 5. tokens and epochs
    shares = [opt.weights[d] for d in domains]
    shares = [max(0.0, s) for s in shares]
    shares = [s / sum(shares) for s in shares]
    dom_tokens = _largest_remainder(shares, run_tokens)
    plans = {}
    too_many = []
    for d, s, n in zip(domains, shares, dom_tokens, strict=True):
        avail = available.get(d)
        epochs = n / avail if avail else None
        if epochs is not None and epochs > max_epochs:
            warnings.append(f"{d}: {epochs:.3g} epochs of its {avail:.3g} available tokens (above {max_epochs:g})")
        if epochs is not None and epochs > HARD_MAX_EPOCHS:
            too_many.append(f"{d} ({epochs:.3g} epochs)")
        plans[d] = {"role": space.domains[d].role, "share": s, "tokens": n, "available_tokens": avail, "epochs": epochs}
    if too_many and not force:
        raise UserError(f"the recipe repeats {', '.join(too_many)} beyond {HARD_MAX_EPOCHS:g} epochs, where repeated "
                        "data stops helping; give more available tokens, a smaller budget, or force it",
                        field="available_tokens", value={d: available.get(d) for d in domains})
    if too_many:
        warnings.append(f"forced: {', '.join(too_many)} above {HARD_MAX_EPOCHS:g} epochs")

    # ---- 6. scale transfer
    ladder = _ladder_section(study, run_tokens)
    if ladder is not None:
        warnings[:0] = ladder["warnings"]  # first: they question everything below

    recipe = {
        "recipe_version": RECIPE_VERSION, "study": study.name, "tokens": run_tokens, "requested_tokens": float(tokens),
        "batch_tokens": batch_tokens, "domains": plans, "schedule": schedule, "predicted": predicted,
        "predicted_metrics": predicted_metrics, "warnings": warnings,
        "provenance": {
            "study": study.name, "study_dir": str(study.root), "space_digest": study.digest,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "autotune_version": __version__, "trials_used": [t.number for t in trials],
            "trials_failed": study.failed,
            "best_trial": {"trial": best_trial.number, "target": best_trial.target, "general": best_trial.general,
                           "mixture": best_trial.mixture, "schedule": best_trial.schedule},
            "models": {m: s.to_json() for m, s in selections.items()},
            "optimizer": {"maximize": maximise, "general_floor": floor if constrained else None,
                          "evaluated": opt.evaluated, "feasible": opt.feasible, "peak_lr_covariate": use_lr,
                          "epoch_cap": cap_used, "nearest_trial": trials[nearest].number,
                          "l1_distance_to_nearest_trial": float(dist[nearest])},
        },
        "ladder": ladder,
    }
    return Recipe.model_validate(recipe).model_dump(mode="json")


def _ladder_section(study, run_tokens: int) -> dict | None:
    """The ladder's record when the study has one (``runs/<study>/ladder/ladder.json``), else None."""
    from autotune.extrapolate.ladder import analyze, decision_metrics, higher_is_better
    from autotune.extrapolate.study_data import load_ladder

    data = load_ladder(study.root)
    if data is None:
        return None
    return analyze(data.tokens, data.mixtures, data.values, {m: higher_is_better(m) for m in data.values},
                   decision=decision_metrics(study.space.objective), target_tokens=run_tokens,
                   min_kendall=data.min_kendall, noise_std=data.noise_std, search_rung=data.search_rung)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _grid(value, n: int) -> list[float]:
    from autotune.config.space import FloatRange

    if isinstance(value, FloatRange):
        if value.log:
            return [float(v) for v in np.geomspace(value.low, value.high, n)]
        return [float(v) for v in np.linspace(value.low, value.high, n)]
    return [float(value)]


def _choose_schedule(study, trials, top, best_trial, peak_lr: float, total_steps: int,
                     warnings: list[str]) -> dict:
    from autotune.config.space import FloatRange
    from autotune.extrapolate.schedule import LossCurve, choose_schedule, fit_multi_power_law
    from autotune.extrapolate.study_data import read_train_log

    spec = study.space.schedule
    kinds = spec.kind if isinstance(spec.kind, list) else [spec.kind]
    if isinstance(spec.warmup_fraction, FloatRange):
        warmup_fraction = float(np.mean([t.schedule.get("warmup_fraction", spec.warmup_fraction.low) for t in top]))
    else:
        warmup_fraction = float(spec.warmup_fraction)
    curves = []
    for t in trials:
        log = read_train_log(t.run_dir / "train_log.jsonl") if t.run_dir else None
        if log is not None:
            curves.append(LossCurve(log.lrs, log.steps, log.loss, group=str(t.number)))
    law, options = None, []
    decays = [c for c in curves if np.any(np.diff(c.lrs[c.warmup_steps:]) < 0)]
    if len(curves) >= 2 and decays:
        try:
            law = fit_multi_power_law(curves, offset_per_group=True)
            options = choose_schedule(law, total_steps=total_steps, peak_lr=peak_lr, warmup_fraction=warmup_fraction,
                                      kinds=kinds, decay_fractions=_grid(spec.decay_fraction, 11),
                                      final_lr_ratios=_grid(spec.final_lr_ratio, 5), group=str(best_trial.number),
                                      decay_shapes=("linear", "cosine", "1-sqrt"))
        except ValueError as e:
            warnings.append(f"the Multi-Power Law fit failed ({e}); the schedule is the best trial's")
            law, options = None, []
    else:
        warnings.append("fewer than two training logs with a decaying LR: the schedule is the best trial's")
    if options:
        best = options[0]
        kind, decay_fraction, ratio, shape = best.kind, best.decay_fraction, best.final_lr_ratio, best.decay_shape
        chosen_by, predicted = "multi_power_law", best.predicted_loss
        lowest = min(c.loss.min() for c in curves)
        if not 0 < predicted <= lowest * 1.5:
            warnings.append(f"the Multi-Power Law fitted on {len(curves)} proxy curves predicts a final loss of "
                            f"{predicted:.3g} at {total_steps} steps, outside its range; only its ranking of the "
                            "candidate schedules is used")
            predicted = None
    else:
        s = best_trial.schedule
        kind = s.get("kind", kinds[0])
        decay_fraction = float(s.get("decay_fraction", 0.0) or 0.0)
        ratio = float(s.get("final_lr_ratio", 0.0) or 0.0)
        shape = str(s.get("decay_shape") or "linear")
        chosen_by, predicted = "best_trial", None
    warm, stable, decay = _schedule_steps(kind, total_steps, warmup_fraction, decay_fraction)
    return {
        "kind": kind, "total_steps": total_steps, "warmup_steps": warm, "stable_steps": stable, "decay_steps": decay,
        "peak_lr": peak_lr, "final_lr": peak_lr * (1.0 if kind == "constant" else ratio),
        "warmup_fraction": warmup_fraction, "decay_fraction": decay / total_steps,
        "final_lr_ratio": 1.0 if kind == "constant" else ratio, "decay_shape": shape if kind == "wsd" else None,
        "chosen_by": chosen_by,
        "predicted_final_loss": predicted,
        "candidates": [{"kind": o.kind, "decay_fraction": o.decay_fraction, "final_lr_ratio": o.final_lr_ratio,
                        "decay_shape": o.decay_shape, "loss_vs_best": o.predicted_loss - options[0].predicted_loss}
                       for o in options[:8]],
        "law": ({k: v for k, v in law.params().items()} if law else None),
    }


def extrapolate_study(study_dir: Path, tokens: float, available_tokens: dict[str, float] | None = None,
                      max_epochs: float = WARN_EPOCHS, force: bool = False, *, batch_tokens: int | None = None,
                      bootstrap: int = 100, command: str | None = None) -> Path:
    """Build the recipe of ``runs/<study>`` and write it to ``runs/<study>/recipe.yaml``; returns the path.

    The entry point of ``autotune extrapolate runs/<study>``; raises ``UserError`` for bad input."""
    study_dir = Path(study_dir)
    recipe = build_recipe(study_dir, tokens=tokens, available_tokens=available_tokens, max_epochs=max_epochs,
                          force=force, batch_tokens=batch_tokens, bootstrap=bootstrap)
    return write_recipe(recipe, study_dir / "recipe.yaml", command=command)
