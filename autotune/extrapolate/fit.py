"""``autotune fit RATIOS.csv METRICS.csv``: the extrapolation's surrogates and optimum on any swarm in OLMix's format.

The tables are the ones ``autotune export`` writes and OLMix's ``load_from_csv`` reads: both have a ``run_id``
column (OLMix also accepts ``run``) and may have ``name``; every other ratios column is a domain share (a row
sums to 1 within ``SUM_TOLERANCE``; shares are used as given, not renormalised), every other metrics column a
metric. Rows are joined on ``run_id``; a row with a NaN anywhere is dropped, and counted.

What is fitted is what ``autotune extrapolate`` fits (``recipe.build_recipe`` steps 2-3, on the shares only):
per metric that varies, the K-fold-CV-chosen model (``selection.select_model``, same folds and seed), the
objective maximised over the mixtures allowed (``optimize.maximize``, the runs' mixtures as starts), with the
general metric held at its floor, and bootstrap intervals (``optimize.bootstrap_interval``) at the optimum,
checked on the CV residuals and widened as ``build_recipe`` widens them. The domains keep the space's order
(a study folder's: the space as run), else the table's: tree models and the simplex map depend on it.
With a space (``--space``): the space's bounds, role floors, epoch caps from ``extrapolate.available_tokens``
and its objective. Without: each domain between the smallest and largest share the swarm ran (a model is
not trusted far outside its data), the objective from the ``target`` / ``general`` columns or the options.

Every prediction is of the swarm's own kind of run: at the swarm's scale, never at a larger one.

numpy, pandas and yaml here; scipy and scikit-learn inside the fitting functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import UserError
from autotune.extrapolate.mixture import Problem, make
from autotune.extrapolate.optimize import Optimum, bootstrap_interval, maximize
from autotune.extrapolate.selection import Selection, select_model
from autotune.search.simplex import SimplexMap

FIT_VERSION = 1
ID_COLUMNS = ("run_id", "run")   # OLMix's loader takes the first one found
NAME_COLUMN = "name"
SUM_TOLERANCE = 0.01             # RegMix's rows, written to 3 decimals, sum to 0.996-1.003
MIN_RUNS = 3                     # select_model's minimum
SCALE = "at the swarm's scale"
SCALE_NOTE = ("predictions are of a run like the swarm's own (its model size and token budget), at the optimum "
              "mixture; they are not predictions of a larger run")


# ----------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Swarm:
    """The runs both tables have, with no NaN: shares (runs x domains) and each metric's values."""

    run_ids: list[str]
    domains: tuple[str, ...]
    shares: np.ndarray
    metrics: dict[str, np.ndarray]
    dropped_nan: int          # joined rows dropped for a NaN
    unmatched: int            # rows of either table without a partner in the other
    empty_columns: tuple[str, ...] = ()   # metric columns with no value at all: left out


def _read_table(path: Path, what: str):
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} table not found", file=path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"not a readable CSV table ({type(e).__name__}: {str(e).strip().splitlines()[0]})",
                        file=path) from None
    ids = [c for c in ID_COLUMNS if c in df.columns]
    if not ids:
        raise UserError(f"the {what} table needs a 'run_id' column (OLMix's format: run_id, name, ...)", file=path,
                        field="run_id", value=list(df.columns))
    id_col = ids[0]
    df = df.rename(columns={id_col: "run_id"})
    df["run_id"] = df["run_id"].str.strip()
    if (df["run_id"] == "").any():
        row = int(np.flatnonzero(df["run_id"] == "")[0]) + 2
        raise UserError("a row has an empty run_id", file=path, field=f"run_id, line {row}", value="")
    dup = df["run_id"][df["run_id"].duplicated()]
    if len(dup):
        raise UserError("run_id must be unique: two rows name the same run", file=path, field="run_id",
                        value=str(dup.iloc[0]))
    data_cols = [c for c in df.columns if c not in ("run_id", NAME_COLUMN)]
    if not data_cols:
        raise UserError(f"the {what} table has no column besides run_id and name", file=path)
    return df, data_cols


_NAN_TEXT = {"", "nan", "NaN", "NAN", "na", "NA", "N/A", "null", "None"}


def _numbers(df, cols: list[str], path: Path) -> np.ndarray:
    """The columns as floats; an empty or NaN cell is NaN, any other non-number names its cell."""
    out = np.empty((len(df), len(cols)))
    for j, c in enumerate(cols):
        for i, cell in enumerate(df[c].tolist()):
            text = cell.strip()
            if text in _NAN_TEXT:
                out[i, j] = np.nan
                continue
            try:
                v = float(text)
            except ValueError:
                raise UserError("not a number", file=path, field=f"column {c!r}, run_id {df['run_id'].iloc[i]!r}",
                                value=cell) from None
            if math.isinf(v):
                raise UserError("not a finite number", file=path, field=f"column {c!r}, run_id {df['run_id'].iloc[i]!r}",
                                value=cell)
            out[i, j] = v
    return out


def read_swarm(ratios_path: str | Path, metrics_path: str | Path) -> Swarm:
    """Both tables joined on ``run_id`` (rows of ratios order); bad input is a ``UserError`` naming the cell."""
    ratios_path, metrics_path = Path(ratios_path), Path(metrics_path)
    ratios, domains = _read_table(ratios_path, "ratios")
    metrics, names = _read_table(metrics_path, "metrics")
    R = _numbers(ratios, domains, ratios_path)
    M = _numbers(metrics, names, metrics_path)
    ok = ~np.isnan(R).any(axis=1)
    for i in np.flatnonzero(ok):
        rid = ratios["run_id"].iloc[i]
        if (R[i] < 0).any():
            j = int(np.flatnonzero(R[i] < 0)[0])
            raise UserError("a share must not be negative", file=ratios_path, field=f"column {domains[j]!r}, run_id {rid!r}",
                            value=float(R[i, j]))
        total = float(R[i].sum())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise UserError(f"the shares of a run must sum to 1 (within {SUM_TOLERANCE:g}) over the domain columns "
                            f"{list(domains)}", file=ratios_path, field=f"run_id {rid!r}", value=round(total, 6))
    at = {r: i for i, r in enumerate(metrics["run_id"].tolist())}
    pairs = [(i, at[r]) for i, r in enumerate(ratios["run_id"].tolist()) if r in at]
    if not pairs:
        raise UserError(f"no run_id of the ratios table is in the metrics table ({metrics_path})", file=ratios_path,
                        field="run_id", value=ratios["run_id"].iloc[0] if len(ratios) else None)
    unmatched = (len(ratios) - len(pairs)) + (len(metrics) - len(pairs))
    ri = np.array([p[0] for p in pairs])
    mi = np.array([p[1] for p in pairs])
    R, M = R[ri], M[mi]
    all_names = list(names)
    empty = np.isnan(M).all(axis=0)  # a column no run has (e.g. a metric the suite gained later): not a reason to drop rows
    names = [n for n, e in zip(names, empty, strict=True) if not e]
    M = M[:, ~empty]
    keep = ~(np.isnan(R).any(axis=1) | np.isnan(M).any(axis=1))
    run_ids = [ratios["run_id"].iloc[i] for i, k in zip(ri, keep, strict=True) if k]
    return Swarm(run_ids=run_ids, domains=tuple(domains), shares=R[keep],
                 metrics={n: M[keep, j] for j, n in enumerate(names)}, dropped_nan=int((~keep).sum()),
                 unmatched=int(unmatched), empty_columns=tuple(c for c, e in zip(all_names, empty, strict=True) if e))


# ----------------------------------------------------------------------------------------------- the objective
@dataclass(frozen=True)
class Objective:
    """What is maximised and held: metric names of the swarm (a mean of several columns is its own metric)."""

    target: str
    target_higher: bool
    general: str | None = None
    general_higher: bool = True
    floor: float | None = None          # the general metric held at >= floor (higher) or <= floor (lower)
    source: str = "columns"             # "space", "options" or "columns"
    columns: dict[str, list[str]] = field(default_factory=dict)   # a mean metric -> the columns it averages

    @property
    def constrained(self) -> bool:
        return self.general is not None and self.floor is not None


def _space_from(path: Path):
    """A space file, or a study folder's recorded space (``space.json``)."""
    from autotune.config.space import load_space

    path = Path(path)
    if path.is_dir():
        from autotune.config.space import SearchSpace
        from autotune.extrapolate.study_data import _read_json

        record = _read_json(path / "space.json", "space.json")
        if not isinstance(record, dict) or not isinstance(record.get("identity"), dict):
            raise UserError("space.json has no 'identity' mapping", file=path / "space.json", field="identity")
        space = SearchSpace.model_validate(record["identity"])
        return space if space.extrapolate is not None else _with_source_extrapolate(space, path, record)
    if not path.is_file():
        raise UserError("search-space file not found", file=path, field="--space")
    return load_space(path)


def _with_source_extrapolate(space, root: Path, record: dict):
    """The space as run, with the ``extrapolate:`` section (available tokens: epoch caps) of the space file the
    study was started from, which the run identity leaves out (as ``autotune extrapolate runs/<study>`` reads it)."""
    from pydantic import ValidationError

    from autotune.config.load import read_yaml, validation_error_to_user_error
    from autotune.config.space import Extrapolate, recorded_source_file

    source = recorded_source_file(root, record.get("source_file"))
    data = read_yaml(source, "search space") if source else {}
    if not isinstance(data, dict) or data.get("extrapolate") is None:
        return space
    try:
        section = Extrapolate.model_validate(data["extrapolate"])
    except ValidationError as e:
        raise validation_error_to_user_error(e, Path(source), data["extrapolate"]) from None
    return space.model_copy(update={"extrapolate": section})


def _mean_metric(swarm: Swarm, cols: Sequence[str], field_name: str, metrics_path: Path) -> str:
    for c in cols:
        if c not in swarm.metrics:
            raise UserError(f"not a column of the metrics table (columns: {sorted(swarm.metrics)})", file=metrics_path,
                            field=field_name, value=c)
    if len(cols) == 1:
        return cols[0]
    name = "mean(" + ",".join(cols) + ")"
    swarm.metrics[name] = np.mean([swarm.metrics[c] for c in cols], axis=0)
    return name


def _direction(metric: str, given: str | None) -> bool:
    from autotune.evaluate.metrics import key_higher_is_better

    if given is not None:
        return given == "max"
    return key_higher_is_better(metric)


def objective_of(swarm: Swarm, space, *, targets: Sequence[str] = (), generals: Sequence[str] = (),
                 general_floor: float | None = None, direction: str | None = None,
                 metrics_path: Path = Path("metrics.csv")) -> Objective:
    """The objective: options first, then the space's (which metric is maximised, the general floor), then
    the ``target`` / ``general`` columns (autotune's group scores, base-relative, higher is better)."""
    cols: dict[str, list[str]] = {}
    if targets:
        target = _mean_metric(swarm, list(targets), "--target", metrics_path)
        source = "options"
    else:
        maximise = (space.objective.maximize or "target") if space is not None else "target"
        if maximise not in swarm.metrics:
            raise UserError(f"no {maximise!r} column to maximise: name the objective's columns with --target COL "
                            f"(columns: {sorted(swarm.metrics)})", file=metrics_path, field="--target", value=None)
        target, source = maximise, ("space" if space is not None else "columns")
    if len(targets) > 1:
        cols[target] = list(targets)
    target_higher = _direction(target if not targets else targets[0], direction)
    general = None
    if generals:
        general = _mean_metric(swarm, list(generals), "--general", metrics_path)
        if len(generals) > 1:
            cols[general] = list(generals)
    elif "general" in swarm.metrics and target != "general":
        general = "general"
    floor = general_floor
    if floor is None and space is not None and general is not None and target == "target":
        floor = space.objective.general_floor
        if space.objective.pareto:
            floor = 0.0  # as build_recipe: maximise target without losing general ability against the base
    general_higher = _direction(general if not generals else generals[0], None) if general else True
    return Objective(target=target, target_higher=target_higher, general=general, general_higher=general_higher,
                     floor=None if general is None else floor, source=source, columns=cols)


# ----------------------------------------------------------------------------------------------- the region
@dataclass(frozen=True)
class Region:
    smap: SimplexMap
    source: str                 # "space" or "swarm"
    epoch_cap: float | None = None
    warnings: tuple[str, ...] = ()


def region_of(swarm: Swarm, space, *, ratios_path: Path, force: bool = False) -> Region:
    """The mixtures the optimiser may choose: the space's (with epoch caps from its ``extrapolate:`` section,
    as ``autotune extrapolate`` computes them), else each domain within the swarm's own range of shares."""
    if space is not None:
        names = list(space.domains)
        if set(names) != set(swarm.domains):
            extra = sorted(set(swarm.domains) - set(names))
            missing = sorted(set(names) - set(swarm.domains))
            raise UserError(f"the domain columns must be the space's domains {names}"
                            + (f"; not a domain of the space: {extra}" if extra else "")
                            + (f"; missing: {missing}" if missing else ""), file=ratios_path, field="columns",
                            value=(extra or missing)[0])
        section = space.extrapolate
        if section is None:
            return Region(SimplexMap.from_space(space), "space")
        from autotune.extrapolate.recipe import _search_region

        batch = int(section.batch_tokens or space.proxy.batch_tokens)
        run_tokens = int(section.tokens // batch) * batch
        sr = _search_region(space, run_tokens, {k: float(v) for k, v in section.available_tokens.items()},
                            section.max_epochs, force)
        return Region(sr.smap, "space", sr.epoch_cap, tuple(sr.warnings))
    lo = tuple(float(v) for v in swarm.shares.min(axis=0))
    hi = tuple(float(v) for v in swarm.shares.max(axis=0))
    k = len(swarm.domains)
    smap = SimplexMap(domains=swarm.domains, lo=lo, hi=hi, role=("target",) * k, floors={})
    return Region(smap, "swarm")


def _reorder(swarm: Swarm, domains: Sequence[str]) -> Swarm:
    idx = [swarm.domains.index(d) for d in domains]
    return Swarm(swarm.run_ids, tuple(domains), swarm.shares[:, idx], swarm.metrics, swarm.dropped_nan, swarm.unmatched,
                 swarm.empty_columns)


def own_domains(metric: str, domains: Sequence[str], space=None) -> tuple[int, ...]:
    """The metric's own domains: with a space, ``build_recipe``'s (roles for target/general, ``bpb/<domain>``);
    always a metric named like a domain (RegMix's per-domain losses) or ``bpb/<domain>``."""
    names = list(domains)
    if space is not None:
        from autotune.extrapolate.recipe import _own_domains

        own = _own_domains(metric, space)
        if own:
            return own
    for key in (metric, metric.removeprefix("bpb/")):
        if key in names:
            return (names.index(key),)
    return ()


# ----------------------------------------------------------------------------------------------- the fit
@dataclass
class FitResult:
    swarm: Swarm
    objective: Objective
    region: Region
    selections: dict[str, Selection]
    problems: dict[str, Problem]
    optimum: Optimum
    predictions: dict[str, dict[str, Any]]
    nearest: tuple[str, float]
    skipped: list[str]
    warnings: list[str]

    def to_json(self) -> dict:
        def r(x):
            return round(float(x), 9) if x is not None and math.isfinite(x) else None

        models = {}
        for m, sel in self.selections.items():
            d = sel.to_json()
            d["cv_spearman"] = d["cv"][sel.name]["spearman"]
            d["cv_r2"] = r(cv_r2(sel, self.swarm.metrics[m]))
            d["own_domains"] = [self.swarm.domains[i] for i in self.problems[m].own]
            models[m] = d
        smap = self.region.smap
        return {
            "fit_version": FIT_VERSION,
            "scale": SCALE, "scale_note": SCALE_NOTE,
            "runs": len(self.swarm.run_ids), "dropped_nan_rows": self.swarm.dropped_nan,
            "unmatched_rows": self.swarm.unmatched, "empty_columns": list(self.swarm.empty_columns),
            "domains": list(self.swarm.domains),
            "objective": {"maximize" if self.objective.target_higher else "minimize": self.objective.target,
                          "general": self.objective.general, "general_floor": self.objective.floor,
                          "general_higher_is_better": self.objective.general_higher,
                          "constrained": self.objective.constrained, "from": self.objective.source,
                          **({"mean_of": self.objective.columns} if self.objective.columns else {})},
            "bounds": {"from": self.region.source, "epoch_cap": self.region.epoch_cap,
                       "domains": {d: {"min": r(lo), "max": r(hi)} for d, lo, hi in zip(smap.domains, smap.lo, smap.hi, strict=True)}},
            "optimum": {"mixture": {d: r(w) for d, w in self.optimum.weights.items()},
                        "feasible": self.optimum.feasible, "evaluated": self.optimum.evaluated,
                        "nearest_run": self.nearest[0], "l1_distance_to_nearest_run": r(self.nearest[1])},
            "predictions": self.predictions,
            "models": models,
            "skipped_constant": self.skipped,
            "warnings": self.warnings,
        }


def cv_r2(sel: Selection, y: np.ndarray) -> float:
    """R² of the chosen model's pooled out-of-fold predictions (NaN where they are missing)."""
    pred = sel.oof.get(sel.name)
    y = np.asarray(y, float)
    ss = float(((y - y.mean()) ** 2).sum())
    if pred is None or not np.all(np.isfinite(pred)) or ss == 0:
        return float("nan")
    return 1.0 - float(((pred - y) ** 2).sum()) / ss


def fit_swarm(swarm: Swarm, objective: Objective, region: Region, *, space=None, folds: int = 5, seed: int = 0,
              bootstrap: int = 100, level: float = 0.9, metrics_path: Path = Path("metrics.csv")) -> FitResult:
    """Per metric the CV-chosen model, the constrained optimum, and the predictions there with intervals."""
    swarm = _reorder(swarm, region.smap.domains)
    n = len(swarm.run_ids)
    if n < MIN_RUNS:
        raise UserError(f"the cross-validation needs at least {MIN_RUNS} runs with a share and a value for every "
                        f"column (after dropping {swarm.dropped_nan} rows with a NaN, {n} remain)", file=metrics_path,
                        field="rows", value=n)
    X = swarm.shares
    selections, problems, skipped = {}, {}, []
    for metric, y in swarm.metrics.items():
        if np.ptp(y) == 0:
            skipped.append(metric)
            continue
        problems[metric] = Problem(swarm.domains, own_domains(metric, swarm.domains, space))
        selections[metric] = select_model(X, y, problems[metric], folds=folds, seed=seed)
    for metric in (objective.target, objective.general):
        if metric is not None and metric not in selections:
            raise UserError("every run has the same value: nothing to fit", file=metrics_path, field=metric,
                            value=float(swarm.metrics[metric][0]))

    def oriented(metric, higher):
        model = selections[metric].model
        return (lambda W: model.predict(W)) if higher else (lambda W: -model.predict(W))

    floor = None
    if objective.constrained:
        floor = objective.floor if objective.general_higher else -objective.floor
    opt = maximize(region.smap, oriented(objective.target, objective.target_higher),
                   constraint=oriented(objective.general, objective.general_higher) if objective.constrained else None,
                   floor=floor, starts=[dict(zip(swarm.domains, map(float, row), strict=True)) for row in X], seed=seed)
    warnings = list(region.warnings)
    if objective.constrained and not opt.feasible:
        shown = opt.constraint if objective.general_higher else -opt.constraint
        warnings.append(f"no mixture is predicted to keep {objective.general} {'>=' if objective.general_higher else '<='} "
                        f"{objective.floor:g}; the optimum takes the least violation (predicted {shown:.4g})")
    w_star = np.array([[opt.weights[d] for d in swarm.domains]])
    dist = np.abs(X - w_star).sum(axis=1)
    near = int(np.argmin(dist))
    predictions = {}
    for metric, sel in selections.items():
        y = swarm.metrics[metric]
        value = float(sel.model.predict(w_star)[0])
        entry: dict[str, Any] = {"value": value, "model": sel.name, "scale": SCALE}
        if bootstrap > 0 and metric in (objective.target, objective.general):  # as build_recipe: the objective's
            def refit(idx, name=sel.name, problem=problems[metric], y=y):
                return make(name, problem).fit(X[idx], y[idx]).predict(w_star)[0]

            iv = bootstrap_interval(refit, n, value=value, samples=bootstrap, level=level, seed=seed)
            low = iv.low if math.isfinite(iv.low) else None
            high = iv.high if math.isfinite(iv.high) else None
            entry.update(low=low, high=high, level=iv.level, bootstrap_samples=iv.samples)
            if low is not None and high is not None:
                # build_recipe's check on the CV residuals, and its split-conformal widening when they cover too few
                from autotune.extrapolate.recipe import _calibrate

                cal = _calibrate(value, low, high, iv.level, y, sel.oof.get(sel.name))
                if cal is not None:
                    if cal.calibrated:
                        entry.update(low=min(low, value - cal.conformal_half_width),
                                     high=max(high, value + cal.conformal_half_width))
                    entry["calibration"] = cal.model_dump(mode="json")
        predictions[metric] = entry
    return FitResult(swarm, objective, region, selections, problems, opt, predictions,
                     (swarm.run_ids[near], float(dist[near])), skipped, warnings)


def fit_files(ratios: str | Path, metrics: str | Path, *, space_path: str | Path | None = None,
              targets: Sequence[str] = (), generals: Sequence[str] = (), general_floor: float | None = None,
              direction: str | None = None, folds: int = 5, seed: int = 0, bootstrap: int = 100,
              force: bool = False) -> FitResult:
    """``autotune fit``'s work: read, check, fit; raises ``UserError`` for bad input."""
    ratios, metrics = Path(ratios), Path(metrics)
    swarm = read_swarm(ratios, metrics)
    space = _space_from(Path(space_path)) if space_path is not None else None
    if direction not in (None, "max", "min"):
        raise UserError("must be max or min", field="--direction", value=direction)
    objective = objective_of(swarm, space, targets=targets, generals=generals, general_floor=general_floor,
                             direction=direction, metrics_path=metrics)
    region = region_of(swarm, space, ratios_path=ratios, force=force)
    return fit_swarm(swarm, objective, region, space=space, folds=folds, seed=seed, bootstrap=bootstrap,
                     metrics_path=metrics)


def write_fit(result: FitResult, path: str | Path, command: str | None = None) -> Path:
    """The result as JSON (a ``.json`` path) or YAML (any other)."""
    from autotune.paths import write_text_atomic

    path = Path(path)
    data = result.to_json()
    if path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        import yaml

        head = f"# {command}\n" if command else ""
        text = head + f"# {SCALE}: {SCALE_NOTE}\n" + yaml.safe_dump(data, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return path
