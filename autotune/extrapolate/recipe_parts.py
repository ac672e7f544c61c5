"""The parts ``recipe.build_recipe`` assembles a recipe from: each step returns one small frozen part."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autotune.extrapolate.mixture import Problem
from autotune.extrapolate.optimize import Optimum
from autotune.extrapolate.recipe_model import DomainPlan, Prediction, SchedulePlan
from autotune.extrapolate.selection import Selection
from autotune.extrapolate.study_data import FinishedStudy
from autotune.records import TrialRecord
from autotune.search.simplex import SimplexMap


@dataclass(frozen=True)
class Inputs:
    """The study and the full run's checked budget: ``run_tokens`` is ``total_steps`` whole batches."""

    study: FinishedStudy
    batch_tokens: int
    available: dict[str, float]     # unique tokens per domain, for the domains given
    total_steps: int
    run_tokens: int


@dataclass(frozen=True)
class SearchRegion:
    """The simplex the optimiser searches, with the epoch cap its bounds carry (None: uncapped)."""

    smap: SimplexMap
    epoch_cap: float | None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Models:
    """Per metric, the mixture -> metric model chosen by cross-validation, and the data it was fitted on."""

    R: np.ndarray                   # trials x domains: the trials' shares
    X: np.ndarray                   # R, then the log peak LR when it varies over the trials
    use_lr: bool
    values: dict[str, np.ndarray]   # per metric, the trials' scores
    shared_metrics: list[str]       # suite metrics every trial has (empty unless all_metrics)
    problems: dict[str, Problem]
    selections: dict[str, Selection]  # the metrics that vary over the trials


@dataclass(frozen=True)
class Mixture:
    """The peak LR, the trials that set it, and the mixture that maximises the predicted objective at it."""

    peak_lr: float
    top: list[TrialRecord]
    best_trial: TrialRecord
    maximise: str
    floor: float | None             # the predicted general score held (None: unconstrained)
    opt: Optimum
    w_star: np.ndarray              # 1 x domains: the optimum's shares
    nearest_trial: int
    nearest_distance: float         # L1 distance to the nearest trial's mixture
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Predictions:
    scores: dict[str, Prediction]   # 'target' and 'general', with bootstrap intervals
    metrics: dict[str, float]       # every modelled suite metric, raw units


@dataclass(frozen=True)
class Schedule:
    plan: SchedulePlan
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Domains:
    plans: dict[str, DomainPlan]
    warnings: tuple[str, ...] = ()
