"""Frozen, JSON-round-trippable records passed between stages, and the only reader and writer of their files.

* ``Proposal``: what one trial trains (controller -> study -> worker);
* ``Job``: what a worker is asked to do (``job.json``, study -> launcher -> worker);
* ``Prepared``: tokenizer, base checkpoint and packed domains (the prepare job's ``result.json``);
* ``RunResult``: what a trial's worker leaves (``result.json``: status, metrics, train summary);
* ``TrialRecord``: one trial as every reader sees it (status, export, report, extrapolate, ladder), from the
  Optuna storage or from ``summary.json``; ``load_trials(study_dir)`` reads them;
* ``Attr``: the names of the Optuna user attributes the study writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from autotune.config.identity import proposal_key
from autotune.errors import UserError
from autotune.paths import write_text_atomic
from autotune.redact import redact

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Proposal:
    """What one trial trains: a mixture (shares summing to 1), a schedule, a seed and, when the space
    searches long-context knobs, the context (``seq_len``, ``rope_theta``)."""

    mixture: dict[str, float]
    schedule: dict[str, Any]
    seed: int
    context: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Proposal:
        return cls(mixture=dict(d["mixture"]), schedule=dict(d["schedule"]), seed=int(d["seed"]),
                   context=dict(d.get("context") or {}))

    def key(self) -> dict[str, Any]:
        """What identifies the proposal (``config.identity.proposal_key``: one rounding everywhere)."""
        return proposal_key(self.mixture, self.schedule, self.seed, self.context)


@dataclass(frozen=True)
class RunResult:
    """What a worker leaves in ``result.json``: status ``ok`` | ``diverged`` | ``oom`` | ``failed``."""

    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    eval_meta: dict[str, Any] = field(default_factory=dict)
    bad_input: bool = False  # the failure is the user's input (exit 2), not the run

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunResult:
        return cls(**{k: d[k] for k in ("status", "reason", "metrics", "stderr", "train", "eval_meta", "bad_input")
                      if k in d})


def digest(obj: Any, n: int = 16) -> str:
    """Stable short hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temp file + rename, so a kill never leaves half a file (mode: the umask's)."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True), fsync=True)


class DamagedFile(UserError, ValueError):
    """A JSON file autotune wrote cannot be parsed (cut by a kill or a full disk, edited, foreign bytes).
    A ``UserError`` (one line naming the file and what to do; exit 2) and a ``ValueError``, so that readers
    of caches that can be recomputed catch it as they catch a parse error."""


# what to do about a damaged study file (``read_json``'s ``fix``)
FIX_SPACE_JSON = ("it records the space the study ran; if the space file is unchanged, delete it and run "
                  "`autotune search SPACE.yaml` again to rewrite it (finished trials are kept)")
FIX_SUMMARY = "run `autotune search` on the study's space again to rewrite it (finished trials do not run again)"
FIX_RECOMPUTE = "delete it: it is recomputed"


def read_json(path: Path, fix: str = "restore it, or delete it if autotune can recompute it") -> Any:
    """The JSON in ``path``. Not JSON or not UTF-8: ``DamagedFile`` naming the file and ``fix`` (what to do)."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text (byte {e.start})"
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    raise DamagedFile(f"the file is damaged: {problem}; {fix}", file=path) from None


def read_jsonl(path: Path, *, warn: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; lines that are not JSON (a half-written last line of a killed
    writer, foreign bytes) are skipped, with a logged warning naming the file and lines when ``warn``."""
    if not Path(path).exists():
        return []
    out, skipped = [], []
    # bad bytes inside a string leave the line's numbers usable: decoded as U+FFFD, the line is kept
    for number, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            if line.strip():
                skipped.append(number)
            continue
        if isinstance(row, dict):
            out.append(row)
    if warn and skipped:
        lines = ", ".join(map(str, skipped[:5])) + (" ..." if len(skipped) > 5 else "")
        _log.warning("autotune: warning: %s: skipped %d line(s) that are not JSON objects in UTF-8 (line %s)", path,
                     len(skipped), lines)
    return out


# ----------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Prepared:
    """What the prepare job leaves: the tokenizer and base checkpoint folders with their hashes, the base
    run's final learning rate (``schedule.start_lr: base``) and each domain's packed tokens (folder and
    manifest)."""

    tokenizer: str
    tokenizer_hash: str
    base: str
    base_hash: str
    base_final_lr: float | None
    domains: dict[str, str]
    manifests: dict[str, dict[str, Any]]

    def source_hash(self, domain: str, split: str = "train") -> str:
        return self.manifests[domain]["splits"][split]["source_hash"]

    def to_json(self) -> dict[str, Any]:
        return {"status": "ok", **asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Prepared:
        return cls(tokenizer=d["tokenizer"], tokenizer_hash=d["tokenizer_hash"], base=d["base"], base_hash=d["base_hash"],
                   base_final_lr=d.get("base_final_lr"), domains=dict(d["domains"]), manifests=dict(d["manifests"]))


@dataclass(frozen=True)
class Job:
    """A worker's ``job.json``: ``prepare`` (data, tokenizer, base) or ``trial`` (train ``proposal`` from the
    ``prepared`` base, or with no proposal evaluate the base). ``space`` is the space as JSON with absolute
    paths (the worker runs wherever the launcher puts it)."""

    kind: Literal["prepare", "trial"]
    space: dict[str, Any]
    space_file: str | None = None
    prepared: Prepared | None = None
    proposal: Proposal | None = None
    allow_code_execution: bool = False
    keep_checkpoint: bool = True
    trial: int | None = None  # the Optuna trial number that runs it (names its tracker run; search.tracking)

    def to_json(self) -> dict[str, Any]:
        space, search = self.space, self.space.get("search")
        if isinstance(search, dict) and isinstance(search.get("storage"), str):  # the worker opens no storage:
            space = {**space, "search": {**search, "storage": redact(search["storage"])}}  # no password in job.json
        d: dict[str, Any] = {"kind": self.kind, "space": space, "space_file": self.space_file}
        if self.kind == "trial":
            d.update(prepared=self.prepared.to_json() if self.prepared else None,
                     proposal=self.proposal.to_json() if self.proposal else None,
                     allow_code_execution=self.allow_code_execution, keep_checkpoint=self.keep_checkpoint)
            if self.trial is not None:
                d["trial"] = self.trial
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        return cls(kind=d["kind"], space=dict(d["space"]), space_file=d.get("space_file"),
                   prepared=Prepared.from_json(d["prepared"]) if d.get("prepared") else None,
                   proposal=Proposal.from_json(d["proposal"]) if d.get("proposal") else None,
                   allow_code_execution=bool(d.get("allow_code_execution")),
                   keep_checkpoint=bool(d.get("keep_checkpoint", True)),
                   trial=d["trial"] if isinstance(d.get("trial"), int) else None)

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> Job:
        return cls.from_json(read_json(path))


def read_result(path: Path) -> RunResult | Prepared:
    """A worker's ``result.json``: a prepare job's ``Prepared`` when it succeeded, else a ``RunResult`` (a
    damaged file is a ``crashed`` run: the worker died writing it, it is not the user's input)."""
    try:
        d = read_json(path)
    except DamagedFile as e:
        return RunResult(status="crashed", reason=str(e))
    if not isinstance(d, dict) or "status" not in d:
        return RunResult(status="failed", reason=f"{path} holds no status")
    if d.get("status") == "ok" and "base_hash" in d:
        return Prepared.from_json(d)
    return RunResult.from_json(d)


# ----------------------------------------------------------------------------------------------- trials
class Attr:
    """Names of the Optuna user attributes a study writes on its trials (read back by ``TrialRecord``)."""

    PROPOSAL = "proposal"  # Proposal.to_json(): mixture shares, schedule, seed, context
    SEED = "seed"  # set on enqueued trials (prior replicates, ladder re-runs)
    PRIOR = "prior"  # a replicate of the prior mixture
    OWNER = "owner"  # {host, pid} of the controller running it
    STATUS = "status"  # RunResult.status, or pruned / interrupted / lost / surplus
    REASON = "reason"
    COUNTS = "counts"  # False: an interrupted or surplus trial that does not count towards the budget
    RETRY_OF = "retry_of"
    RUN_DIR = "run_dir"  # relative to the study folder
    METRICS = "metrics"
    TARGET = "target"
    GENERAL = "general"
    FEASIBLE = "feasible"
    RUNGS = "rungs"
    MEMORY_SETTINGS = "memory_settings"
    NOISE_MARGIN = "noise_margin"
    TOKENS_PER_S = "train_tokens_per_s"
    LADDER_OF = "ladder_of"
    CONSTRAINTS = "constraints"  # a system attribute: [constraint value] (search.controller._set_constraint)
    SHARE = "share."  # + domain: the trial's share of that domain (the params hold the sampler's coordinates)

    @staticmethod
    def share(domain: str) -> str:
        """The attribute holding a trial's share of ``domain`` (what optuna-dashboard shows next to the params)."""
        return f"{Attr.SHARE}{domain}"


def _num(x: Any) -> float | None:

    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


@dataclass(frozen=True)
class TrialRecord:
    """One trial as status, export, the report, extrapolation and the ladder read it. ``state``: complete |
    pruned | fail | running. Its JSON form is a ``summary.json`` row (``trial`` is the number)."""

    number: int
    state: str
    status: str = ""
    mixture: dict[str, float] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)  # long-context knobs (seq_len, rope_theta)
    seed: int | None = None
    prior: bool = False
    target: float | None = None
    general: float | None = None
    feasible: bool | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    run_dir: str = ""
    duration_s: float | None = None
    retry_of: int | None = None
    constraint: float | None = None  # Optuna's convention: <= 0 is feasible (storage only)
    pruned_at: str = ""  # last reported step and value of a pruned trial (storage only)

    @property
    def complete(self) -> bool:
        return self.state == "complete" and self.target is not None and self.general is not None

    def to_row(self) -> dict[str, Any]:
        """The ``summary.json`` row."""
        return {"trial": self.number, "state": self.state, "status": self.status, "duration_s": self.duration_s,
                "retry_of": self.retry_of, "mixture": self.mixture, "schedule": self.schedule,
                "context": self.context, "seed": self.seed, "prior": self.prior, "target": self.target,
                "general": self.general, "feasible": self.feasible, "metrics": self.metrics, "reason": self.reason,
                "run_dir": self.run_dir}

    @classmethod
    def from_row(cls, r: dict[str, Any], index: int = -1) -> TrialRecord:
        """A ``summary.json`` row (any version autotune wrote); missing fields take their defaults."""
        return cls(number=int(r.get("trial", index)), state=str(r.get("state", "")), status=str(r.get("status") or ""),
                   mixture=dict(r.get("mixture") or {}), schedule=dict(r.get("schedule") or {}),
                   context=dict(r.get("context") or {}), seed=r.get("seed"), prior=bool(r.get("prior")),
                   target=_num(r.get("target")), general=_num(r.get("general")), feasible=r.get("feasible"),
                   metrics=dict(r.get("metrics") or {}), reason=str(r.get("reason") or ""),
                   run_dir=str(r.get("run_dir") or ""), duration_s=_num(r.get("duration_s")), retry_of=r.get("retry_of"))

    @classmethod
    def from_frozen(cls, t: Any, *, waiting: bool = False) -> TrialRecord | None:
        """An Optuna ``FrozenTrial``; None for an interrupted trial that was rerun (the rerun has its own
        record) and, unless ``waiting``, for a queued one."""
        ua = t.user_attrs
        state = t.state.name.lower()
        if (state == "waiting" and not waiting) or (state == "fail" and not ua.get(Attr.COUNTS, True)):
            return None
        prop = ua.get(Attr.PROPOSAL) or {}
        status = str(ua.get(Attr.STATUS, "lost" if state == "fail" else ""))
        reason = str(ua.get(Attr.REASON, "no heartbeat: its worker died" if status == "lost" else ""))
        constraints = list(t.constraints.values()) if isinstance(t.constraints, dict) else list(t.constraints or [])
        pruned_at = ""
        if state == "pruned" and t.intermediate_values:
            step = max(t.intermediate_values)
            pruned_at = f"step {step}, value {t.intermediate_values[step]:.4g}"
        return cls(number=t.number, state=state, status=status, mixture=dict(prop.get("mixture") or {}),
                   schedule=dict(prop.get("schedule") or {}), context=dict(prop.get("context") or {}),
                   seed=prop.get("seed", ua.get(Attr.SEED)), prior=bool(ua.get(Attr.PRIOR)),
                   target=_num(ua.get(Attr.TARGET)), general=_num(ua.get(Attr.GENERAL)),
                   feasible=ua.get(Attr.FEASIBLE), metrics=dict(ua.get(Attr.METRICS) or {}), reason=reason,
                   run_dir=str(ua.get(Attr.RUN_DIR, "")),
                   duration_s=t.duration.total_seconds() if t.duration else None, retry_of=ua.get(Attr.RETRY_OF),
                   constraint=max(constraints) if constraints else None, pruned_at=pruned_at)


@dataclass(frozen=True)
class Trials:
    """A study's trials, where they were read from (``study.db`` | ``summary.json`` | ``none``), and notes on
    what could not be read."""

    records: list[TrialRecord]
    source: str
    notes: list[str] = field(default_factory=list)


STORAGE_HERE = "study.db"  # summary.json's ``storage`` when the study's storage is this folder's study.db


def storage_record(spec: str, study_dir: Path) -> str:
    """What ``summary.json`` records as the study's storage: ``study.db`` for this folder's SQLite file, else the
    URL with its password redacted (readers of a moved study learn where its trials are, never a secret)."""
    if spec == "sqlite" or spec == f"sqlite:///{Path(study_dir) / STORAGE_HERE}" \
            or spec == f"sqlite:///{(Path(study_dir) / STORAGE_HERE).resolve()}":
        return STORAGE_HERE
    return redact(spec)


def load_trials(study_dir: Path, *, storage: bool = True, waiting: bool = False) -> Trials:
    """Every trial of ``runs/<study>``: from its Optuna storage ``study.db`` (also while a study runs) when
    ``storage`` and the file loads, else from ``summary.json`` (written at the end of each search). Queued
    trials (``waiting``) are in the storage only.

    A study whose storage moved (``--storage postgresql://...`` after runs on SQLite) leaves an old study.db
    behind: when ``summary.json`` records another storage and study.db was not written after it, or (older
    summaries, which record none) it lists finished trials study.db lacks, the trials come from summary.json
    and a note says which source was used and why. The other storage is not opened: its URL on disk has no
    password, and a reader connects nowhere."""
    root = Path(study_dir)
    notes: list[str] = []
    path = root / "summary.json"
    summary, problem = _read_summary(path)
    if storage:
        moved = _moved_storage(root, summary)
        if moved:
            notes.append(moved)
        else:
            records = _trials_from_db(root, notes, waiting)
            if records is not None:
                stale = _older_than_summary(root, records, summary)
                if not stale:
                    return Trials(records, "study.db", notes)
                notes.append(stale)
    if summary is None:
        return Trials([], "none", [*notes, *([problem] if problem else [])])
    rows = summary.get("trials") if isinstance(summary, dict) else None
    records = [TrialRecord.from_row(r, i) for i, r in enumerate(rows or []) if isinstance(r, dict)]
    return Trials(sorted(records, key=lambda t: t.number), "summary.json", notes)


def _read_summary(path: Path) -> tuple[Any, str]:
    """``summary.json``'s content (None when missing or unreadable) and what went wrong."""
    if not path.exists():
        return None, ""
    try:
        return read_json(path), ""
    except (OSError, ValueError) as e:
        return None, f"{path}: unreadable ({type(e).__name__}: {e})"


def _summary_rows(summary: Any) -> list[dict[str, Any]]:
    rows = summary.get("trials") if isinstance(summary, dict) else None
    return [r for r in rows or [] if isinstance(r, dict)]


def _db_written_after(root: Path, summary_path: Path) -> bool:
    db = root / STORAGE_HERE
    return db.exists() and db.stat().st_mtime_ns > summary_path.stat().st_mtime_ns


def _moved_storage(root: Path, summary: Any) -> str:
    """A note when ``summary.json`` records a storage other than study.db and study.db was not written since
    (the last search used that storage); "" otherwise."""
    where = summary.get("storage") if isinstance(summary, dict) else None
    if not isinstance(where, str) or where == STORAGE_HERE or _db_written_after(root, root / "summary.json"):
        return ""
    n = len(_summary_rows(summary))
    old = ("this folder's study.db is an older storage the study no longer uses, and is not read"
           if (root / STORAGE_HERE).exists() else "this folder has no study.db")
    return (f"the study's storage is {where} (recorded in summary.json by the last search); {old}: the {n} trials "
            f"are read from summary.json, as that search left them (trials running since are not shown; "
            f"`autotune status {root} --storage URL` lists them)")


def _older_than_summary(root: Path, records: list[TrialRecord], summary: Any) -> str:
    """A note when summary.json (written after study.db) lists finished trials that study.db lacks: the storage
    moved before summaries recorded it; "" when they agree."""
    path = root / "summary.json"
    if summary is None or _db_written_after(root, path):
        return ""
    have = {(r.number, r.run_dir) for r in records if r.state == "complete"}
    missing = [r for r in _summary_rows(summary)
               if r.get("state") == "complete" and (r.get("trial"), str(r.get("run_dir") or "")) not in have]
    if not missing:
        return ""
    return (f"study.db and summary.json disagree: summary.json, written after study.db, lists {len(missing)} finished "
            f"trial(s) that study.db lacks (the study's storage moved, e.g. with --storage); study.db's "
            f"{len(records)} trials are not used: the {len(_summary_rows(summary))} trials are read from summary.json")


def _trials_from_db(root: Path, notes: list[str], waiting: bool) -> list[TrialRecord] | None:
    db = root / "study.db"
    if not db.exists():
        notes.append("no study.db here (the storage may be elsewhere): trials are read from summary.json")
        return None
    if db.stat().st_size == 0:  # opening it would write a fresh schema into it: a reader writes nothing
        notes.append(f"{db} is empty (0 bytes): it holds no study (a full disk or a cut copy?); trials are read "
                     "from summary.json")
        return None
    import optuna  # a light module calling a heavy one: only when a study's storage is read

    url = f"sqlite:///{db.resolve()}"
    name = None
    if (root / "space.json").exists():
        try:
            name = read_json(root / "space.json")["identity"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            name = None
    try:
        try:
            study = optuna.load_study(study_name=name, storage=url)
        except KeyError:  # another name in the file: take its only study
            study = optuna.load_study(study_name=None, storage=url)
    except Exception as e:  # a damaged or foreign file: say so, fall back to summary.json
        notes.append(f"{db}: cannot load the Optuna study ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                     "trials are read from summary.json")
        return None
    records = [TrialRecord.from_frozen(t, waiting=waiting) for t in study.get_trials(deepcopy=False)]
    return sorted((r for r in records if r is not None), key=lambda t: t.number)
