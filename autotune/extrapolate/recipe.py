"""A finished study -> the full-scale mid-training recipe (``runs/<study>/recipe.yaml``), and its loader.

``build_recipe`` does, in order:

1. reads the study (``study_data.load_study``): the space as run, the base metrics, the complete trials;
2. per metric (``target``, ``general``, then every suite metric) chooses a mixture -> metric model by
   K-fold cross-validation on the trials (``selection.select_model``); the trials' log peak LR joins the
   shares as a covariate when it varies;
3. picks the peak LR (geometric mean over the best feasible trials), then maximises the predicted
   objective over the space's simplex (bounds, role floors, and caps that keep each domain under
   ``max_epochs`` of its available tokens where the space allows it) subject to the predicted general
   score staying at the objective's floor (``optimize.maximize``); bootstraps the trials for intervals,
   checks them on the CV residuals (k of n held-out values inside) and widens them by split-conformal
   calibration when they cover less than their level. These are predictions of proxy-scale scores
   (``predicted.at_proxy_scale``, at ``proxy.tokens``): the models know no other scale;
4. fits the Multi-Power Law to the trials' loss curves (``schedule.fit_multi_power_law``, one ``L0`` per
   trial since mixtures differ) and chooses the schedule kind, decay fraction and final LR ratio the law
   predicts best at the full run's step count (falls back to the best trial's schedule when it cannot);
5. turns shares into tokens and epochs per domain for the full budget: warns above ``max_epochs``
   epochs and refuses above ``HARD_MAX_EPOCHS`` unless forced;
6. when the study has a ladder (``autotune ladder``: the prior and best trials re-run at several proxy
   token budgets), fits a power law in tokens per mixture, checks that the rungs rank the mixtures alike
   (``ladder.analyze``) and puts its warnings first; the law carries the proxy-scale predictions to the full
   run's tokens (``predicted.at_full_scale``, with the law's provenance). Without a ladder there is no
   full-scale prediction, and ``predicted.full_scale_note`` says so.

Each step is one function returning a small frozen part (``recipe_parts``); ``build_recipe`` assembles
them into the ``Recipe`` (``recipe_model``, with ``load_recipe`` and ``write_recipe``; all re-exported
here), which checks the numbers agree when built or loaded.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np

from autotune import __version__
from autotune.config.space import FloatRange
from autotune.errors import UserError
from autotune.extrapolate.ladder import LadderSection, analyze, carry, decision_metrics, higher_is_better
from autotune.extrapolate.mixture import Problem, make
from autotune.extrapolate.optimize import bootstrap_interval, maximize
from autotune.extrapolate.recipe_model import (
    RECIPE_VERSION,
    Calibration,
    DomainPlan,
    FullScale,
    Predicted,
    Prediction,
    Provenance,
    ProxyScale,
    Recipe,
    ScaleLaw,
    ScheduleOption,
    SchedulePlan,
    load_recipe,
    prediction_lines,
    scale_label,
    tokens_text,
    write_recipe,
)
from autotune.extrapolate.recipe_parts import (
    Domains,
    Inputs,
    Mixture,
    Models,
    Predictions,
    Schedule,
    SearchRegion,
)
from autotune.extrapolate.schedule import LossCurve, MultiPowerLaw, choose_schedule, fit_multi_power_law
from autotune.extrapolate.selection import select_model
from autotune.extrapolate.study_data import FinishedStudy, LadderData, load_ladder, load_study, read_train_log
from autotune.extrapolate.verify import section_for
from autotune.search.simplex import SimplexMap

__all__ = ["HARD_MAX_EPOCHS", "RECIPE_VERSION", "TOP_TRIALS", "WARN_EPOCHS", "DomainPlan", "Prediction", "Provenance",
           "Recipe", "ScheduleOption", "SchedulePlan", "build_recipe", "extrapolate_study", "load_recipe",
           "prediction_lines", "scale_label", "write_recipe"]

# Epochs of repeated data: Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models") find up
# to ~4 epochs worth almost as much as fresh data, and returns that vanish around 16 (their fitted
# R*_D ~ 15.4 repetitions). Above WARN we warn; above HARD_MAX_EPOCHS we refuse unless forced.
WARN_EPOCHS = 4.0
HARD_MAX_EPOCHS = 16.0
# How many of the best feasible trials set the peak LR (geometric mean) and a searched warmup fraction.
TOP_TRIALS = 3


# ----------------------------------------------------------------------------------------------- helpers
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


def _design(models: Models, peak_lr: float, W: np.ndarray) -> np.ndarray:
    """The models' inputs for mixtures ``W``: the shares, then the log peak LR when it is a covariate."""
    return np.column_stack([W, np.full(len(W), math.log(peak_lr))]) if models.use_lr else W


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _grid(value, n: int) -> list[float]:
    if isinstance(value, FloatRange):
        if value.log:
            return [float(v) for v in np.geomspace(value.low, value.high, n)]
        return [float(v) for v in np.linspace(value.low, value.high, n)]
    return [float(value)]


# ----------------------------------------------------------------------------------------------- the steps
def _read_inputs(study_dir: str | Path, tokens: float, available_tokens: dict[str, float] | None,
                 max_epochs: float, batch_tokens: int | None) -> Inputs:
    """1. The study, and the full run's tokens rounded down to whole steps of ``batch_tokens``."""
    study = load_study(study_dir)
    batch_tokens = int(batch_tokens or study.space.proxy.batch_tokens)
    if batch_tokens < 1:
        raise UserError("batch_tokens must be a positive integer", field="batch_tokens", value=batch_tokens)
    _check_inputs(study, tokens, available_tokens, max_epochs, batch_tokens)
    available = {k: float(v) for k, v in (available_tokens or {}).items()}
    total_steps = int(tokens // batch_tokens)
    return Inputs(study, batch_tokens, available, total_steps, total_steps * batch_tokens)


def _search_region(space, run_tokens: int, available: dict[str, float], max_epochs: float,
                   force: bool) -> SearchRegion:
    """Epoch caps: keep domains under max_epochs where the space allows, else under HARD_MAX_EPOCHS;
    when not even that fits, refuse before fitting anything (unless forced)."""
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
    warnings = []
    if available and cap_used != max_epochs:
        warnings.append(f"the space's bounds and floors do not allow keeping every domain under {max_epochs:g} "
                        f"epochs of its available tokens" + (f"; capped at {cap_used:g} instead" if cap_used else ""))
    return SearchRegion(smap, cap_used, tuple(warnings))


def _fit_models(study: FinishedStudy, *, folds: int, seed: int, all_metrics: bool) -> Models:
    """2. Per metric that varies over the trials, the mixture -> metric model chosen by K-fold CV."""
    domains, trials, space = list(study.domains), study.trials, study.space
    R = np.array([[t.mixture[d] for d in domains] for t in trials])
    peak_lrs = np.array([float(t.schedule.get("peak_lr") or "nan") for t in trials])
    use_lr = bool(np.all(np.isfinite(peak_lrs)) and np.all(peak_lrs > 0) and np.ptp(np.log(peak_lrs)) > 1e-9)
    X = np.column_stack([R, np.log(peak_lrs)]) if use_lr else R
    n_extra = 1 if use_lr else 0
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
    return Models(R, X, use_lr, values, shared_metrics, problems, selections)


def _optimise_mixture(study: FinishedStudy, smap: SimplexMap, models: Models, *, seed: int) -> Mixture:
    """3. The peak LR (geometric mean over the best feasible trials), then the mixture maximising the
    predicted objective at it, with the predicted general score held at the objective's floor."""
    trials, space = study.trials, study.space
    objective = space.objective
    maximise = objective.maximize or "target"
    floor = objective.general_floor
    if objective.pareto:
        floor = 0.0  # a Pareto study: maximise target without losing general ability against the base
    constrained = maximise == "target" and floor is not None
    feasible = [t for t in trials if t.feasible] or trials
    ranked = sorted(feasible, key=lambda t: getattr(t, maximise), reverse=True)
    top = ranked[:TOP_TRIALS]
    top_lrs = [float(t.schedule["peak_lr"]) for t in top if float(t.schedule.get("peak_lr", 0) or 0) > 0]
    fallback_lr = space.schedule.peak_lr if isinstance(space.schedule.peak_lr, float) else 1e-3
    peak_lr = float(math.exp(np.mean(np.log(top_lrs)))) if top_lrs else float(fallback_lr)

    def predictor(metric):
        model = models.selections[metric].model
        return lambda W: model.predict(_design(models, peak_lr, W))

    opt = maximize(smap, predictor(maximise), constraint=predictor("general") if constrained else None,
                   floor=floor if constrained else None, starts=[t.mixture for t in trials], seed=seed)
    warnings = []
    if constrained and not opt.feasible:
        warnings.append(f"no mixture is predicted to keep general >= {floor:g} (base-relative); the recipe takes "
                        f"the least violation (predicted general {opt.constraint:.4g})")
    w_star = np.array([[opt.weights[d] for d in study.domains]])
    dist = np.abs(models.R - w_star).sum(axis=1)
    nearest = int(np.argmin(dist))
    return Mixture(peak_lr, top, ranked[0], maximise, floor if constrained else None, opt, w_star,
                    trials[nearest].number, float(dist[nearest]), tuple(warnings))


def _calibrate(value: float, low: float, high: float, level: float, y: np.ndarray,
               oof: np.ndarray | None) -> Calibration | None:
    """Coverage of the interval on the study's own held-out values, and split-conformal widening when short.

    Each trial's out-of-fold prediction (the chosen model refitted without its fold) gets the interval's
    offsets around it; a trial is covered when its measured score falls inside. Below ``level``, the
    interval widens to ``value -+ q``, q the ceil((n + 1) level)-th smallest absolute CV residual (split
    conformal, with the K-fold residuals as the calibration set; Vovk et al. 2005, Lei et al. 2018); it is
    never narrowed. None without out-of-fold predictions."""
    if oof is None:
        return None
    ok = np.isfinite(oof) & np.isfinite(y)
    n = int(ok.sum())
    if n == 0:
        return None
    res = y[ok] - oof[ok]
    inside = int(np.sum((res >= low - value) & (res <= high - value)))
    rank = math.ceil((n + 1) * level)
    q = float(np.sort(np.abs(res))[rank - 1]) if rank <= n else None
    calibrated = inside / n < level and q is not None
    d_lo, d_hi = (min(low - value, -q), max(high - value, q)) if calibrated else (low - value, high - value)
    return Calibration(held_out=n, inside=inside, coverage=inside / n, raw_low=low, raw_high=high,
                       conformal_half_width=q, calibrated=calibrated,
                       calibrated_inside=int(np.sum((res >= d_lo) & (res <= d_hi))))


def predict_scores(models: Models, at: np.ndarray, *, bootstrap: int, seed: int) -> dict[str, Prediction]:
    """The models' 'target' and 'general' predictions at one design row ``at`` ([1, features]: shares, then the
    log peak LR when it is a covariate), proxy-scale scores: bootstrap intervals, their coverage on the CV
    residuals, widened by split-conformal calibration when short. The recipe's own predictions and
    ``autotune verify``'s predictions of each verified mixture both come from here."""
    scores = {}
    for metric in ("target", "general"):
        sel = models.selections[metric]
        value = float(sel.model.predict(at)[0])
        y = models.values[metric]

        def refit(idx, name=sel.name, problem=models.problems[metric], y=y):
            return make(name, problem).fit(models.X[idx], y[idx]).predict(at)[0]

        iv = bootstrap_interval(refit, len(models.X), value=value, samples=bootstrap, seed=seed) if bootstrap > 0 else None
        low, high = (_finite(iv.low), _finite(iv.high)) if iv is not None else (None, None)
        if low is None or high is None:
            scores[metric] = Prediction(value=value, low=low, high=high, bootstrap_samples=iv.samples if iv else 0,
                                        model=sel.name, **({"level": iv.level} if iv else {}))
            continue
        cal = _calibrate(value, low, high, iv.level, y, sel.oof.get(sel.name))
        if cal is not None and cal.calibrated:
            low, high = min(low, value - cal.conformal_half_width), max(high, value + cal.conformal_half_width)
        scores[metric] = Prediction(value=value, low=low, high=high, level=iv.level, bootstrap_samples=iv.samples,
                                    model=sel.name, calibration=cal)
    return scores


def _predict(models: Models, mixture: Mixture, *, bootstrap: int, seed: int) -> Predictions:
    """3'. The models' predictions at the recommended mixture (``predict_scores``), and every suite metric's."""
    at_star = _design(models, mixture.peak_lr, mixture.w_star)
    scores = predict_scores(models, at_star, bootstrap=bootstrap, seed=seed)
    metrics = {m: float(models.selections[m].model.predict(at_star)[0]) for m in models.shared_metrics
               if m in models.selections}
    return Predictions(scores, metrics)


def predict_mixtures(study_dir: str | Path, points: list[tuple[dict[str, float], float]], *,
                     bootstrap: int = 100, folds: int = 5, seed: int = 0) -> list[dict[str, Prediction]]:
    """The recipe's models (fitted as ``build_recipe`` fits them: same folds and seed) predicting 'target' and
    'general' at each ``(mixture, peak_lr)`` of ``points`` (the peak LR is used where it is a covariate).
    Proxy-scale scores, with intervals made as the recipe's."""
    study = load_study(study_dir)
    models = _fit_models(study, folds=folds, seed=seed, all_metrics=False)
    out = []
    for mixture, peak_lr in points:
        w = np.array([[float(mixture[d]) for d in study.domains]])
        out.append(predict_scores(models, _design(models, float(peak_lr), w), bootstrap=bootstrap, seed=seed))
    return out


def _rank_schedules(study: FinishedStudy, curves: list[LossCurve], kinds: list[str], group: str, peak_lr: float,
                    warmup_fraction: float, total_steps: int) -> tuple[MultiPowerLaw | None, list, list[str]]:
    """The Multi-Power Law fitted to the trials' loss curves and the candidate schedules it ranks best
    first; (None, [], warnings) when it cannot be fitted."""
    spec = study.space.schedule
    decays = [c for c in curves if np.any(np.diff(c.lrs[c.warmup_steps:]) < 0)]
    if not (len(curves) >= 2 and decays):
        return None, [], ["fewer than two training logs with a decaying LR: the schedule is the best trial's"]
    try:
        law = fit_multi_power_law(curves, offset_per_group=True)
        options = choose_schedule(law, total_steps=total_steps, peak_lr=peak_lr, warmup_fraction=warmup_fraction,
                                  kinds=kinds, decay_fractions=_grid(spec.decay_fraction, 11),
                                  final_lr_ratios=_grid(spec.final_lr_ratio, 5), group=group,
                                  decay_shapes=("linear", "cosine", "1-sqrt"))
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as e:  # numeric trouble too: never the whole recipe
        return None, [], [f"the Multi-Power Law fit failed ({type(e).__name__}: {e}); the schedule is the best "
                          "trial's"]
    return law, options, []


def _choose_schedule(study: FinishedStudy, mixture: Mixture, total_steps: int) -> Schedule:
    """4. The schedule the Multi-Power Law predicts best at the full run's steps, else the best trial's."""
    spec = study.space.schedule
    kinds = spec.kind if isinstance(spec.kind, list) else [spec.kind]
    best_trial, peak_lr = mixture.best_trial, mixture.peak_lr
    if isinstance(spec.warmup_fraction, FloatRange):
        warmup_fraction = float(np.mean([t.schedule.get("warmup_fraction", spec.warmup_fraction.low)
                                         for t in mixture.top]))
    else:
        warmup_fraction = float(spec.warmup_fraction)
    curves = []
    for t in study.trials:
        log = read_train_log(study.run_path(t) / "train_log.jsonl") if t.run_dir else None
        if log is not None:
            curves.append(LossCurve(log.lrs, log.steps, log.loss, group=str(t.number)))
    law, options, warnings = _rank_schedules(study, curves, kinds, str(best_trial.number), peak_lr, warmup_fraction,
                                             total_steps)
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
    plan = SchedulePlan.model_validate({
        "kind": kind, "total_steps": total_steps, "warmup_steps": warm, "stable_steps": stable, "decay_steps": decay,
        "peak_lr": peak_lr, "final_lr": peak_lr * (1.0 if kind == "constant" else ratio),
        "warmup_fraction": warmup_fraction, "decay_fraction": decay / total_steps,
        "final_lr_ratio": 1.0 if kind == "constant" else ratio, "decay_shape": shape if kind == "wsd" else None,
        "chosen_by": chosen_by, "predicted_final_loss": predicted,
        "candidates": [{"kind": o.kind, "decay_fraction": o.decay_fraction, "final_lr_ratio": o.final_lr_ratio,
                        "decay_shape": o.decay_shape, "loss_vs_best": o.predicted_loss - options[0].predicted_loss}
                       for o in options[:8]],
        "law": ({k: v for k, v in law.params().items()} if law else None),
    })
    return Schedule(plan, tuple(warnings))


def _plan_domains(study: FinishedStudy, weights: dict[str, float], inputs: Inputs, *, max_epochs: float,
                  force: bool) -> Domains:
    """5. The mixture's shares as tokens and epochs per domain of the full run; refuses more than
    HARD_MAX_EPOCHS epochs unless forced."""
    domains, available = list(study.domains), inputs.available
    shares = [weights[d] for d in domains]
    shares = [max(0.0, s) for s in shares]
    shares = [s / sum(shares) for s in shares]
    dom_tokens = _largest_remainder(shares, inputs.run_tokens)
    plans, warnings, too_many = {}, [], []
    for d, s, n in zip(domains, shares, dom_tokens, strict=True):
        avail = available.get(d)
        epochs = n / avail if avail else None
        if epochs is not None and epochs > max_epochs:
            warnings.append(f"{d}: {epochs:.3g} epochs of its {avail:.3g} available tokens (above {max_epochs:g})")
        if epochs is not None and epochs > HARD_MAX_EPOCHS:
            too_many.append(f"{d} ({epochs:.3g} epochs)")
        plans[d] = DomainPlan(role=study.space.domains[d].role, share=s, tokens=n, available_tokens=avail,
                              epochs=epochs)
    if too_many and not force:
        raise UserError(f"the recipe repeats {', '.join(too_many)} beyond {HARD_MAX_EPOCHS:g} epochs, where repeated "
                        "data stops helping; give more available tokens, a smaller budget, or force it",
                        field="available_tokens", value={d: available.get(d) for d in domains})
    if too_many:
        warnings.append(f"forced: {', '.join(too_many)} above {HARD_MAX_EPOCHS:g} epochs")
    return Domains(plans, tuple(warnings))


def _ladder_section(study: FinishedStudy, data: LadderData | None, run_tokens: int) -> LadderSection | None:
    """6. The ladder's record when the study has one (``runs/<study>/ladder/ladder.json``), else None."""
    if data is None:
        return None
    return LadderSection.model_validate(
        analyze(data.tokens, data.mixtures, data.values, {m: higher_is_better(m) for m in data.values},
                decision=decision_metrics(study.space.objective), target_tokens=run_tokens,
                min_kendall=data.min_kendall, noise_std=data.noise_std, search_rung=data.search_rung))


NO_LADDER = ("the mixture -> metric models are fitted on proxy runs of one size and know no other scale; no fitted law "
             "carries their scores to the full run's {tokens} tokens (autotune ladder re-runs mixtures at several "
             "token budgets and fits a power law in tokens that does)")


def _carried(p: Prediction, gains: np.ndarray, rmse: float | None) -> Prediction:
    """The proxy-scale prediction plus the ladder mixtures' mean gain; the interval from the proxy interval
    plus the smallest and the largest gain, each widened by the law's fit error."""
    g = gains[np.isfinite(gains)]
    err = rmse if rmse is not None and math.isfinite(rmse) else 0.0
    low = p.low + float(g.min()) - err if p.low is not None else None
    high = p.high + float(g.max()) + err if p.high is not None else None
    return Prediction(value=p.value + float(g.mean()), low=low, high=high, level=p.level,
                      bootstrap_samples=p.bootstrap_samples, model=f"{p.model} + ladder power law in tokens")


def _full_scale(study: FinishedStudy, data: LadderData | None, scores: dict[str, Prediction],
                run_tokens: int) -> tuple[FullScale | None, str]:
    """6'. The proxy-scale scores carried to the full run's tokens by the ladder's power law in tokens, with the
    law's provenance; (None, why) when no law carries them there."""
    proxy_tokens = int(study.space.proxy.tokens)
    if data is None:
        return None, NO_LADDER.format(tokens=tokens_text(run_tokens))
    out, laws, skipped = {}, {}, []
    for key in ("target", "general"):
        Y = data.values.get(key)
        if Y is None or len(data.tokens) < 2:
            skipped.append(f"{key}: the ladder has {'no ' + key + ' values' if Y is None else 'one rung'}")
            continue
        law, gains = carry(data.tokens, Y, proxy_tokens, run_tokens)
        ok = np.isfinite(gains)
        if not ok.any():
            skipped.append(f"{key}: no ladder mixture has two measured rungs")
            continue
        labels = [str(m["label"]) for m in data.mixtures]
        rmse = _finite(law.rmse)
        out[key] = _carried(scores[key], gains, rmse)
        laws[key] = ScaleLaw(
            method=law.method, alpha=law.alpha, alpha_at_bound=law.alpha_at_bound, rmse=rmse, rungs=data.tokens,
            mixtures=[lab for lab, k in zip(labels, ok, strict=True) if k], from_tokens=proxy_tokens,
            to_tokens=run_tokens, gain={lab: float(g) for lab, g, k in zip(labels, gains, ok, strict=True) if k},
            how=("value: the proxy-scale prediction plus the mean gain of the ladder mixtures' laws from from_tokens "
                 "to to_tokens (the recipe's mixture is not one of them); interval: the proxy-scale interval plus "
                 "the smallest and the largest gain, each widened by the law's fit rmse"))
    if not out:
        return None, "the ladder's power law in tokens could not be fitted (" + "; ".join(skipped) + ")"
    factor = run_tokens / max(data.tokens)
    note = (f"carried from the proxy's {tokens_text(proxy_tokens)} tokens by the ladder's power law in tokens, fitted "
            f"on {len(data.tokens)} rungs up to {tokens_text(max(data.tokens))} tokens and extrapolated {factor:,.0f}x beyond the "
            "largest; a power law this far past its points is a rough guide: read the interval, not the value")
    if skipped:
        note += "; not carried: " + "; ".join(skipped)
    return FullScale(tokens=run_tokens, target=out.get("target"), general=out.get("general"), laws=laws), note


def _provenance(study: FinishedStudy, models: Models, mixture: Mixture, region: SearchRegion) -> Provenance:
    """Where the recipe comes from: the study, the trials used, the models and the mixture search."""
    best, opt = mixture.best_trial, mixture.opt
    return Provenance(
        study=study.name, study_dir=str(study.root), space_digest=study.digest,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        autotune_version=__version__, trials_used=[t.number for t in study.trials],
        trials_failed=study.failed,
        best_trial={"trial": best.number, "target": best.target, "general": best.general,
                    "mixture": best.mixture, "schedule": best.schedule},
        models={m: s.to_json() for m, s in models.selections.items()},
        optimizer={"maximize": mixture.maximise, "general_floor": mixture.floor,
                   "evaluated": opt.evaluated, "feasible": opt.feasible, "peak_lr_covariate": models.use_lr,
                   "epoch_cap": region.epoch_cap, "nearest_trial": mixture.nearest_trial,
                   "l1_distance_to_nearest_trial": mixture.nearest_distance},
    )


# ----------------------------------------------------------------------------------------------- building
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
    inputs = _read_inputs(study_dir, tokens, available_tokens, max_epochs, batch_tokens)
    study = inputs.study
    region = _search_region(study.space, inputs.run_tokens, inputs.available, max_epochs, force)
    models = _fit_models(study, folds=folds, seed=seed, all_metrics=all_metrics)
    mixture = _optimise_mixture(study, region.smap, models, seed=seed)
    predictions = _predict(models, mixture, bootstrap=bootstrap, seed=seed)
    schedule = _choose_schedule(study, mixture, inputs.total_steps)
    domains = _plan_domains(study, mixture.opt.weights, inputs, max_epochs=max_epochs, force=force)
    ladder_data = load_ladder(study.root)
    ladder = _ladder_section(study, ladder_data, inputs.run_tokens)
    full, full_note = _full_scale(study, ladder_data, predictions.scores, inputs.run_tokens)
    predicted = Predicted(at_proxy_scale=ProxyScale(tokens=int(study.space.proxy.tokens), **predictions.scores,
                                                    metrics=predictions.metrics),
                          at_full_scale=full, full_scale_note=full_note)
    try:  # a damaged verification never costs the recipe: it becomes a warning
        verification, verify_warnings = section_for(
            study.root, study.space, {d: p.share for d, p in domains.plans.items()},
            {"kind": schedule.plan.kind, "peak_lr": schedule.plan.peak_lr},
            lambda points: [predict_scores(models, _design(models, lr, np.array([[w[d] for d in study.domains]])),
                                           bootstrap=bootstrap, seed=seed) for w, lr in points])
    except UserError as e:
        verification, verify_warnings = None, [f"the verification was left out: {e}"]
    # the ladder's warnings first: they question everything below
    warnings = [*(ladder.warnings if ladder else ()), *region.warnings, *mixture.warnings, *schedule.warnings,
                *domains.warnings, *verify_warnings]
    recipe = Recipe(recipe_version=RECIPE_VERSION, study=study.name, tokens=inputs.run_tokens,
                    requested_tokens=float(tokens), batch_tokens=inputs.batch_tokens, domains=domains.plans,
                    schedule=schedule.plan, predicted=predicted,
                    warnings=warnings, provenance=_provenance(study, models, mixture, region), ladder=ladder,
                    verification=verification)
    return recipe.model_dump(mode="json")


def extrapolate_study(study_dir: Path, tokens: float, available_tokens: dict[str, float] | None = None,
                      max_epochs: float = WARN_EPOCHS, force: bool = False, *, batch_tokens: int | None = None,
                      bootstrap: int = 100, command: str | None = None) -> Path:
    """Build the recipe of ``runs/<study>`` and write it to ``runs/<study>/recipe.yaml``; returns the path.

    The entry point of ``autotune extrapolate runs/<study>``; raises ``UserError`` for bad input."""
    study_dir = Path(study_dir)
    recipe = build_recipe(study_dir, tokens=tokens, available_tokens=available_tokens, max_epochs=max_epochs,
                          force=force, batch_tokens=batch_tokens, bootstrap=bootstrap)
    return write_recipe(recipe, study_dir / "recipe.yaml", command=command)
