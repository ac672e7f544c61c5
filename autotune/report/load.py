"""Read a finished (or running) study folder into plain records for the report; runs nothing.

Sources, most authoritative first: ``study.db`` (Optuna SQLite: every trial, also while a study runs,
with its state, values, constraints and user attributes), ``summary.json`` (rows written at the end of a
search; used when the storage is elsewhere), ``space.json`` (the space as run), ``trials/<hash>/``
(``result.json``, ``train_log.jsonl``, ``samples/``), ``base/<hash>/result.json`` and ``recipe.yaml``.
Every file is optional except ``space.json``; a missing or damaged one becomes a note in the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autotune.errors import UserError
from autotune.records import FIX_SPACE_JSON, DamagedFile, TrialRecord, load_trials, read_json, read_jsonl


@dataclass
class ReportTrial:
    """One trial as the report shows it: its ``TrialRecord`` (fields read through, e.g. ``t.mixture``) plus
    what its run folder holds."""

    record: TrialRecord
    result: dict[str, Any] = field(default_factory=dict)  # result.json
    train_log: list[dict[str, Any]] = field(default_factory=list)
    stderr: dict[str, float] = field(default_factory=dict)  # per metric key
    log_tail: str = ""  # last lines of worker.log (failed trials)
    reason: str = ""  # the record's reason, or the result's when the storage has none

    def __getattr__(self, name: str) -> Any:  # only for names not found on ReportTrial itself
        if name == "record":
            raise AttributeError(name)
        return getattr(self.record, name)

    @property
    def complete(self) -> bool:
        return self.record.complete


@dataclass
class StudyData:
    root: Path
    name: str
    identity: dict[str, Any]
    digest: str = ""
    source_file: str = ""
    space_yaml: str = ""
    base: dict[str, float] = field(default_factory=dict)
    trials: list[ReportTrial] = field(default_factory=list)
    recipe: Any = None
    recipe_text: str = ""
    notes: list[str] = field(default_factory=list)  # what could not be read, shown at the top of the report
    trials_source: str = ""

    domain_order: list[str] = field(default_factory=list)  # as the user wrote them (space.json sorts keys)

    @property
    def domains(self) -> list[str]:
        names = list((self.identity.get("domains") or {}).keys())
        return self.domain_order if sorted(self.domain_order) == sorted(names) else names

    @property
    def complete(self) -> list[ReportTrial]:
        return [t for t in self.trials if t.complete]

    @property
    def prior_replicates(self) -> list[ReportTrial]:
        return [t for t in self.complete if t.prior]

    def metric_keys(self) -> list[str]:
        keys = list(self.base)
        for t in self.trials:
            keys += [k for k in t.metrics if k not in keys]
        return keys


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return read_json(path, fix="the report leaves it out")
    except DamagedFile as e:
        notes.append(str(e))
        return None
    except OSError as e:
        notes.append(f"{path}: unreadable ({type(e).__name__}: {e})")
        return None


def load_study_data(root: Path) -> StudyData:
    """Read ``root`` (``runs/<study>``); raises UserError when it is not a study folder."""
    root = Path(root)
    if not root.exists():
        raise UserError("study folder not found (give runs/<study>, as written by autotune search)", file=root)
    if not root.is_dir():
        raise UserError("not a folder (give runs/<study>, as written by autotune search)", file=root)
    space_json = root / "space.json"
    if not space_json.exists():
        raise UserError("not a study folder: it has no space.json (autotune search writes it)", file=root)
    try:
        space = read_json(space_json, fix=FIX_SPACE_JSON)  # damaged: names the file and what to do
    except OSError as e:
        raise UserError(f"unreadable study record: {e}", file=space_json) from None
    identity = space.get("identity") if isinstance(space, dict) else None
    if not isinstance(identity, dict) or not isinstance(identity.get("name"), str):
        raise UserError("not a study record: needs an 'identity' mapping with a 'name'", file=space_json,
                        field="identity.name")
    data = StudyData(root=root, name=identity["name"], identity=identity, digest=str(space.get("digest", "")),
                     source_file=str(space.get("source_file") or ""))
    if (root / "space.yaml").exists():
        data.space_yaml = (root / "space.yaml").read_text(encoding="utf-8", errors="replace")
        try:
            doms = (yaml.safe_load(data.space_yaml) or {}).get("domains")
            data.domain_order = [str(d) for d in doms] if isinstance(doms, dict) else []
        except (yaml.YAMLError, AttributeError):
            pass

    summary = _read_json(root / "summary.json", data.notes) if (root / "summary.json").exists() else None
    data.base = _base_metrics(root, summary, data.notes)
    loaded = load_trials(root, waiting=True)  # queued trials are listed too
    data.notes += loaded.notes
    data.trials_source = loaded.source
    data.trials = [ReportTrial(t, reason=t.reason) for t in loaded.records]
    for t in data.trials:
        _attach_files(root, t, data.notes)
    _read_recipe(root, data)
    return data


def _base_metrics(root: Path, summary: Any, notes: list[str]) -> dict[str, float]:
    if isinstance(summary, dict) and summary.get("base"):
        return dict(summary["base"])
    results = sorted((root / "base").glob("*/result.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in results:
        r = _read_json(path, notes)
        if isinstance(r, dict) and r.get("status") == "ok":
            return dict(r.get("metrics") or {})
    return {}


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` if it stays inside the study folder (run_dir comes from a file)."""
    if not rel:
        return None
    path = (root / rel).resolve()
    return path if path.is_relative_to(root.resolve()) and path.is_dir() else None


def _attach_files(root: Path, t: ReportTrial, notes: list[str]) -> None:
    folder = _inside(root, t.run_dir)
    if folder is None:
        return
    if (folder / "result.json").exists():
        r = _read_json(folder / "result.json", notes)
        t.result = r if isinstance(r, dict) else {}
    if not t.reason and t.result.get("reason"):
        t.reason = str(t.result["reason"])
    t.train_log = read_train_log(folder / "train_log.jsonl")
    t.stderr = {k: float(v) for k, v in (t.result.get("stderr") or {}).items() if _num(v) is not None}
    for key, value in t.metrics.items():
        if key not in t.stderr and "/" in key and not key.startswith("bpb/"):
            se = sample_stderr(folder / "samples", key, value)
            if se is not None:
                t.stderr[key] = se
    if t.state != "complete" and (folder / "worker.log").exists():
        lines = [ln for ln in (folder / "worker.log").read_text(errors="replace").splitlines() if ln.strip()]
        t.log_tail = "\n".join(lines[-8:])[-2000:]


def read_train_log(path: Path) -> list[dict[str, Any]]:
    """The trainer's per-step log; a half-written last line (a killed run) is skipped."""
    return [row for row in read_jsonl(path) if "step" in row]


def sample_stderr(samples_dir: Path, key: str, value: float) -> float | None:
    """Standard error of a mean metric from lm-eval's per-sample log (``samples/<task>.jsonl``).

    The studies run lm-eval with ``bootstrap_iters=0``, so ``result.json`` has no stderr; for a mean over
    documents it is ``std(per-sample) / sqrt(n)`` (what lm-eval's ``mean_stderr`` computes). A task logged
    under several filters: the filter whose mean matches the recorded metric is used.
    """
    task, metric = key.rsplit("/", 1)
    path = samples_dir / f"{task}.jsonl"
    if path.parent != samples_dir or not path.exists():  # a task name with a "/" is no file of ours
        return None
    by_filter: dict[str, list[float]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            v = row.get(metric) if isinstance(row, dict) else None
            if isinstance(v, int | float) and not isinstance(v, bool):
                by_filter.setdefault(str(row.get("filter", "none")), []).append(float(v))
    best = None
    for vals in by_filter.values():
        if len(vals) < 2:
            continue
        mean = sum(vals) / len(vals)
        if best is None or abs(mean - value) < abs(best[0] - value):
            var = sum((x - mean) ** 2 for x in vals) / (len(vals) - 1)
            best = (mean, math.sqrt(var / len(vals)))
    return best[1] if best else None


def _read_recipe(root: Path, data: StudyData) -> None:
    path = root / "recipe.yaml"
    if not path.exists():
        return
    try:
        data.recipe_text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:  # a folder, unreadable: the report goes on without the recipe
        data.notes.append(f"{path}: unreadable ({type(e).__name__}: {e.strerror}); the report has no recipe")
        return
    try:
        data.recipe = yaml.safe_load(data.recipe_text)
    except yaml.YAMLError as e:
        data.notes.append(f"{path}: not valid YAML ({str(e).splitlines()[0]}); shown as text")
        data.recipe = None
