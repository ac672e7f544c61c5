"""Pure: evaluation metrics -> group scores -> objective values and constraint values.

Group scores are relative to the base model (the base scores 0): each suite entry contributes its
improvement over base, oriented so that higher is better, and a group is the weighted mean of its entries.
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune.config.space import Objective
from autotune.config.suite import Entry, Suite


@dataclass(frozen=True)
class Score:
    target: float
    general: float
    values: tuple[float, ...]  # what Optuna maximises, in the study's direction order
    constraint: float | None  # <= 0 means feasible (Optuna's convention); None: unconstrained

    @property
    def feasible(self) -> bool:
        return self.constraint is None or self.constraint <= 0


def entry_score(entry: Entry, value: float, base: float) -> float:
    """An entry's improvement over the base model, oriented so that higher is better."""
    return (value - base) if entry.higher_is_better else (base - value)


def group_scores(suite: Suite, metrics: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """``{"target": s, "general": s}``: weighted means of the entries' improvements over base."""
    out: dict[str, float] = {}
    for group in ("target", "general"):
        entries: list[Entry] = getattr(suite, group)
        total = sum(e.weight for e in entries)
        out[group] = sum(e.weight * entry_score(e, metrics[e.key], base[e.key]) for e in entries) / total
    return out


def directions(objective: Objective) -> list[str]:
    return ["maximize"] * (len(objective.pareto) if objective.pareto else 1)


def metric_names(objective: Objective) -> list[str]:
    """The name of each objective value, in the order of ``Score.values`` (Optuna's ``set_metric_names``)."""
    return list(objective.pareto) if objective.pareto else [str(objective.maximize)]


def score(objective: Objective, suite: Suite, metrics: dict[str, float], base: dict[str, float]) -> Score:
    g = group_scores(suite, metrics, base)
    if objective.pareto:
        values = tuple(g[name] for name in objective.pareto)
    else:
        values = (g[objective.maximize],)
    floor = objective.general_floor
    constraint = None if floor is None else floor - g["general"]
    return Score(target=g["target"], general=g["general"], values=values, constraint=constraint)


def rung_value(objective: Objective, suite: Suite, metrics: dict[str, float], base: dict[str, float]) -> float:
    """A rung's intermediate value: the objective's group scored on its bits-per-byte entries only (the
    cheap evaluation run mid-training), relative to the base model like the final score."""
    group = objective.maximize or "target"
    entries = [e for e in getattr(suite, group) if e.key in metrics]
    if not entries:
        raise ValueError(f"the suite's {group} group has no bits-per-byte entry to score rungs with")
    total = sum(e.weight for e in entries)
    return sum(e.weight * entry_score(e, metrics[e.key], base[e.key]) for e in entries) / total
