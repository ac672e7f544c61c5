"""Read a finished study folder (``runs/<study>/``) into what extrapolation needs; bad input is a UserError.

Reads ``space.json`` (the space as run), ``summary.json`` (base metrics and one row per trial) and each
complete trial's ``train_log.jsonl`` (one JSON object per step: step, lr, loss, ...).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from autotune.config.identity import proposal_key
from autotune.config.load import PLAIN_ERRORS, validation_error_to_user_error
from autotune.config.space import SearchSpace
from autotune.errors import UserError
from autotune.records import FIX_SPACE_JSON, FIX_SUMMARY, TrialRecord, read_json, read_jsonl


@dataclass(frozen=True)
class FinishedStudy:
    root: Path
    space: SearchSpace
    digest: str
    base: dict[str, float]
    trials: list[TrialRecord]   # complete, with a share for every domain and finite scores
    failed: list[int]           # trial numbers that did not complete

    @property
    def name(self) -> str:
        return self.space.name

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.space.domains)

    def run_path(self, trial: TrialRecord) -> Path | None:
        """The trial's run folder (``trials/<hash>``), or None when the row names none."""
        return self.root / trial.run_dir if trial.run_dir else None


def _read_json(path: Path, what: str) -> Any:
    if not path.exists():
        raise UserError(f"{what} not found: is this a finished autotune study folder (runs/<study>)?", file=path)
    fix = {"space.json": FIX_SPACE_JSON, Path(LADDER_MANIFEST).name: "run `autotune ladder` again to rewrite it"}
    return read_json(path, fix=fix.get(path.name, FIX_SUMMARY))


def load_study(study_dir: str | Path) -> FinishedStudy:
    """The study's space, base metrics and complete trials."""

    root = Path(study_dir)
    if not root.is_dir():
        raise UserError("study folder not found (expected runs/<study>)", file=root)
    space_json = _read_json(root / "space.json", "space.json")
    if not isinstance(space_json, dict) or not isinstance(space_json.get("identity"), dict):
        raise UserError("space.json has no 'identity' mapping", file=root / "space.json", field="identity")
    try:
        space = SearchSpace.model_validate(space_json["identity"])
    except ValidationError as e:
        style = replace(PLAIN_ERRORS, prefix="identity.", template="the space recorded in this study does not validate: {msg}")
        raise validation_error_to_user_error(e, root / "space.json", space_json["identity"], style) from None
    summary = _read_json(root / "summary.json", "summary.json")
    if not isinstance(summary, dict) or not isinstance(summary.get("trials"), list):
        raise UserError("summary.json has no 'trials' list", file=root / "summary.json", field="trials")
    domains = list(space.domains)
    trials, failed = [], []
    for i, row in enumerate(summary["trials"]):
        where = f"trials[{i}]"
        if not isinstance(row, dict):
            raise UserError("a trial row is not a mapping", file=root / "summary.json", field=where)
        number = row.get("trial", i)
        if row.get("state") != "complete":
            failed.append(int(number))
            continue
        mixture = row.get("mixture") or {}
        if set(mixture) != set(domains):
            raise UserError(f"mixture must give a share for each domain {domains}", file=root / "summary.json",
                            field=f"{where}.mixture", value=mixture)
        for key in ("target", "general"):
            v = row.get(key)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(f"a complete trial needs a finite '{key}' score", file=root / "summary.json",
                                field=f"{where}.{key}", value=v)
        trials.append(TrialRecord(number=int(number), state="complete", mixture={d: float(mixture[d]) for d in domains},
                                  schedule=dict(row.get("schedule") or {}), target=float(row["target"]),
                                  general=float(row["general"]), feasible=bool(row.get("feasible", True)),
                                  metrics={k: float(v) for k, v in (row.get("metrics") or {}).items()
                                           if isinstance(v, (int, float)) and math.isfinite(v)},
                                  run_dir=str(row.get("run_dir") or "")))
    if len(trials) < 3:
        raise UserError(f"extrapolation needs at least 3 complete trials (this study has {len(trials)}); "
                        "run more trials first", file=root / "summary.json", field="trials")
    return FinishedStudy(root=root, space=space, digest=str(space_json.get("digest", "")),
                         base={k: float(v) for k, v in (summary.get("base") or {}).items()}, trials=trials,
                         failed=failed)


@dataclass(frozen=True)
class TrainLog:
    lrs: np.ndarray     # LR of every step's update, by step index
    steps: np.ndarray   # steps with a logged loss
    loss: np.ndarray


def read_train_log(path: Path) -> TrainLog | None:
    """A trial's per-step log, or None when it is missing or has fewer than 4 steps with an LR."""
    if not path.exists():
        return None
    rows = [r for r in read_jsonl(path, warn=True)  # a line cut by a kill is skipped: the rest is still usable
            if isinstance(r.get("step"), int) and isinstance(r.get("lr"), (int, float))]
    rows.sort(key=lambda r: r["step"])
    if len(rows) < 4 or rows[0]["step"] != 0 or rows[-1]["step"] != len(rows) - 1:
        return None  # missing steps: the LR sums the law needs would be wrong
    lrs = np.array([float(r["lr"]) for r in rows])
    obs = [(r["step"], float(r["loss"])) for r in rows
           if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"]) and r["loss"] > 0 and r["step"] >= 1]
    if len(obs) < 3:
        return None
    return TrainLog(lrs=lrs, steps=np.array([s for s, _ in obs]), loss=np.array([v for _, v in obs]))


# ----------------------------------------------------------------------------------------------- ladder
LADDER_MANIFEST = "ladder/ladder.json"


@dataclass(frozen=True)
class LadderData:
    """A study's ladder as ``autotune ladder`` left it: the same mixtures measured at each rung."""

    tokens: list[int]                 # tokens trained per run at each rung, increasing
    search_rung: int | None           # the rung that is the search's own runs
    mixtures: list[dict[str, Any]]    # label, trial, prior, mixture, schedule, seed
    values: dict[str, np.ndarray]     # metric -> (mixtures x rungs), NaN where a run is missing or failed
    min_kendall: float
    noise_std: dict[str, float]       # seed std per metric over the prior's replicates (search rung)


def run_key(mixture: dict[str, float], schedule: dict[str, Any], seed: Any) -> str:
    """What identifies a ladder mixture in every rung's trial rows: its mixture, schedule and seed."""
    return json.dumps(proposal_key(mixture, schedule, seed), sort_keys=True)


def load_ladder(study_dir: str | Path) -> LadderData | None:
    """The ladder of ``runs/<study>`` (``ladder/ladder.json`` and each rung's ``summary.json``), or None when
    the study has none. A rung's run that failed is NaN; a missing rung summary is a UserError."""
    root = Path(study_dir)
    path = root / LADDER_MANIFEST
    if not path.exists():
        return None
    manifest = _read_json(path, "ladder.json")
    try:
        rungs = sorted(manifest["rungs"], key=lambda r: int(r["tokens"]))
        mixtures = [dict(m) for m in manifest["mixtures"]]
        keys = [run_key(m["mixture"], m.get("schedule") or {}, m.get("seed")) for m in mixtures]
        min_kendall = float(manifest["min_kendall"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"ladder.json is malformed ({type(e).__name__}: {e}); rerun autotune ladder", file=path) from None
    rows_at: list[dict[str, dict]] = []
    noise: dict[str, float] = {}
    search_rung = None
    for rung in rungs:
        summary_path = root / rung["dir"] / "summary.json"
        summary = _read_json(summary_path, f"the summary of the ladder rung at {rung['tokens']} tokens")
        if rung.get("search"):
            search_rung = int(rung["tokens"])
            noise = {k: float(v["std"]) for k, v in (summary.get("noise") or {}).items()
                     if isinstance(v, dict) and isinstance(v.get("std"), (int, float))}
        found = {}
        for row in summary.get("trials") or []:
            if isinstance(row, dict) and row.get("state") == "complete" and row.get("mixture"):
                found.setdefault(run_key(row["mixture"], row.get("schedule") or {}, row.get("seed")), row)
        rows_at.append(found)
    names = {"target", "general"} | {k for found in rows_at for row in found.values() for k in (row.get("metrics") or {})}
    values = {}
    for metric in ["target", "general", *sorted(names - {"target", "general"})]:
        Y = np.full((len(mixtures), len(rungs)), np.nan)
        for r, found in enumerate(rows_at):
            for m, key in enumerate(keys):
                row = found.get(key)
                v = None if row is None else (row.get(metric) if metric in ("target", "general")
                                              else (row.get("metrics") or {}).get(metric))
                if isinstance(v, (int, float)) and math.isfinite(v):
                    Y[m, r] = float(v)
        values[metric] = Y
    return LadderData(tokens=[int(r["tokens"]) for r in rungs], search_rung=search_rung, mixtures=mixtures,
                      values=values, min_kendall=min_kendall, noise_std=noise)
