"""The loop that drives a study: the one place that combines stages.

prepare (data, tokenizer, base) -> evaluate the base once (the reference) -> until the trial budget is
spent: ask a proposal -> run it in a worker (or reuse a finished run with the same content hash) ->
score it against the base -> tell Optuna. Everything is resumable: rerunning the same command reloads the
study, reuses finished runs, and reruns only an interrupted trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.config.identity import only_what, run_key, without_how
from autotune.config.run import GgufBase, LauncherSpec, Proxy
from autotune.config.space import SearchSpace, dump_space
from autotune.config.suite import Suite
from autotune.errors import UserError, disk_full_reason, is_disk_full
from autotune.evaluate.noise import noise_floor
from autotune.evaluate.suite import load_suite
from autotune.evaluate.vllm_engine import ENGINE_ENV
from autotune.objective import rung_value, score
from autotune.paths import follow_umask
from autotune.procs import sigterm_as_interrupt
from autotune.records import (
    FIX_SPACE_JSON,
    FIX_SUMMARY,
    Attr,
    DamagedFile,
    Job,
    Prepared,
    Proposal,
    RunResult,
    TrialRecord,
    digest,
    read_json,
    read_result,
    storage_record,
    write_json_atomic,
)
from autotune.search.launch import (
    TIMED_OUT,
    Launcher,
    LocalLauncher,
    SubmititLauncher,
    accelerate_prefix,
    folder_lock,
    folder_locked,
    kill_orphan,
)
from autotune.search.protocol import EXIT_NO_SPACE, NO_SPACE_EVENT
from autotune.search.tracking import StudyRun
from autotune.search.tracking import resolve as resolve_tracking

ProgressFactory = Callable[[str], Any]
_log = logging.getLogger(__name__)


class StudyFailed(Exception):
    """The study cannot go on (its data or base model could not be prepared): exit 1 with the reason."""


class Pruned(Exception):
    """Raised from the progress callback when the pruner stops a trial at a rung; the worker is stopped."""

    def __init__(self, reason: str, rungs: list[dict]) -> None:
        super().__init__(reason)
        self.reason, self.rungs = reason, rungs


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM: ``signum``) during a study: the running trial was stopped and will rerun when the
    study resumes."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class OutOfSpace(Exception):
    """A job ran out of disk space: the study stops (every later job would fail the same way); the running
    trial is left to rerun, so a rerun with space freed resumes."""


@dataclass
class StudyPaths:
    root: Path

    @property
    def space_yaml(self) -> Path:
        return self.root / "space.yaml"

    @property
    def space_json(self) -> Path:
        return self.root / "space.json"

    def trial_dir(self, key: str) -> Path:
        return self.root / "trials" / key


def make_launcher(space: SearchSpace) -> Launcher:
    spec = space.search.launcher
    if spec.kind == "slurm":

        try:
            extra = {k: v for k, v in (spec.model_extra or {}).items()}
            return SubmititLauncher(cluster=spec.cluster, **extra)
        except ImportError as e:
            raise UserError(str(e), file=space.source_file, field="search.launcher.kind", value="slurm") from None
    if spec.kind == "accelerate":

        return LocalLauncher(prefix=accelerate_prefix(spec.num_processes, spec.mixed_precision),
                             memory_limit=spec.memory_limit)
    return LocalLauncher(memory_limit=spec.memory_limit)


def study_dir(space: SearchSpace) -> Path:
    """``<runs_dir>/<name>``; ``runs_dir`` is relative to the working directory (like ``reports/``)."""
    return Path(space.search.runs_dir).expanduser().resolve() / space.name


def _without_how(ident: dict[str, Any]) -> dict[str, Any]:
    """A space's identity (as JSON, possibly of an older format) without the fields marked HOW: how a run is
    computed may change between sessions of one study (e.g. a smaller micro-batch, a memory cap, more
    processes or sharding after trials ran out of memory; those trials then run again, see Study._retry_oom)."""
    d = {**ident, "proxy": without_how(Proxy, ident.get("proxy", {}))}
    if "search" in ident:
        search = dict(ident["search"])
        search["launcher"] = only_what(LauncherSpec, search.get("launcher", {}))  # extra keys: Slurm's
        d["search"] = search
    return d


def memory_settings(space: dict[str, Any]) -> dict[str, Any]:
    """What decides a run's memory per process (from a space as JSON, e.g. a job file's)."""
    launcher = space.get("search", {}).get("launcher", {})
    return {"micro_batch_seqs": space.get("proxy", {}).get("micro_batch_seqs"),
            **{k: launcher.get(k) for k in ("kind", "num_processes", "sharding", "memory_limit")}}


def space_identity(space: SearchSpace) -> dict[str, Any]:
    """What must not change under a running study (the trial budget may grow, the storage may move)."""
    d = space.model_dump(mode="json")
    # (search.tracking, marked HOW, only logs runs: a study may gain, change or drop its tracker)
    d["search"] = {k: v for k, v in d["search"].items() if k not in ("trials", "storage", "runs_dir", "tracking")}
    for section in ("ladder", "extrapolate", "verify"):  # what is done after the trials: may change, and older studies lack it
        d.pop(section, None)
    return _without_how(d)


def _changed(old: Any, new: Any, explicit: Any) -> bool:
    """Whether ``new`` differs from ``old``, where a field missing from ``old`` (added to the space format
    after that study started) does not count while ``new`` leaves it at its default (not in ``explicit``)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old != new
    explicit = explicit if isinstance(explicit, dict) else {}
    for k in set(old) | set(new):
        if k not in old:
            if k in explicit:
                return True
        elif k not in new or _changed(old[k], new[k], explicit.get(k)):
            return True
    return False


def _recorded_identity(space_json: Path) -> dict[str, Any]:
    """The identity of the space a study ran (``space.json``); damaged: a ``UserError`` saying what to do."""
    record = read_json(space_json, fix=FIX_SPACE_JSON)
    if not isinstance(record, dict) or not isinstance(record.get("identity"), dict):
        raise DamagedFile(f"the file is damaged: it has no 'identity' mapping; {FIX_SPACE_JSON}", file=space_json)
    return record["identity"]


def _finished_result(done: Path) -> RunResult | None:
    """A run folder's ``result.json``: None when there is none or it is damaged (the run is content-keyed,
    so a damaged result is recomputed, with a warning)."""
    if not done.exists():
        return None
    try:
        d = read_json(done, fix="it is recomputed now")
    except DamagedFile as e:
        _log.warning("autotune: warning: %s", e)
        return None
    return RunResult.from_json(d) if isinstance(d, dict) and "status" in d else None


def check_space(paths: StudyPaths, space: SearchSpace) -> None:
    """Record the space on a new study; refuse to resume a study whose space has changed.

    Fields the space format gained since the study started are no change while they keep their defaults.
    """
    ident = space_identity(space)
    if paths.space_json.exists():
        old = _without_how(_recorded_identity(paths.space_json))
        explicit = space.model_dump(mode="json", exclude_defaults=True)
        if _changed(old, ident, explicit):
            changed = sorted(k for k in set(old) | set(ident) if k in old and _changed(old[k], ident.get(k), explicit.get(k))
                             or k not in old and k in explicit)
            raise UserError(f"{paths.root} holds a study of a different space (changed: {', '.join(changed)}); "
                            "give the space a new name, or remove that folder to start over",
                            file=space.source_file, field="name", value=space.name)
        return
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        # source_file absolute: commands on the study folder find the space file from any directory
        source = str(Path(space.source_file).resolve()) if space.source_file else None
        write_json_atomic(paths.space_json, {"identity": ident, "digest": digest(ident), "source_file": source})
        paths.space_yaml.write_text(f"# the space as run; digest {digest(ident)}\n" + dump_space(space))
    except OSError as e:
        if is_disk_full(e):  # not bad input: the CLI says so (exit 4)
            raise
        raise UserError(f"cannot write the study folder {paths.root}: {e.strerror}", file=space.source_file,
                        field="search.runs_dir", value=space.search.runs_dir) from None


def read_trials(space: SearchSpace) -> tuple[Path, list[TrialRecord]]:
    """The study's folder and its trials from ``summary.json`` (what the ladder and the verification start from);
    a UserError when it has not run, has changed, or has no readable summary."""
    root = study_dir(space)
    paths = StudyPaths(root)
    if not paths.space_json.exists():
        raise UserError("no study has run for this space yet: run autotune search first", file=space.source_file,
                        field="name", value=space.name)
    check_space(paths, space)  # refuses a space that changed under the study
    summary_path = root / "summary.json"
    if not summary_path.exists():
        raise UserError("the study has no summary.json yet: let autotune search finish first", file=summary_path)
    summary = read_json(summary_path, fix=FIX_SUMMARY)
    rows = summary.get("trials") if isinstance(summary, dict) else None
    if not isinstance(rows, list):
        raise UserError("not a study summary (needs a 'trials' list)", file=summary_path, field="trials")
    return root, [TrialRecord.from_row(r, i) for i, r in enumerate(rows) if isinstance(r, dict)]


def job_space(space: SearchSpace) -> dict[str, Any]:
    """The space for a worker, with relative paths made absolute (it runs wherever the launcher puts it)."""
    d = space.model_dump(mode="json")
    d["evals"] = str(space.suite_path)
    for name, dom in space.domains.items():
        if not isinstance(dom.source, str):
            d["domains"][name]["source"] = dom.source.resolved(space.root).model_dump(mode="json")
    if isinstance(space.base_model, str):
        d["base_model"] = str(space.resolve(space.base_model))
    elif isinstance(space.base_model, GgufBase) and (space.root / space.base_model.gguf).is_file():
        d["base_model"] = {"gguf": str((space.root / space.base_model.gguf).resolve())}  # PACKAGE/FILE stays as is
    if space.search.tracking is not None:  # the tracker's folder / URI, as this process resolves them
        d["search"]["tracking"] = resolve_tracking(space.search.tracking, study_dir(space), space.name).model_dump(mode="json")
    return d


class Study:
    """One study of a search space, run or resumed: ``Study(space).search()`` (the module docstring has the
    steps); ``rows(controller())`` are its trials as ``TrialRecord``s; ``paths.root`` is its folder.

    ``launcher``: where workers run (default: the space's ``search.launcher``); ``storage``: an Optuna storage
    URL overriding ``search.storage``; ``progress``: a factory of progress bars, one per job, fed the workers'
    progress events (default: each phase logged at INFO); ``log``: where the messages a user must see go
    (a pruned or failed trial, a trial queued again; default: the ``autotune.search.study`` logger, at INFO,
    failures at WARNING); ``read_only``: a reader (status, export) that opens an existing study and creates
    nothing.
    """

    def __init__(self, space: SearchSpace, *, launcher: Launcher | None = None, storage: str | None = None,
                 progress: ProgressFactory | None = None, log: Callable[[str], None] | None = None,
                 allow_code_execution: bool = False, read_only: bool = False) -> None:
        self.space = space
        self.allow_code_execution = allow_code_execution
        self.storage = storage
        self.read_only = read_only  # a reader (status, export): opens an existing study, creates none
        self.paths = StudyPaths(study_dir(space))
        self.launcher = launcher or make_launcher(space)
        self.progress = progress or _LogBar
        self.log = log or _log.info
        self.warn = log or _log.warning  # a message that something went wrong
        self.suite: Suite = load_suite(space.suite_path, list(space.domains))
        self.prepared: Prepared | None = None
        self.base: RunResult | None = None
        self.tracking = StudyRun(None, space.name)  # the study-level tracker run (search.tracking), from search()

    def controller(self, *, read_only: bool = False):
        """The study's Optuna controller; ``read_only`` (or a read-only ``Study``): opens an existing study and
        creates nothing (no storage, no study)."""
        from autotune.search.controller import Controller

        db = self.paths.root / "study.db"
        new = not db.exists()
        ctl = Controller(self.space, self.paths.root, self.storage, create=not (self.read_only or read_only),
                         log=self.log)
        if new and db.exists():
            follow_umask(db)  # SQLite makes it 0644 whatever the umask (its journals copy the file's mode)
        return ctl

    # ------------------------------------------------------------------ jobs
    def _launch(self, folder: Path, job: Job, label: str,
                on_event: Callable[[dict], None] | None = None) -> RunResult | Prepared:
        folder.mkdir(parents=True, exist_ok=True)
        result_path = folder / "result.json"
        result_path.unlink(missing_ok=True)
        job.write(folder / "job.json")
        bar = self.progress(label)
        no_space: dict = {}

        def watch(event: dict) -> None:
            if NO_SPACE_EVENT in event:
                no_space.update(event)
            if "warning" in event:  # the worker could not do something that loses no work (search.tracking)
                self.warn(f"{label}: {event['warning']}")

        try:
            timeout = self.space.search.trial_timeout_s if job.proposal else None  # trials only
            code = self.launcher.run(folder / "job.json", _tee(_tee(bar.update, watch), on_event), timeout_s=timeout)
        finally:
            bar.close()
        if code == EXIT_NO_SPACE or no_space:
            reason = no_space.get(NO_SPACE_EVENT) or "the worker ran out of disk space"
            raise OutOfSpace(f"no space left on device: {label} stopped ({reason}; in {folder}); free some space "
                             "and run the same command again to resume")
        if code == TIMED_OUT:
            return RunResult(status="timeout", reason=f"stopped after search.trial_timeout_s = {self.space.search.trial_timeout_s} s")
        if not result_path.exists():
            tail = _tail(folder / "worker.log")
            return RunResult(status="crashed", reason=f"worker exited with code {code} and no result{': ' + tail if tail else ''}")
        return read_result(result_path)

    def _job(self, kind: str, **fields: Any) -> Job:
        return Job(kind=kind, space=job_space(self.space), space_file=self.space.source_file, **fields)

    def prepare(self) -> Prepared:
        with folder_lock(self.paths.root / "prepare"):  # workers of one study prepare one at a time
            out = self._launch(self.paths.root / "prepare", self._job("prepare"), "prepare data + base model")
        if not isinstance(out, Prepared):
            if out.bad_input:
                raise UserError(out.reason)
            raise StudyFailed(f"preparing the data and base model failed: {out.reason} "
                               f"(log: {self.paths.root / 'prepare' / 'worker.log'})")
        if self.space.schedule.start_lr == "base" and out.base_final_lr is None:
            raise UserError(f"the base checkpoint {out.base} records no final learning rate (no trainer_state.json "
                            "or pretrain_log.jsonl): give start_lr as a number", file=self.space.source_file,
                            field="schedule.start_lr", value="base")
        self.prepared = out
        return out

    def run_key(self, proposal: Proposal | None) -> str:
        """Content hash of what determines a run (and its evaluation): names its folder."""
        return digest({"proposal": proposal.key() if proposal else None, "base": self.prepared.base_hash,
                       "data": {n: self.prepared.source_hash(n) for n in self.prepared.manifests},
                       "tokenizer": self.prepared.tokenizer_hash, "suite": self.suite.digest(),
                       "proxy": run_key(self.space.proxy),
                       **({"phases": [ph.model_dump() for ph in self.space.mixture.phases]} if self.space.mixture.phases else {})})

    def run(self, proposal: Proposal | None, label: str,
            on_event: Callable[[dict], None] | None = None, trial: int | None = None) -> tuple[Path, RunResult]:
        """Run a proposal (None: the base model, evaluated only), or reuse a finished run of the same content.
        ``trial``: the Optuna trial number running it (names its tracker run).

        The folder is locked while it runs, so a duplicate proposal on another worker waits and reuses.
        """
        folder = self.paths.root / ("base" if proposal is None else "trials") / self.run_key(proposal)
        with folder_lock(folder):
            cached = _finished_result(folder / "result.json")
            if cached is not None and cached.ok:
                return folder, cached
            job = self._job("trial", prepared=self.prepared, proposal=proposal,
                            allow_code_execution=self.allow_code_execution, trial=trial)
            return folder, self._launch(folder, job, label, on_event)

    def evaluate_base(self) -> RunResult:
        _, result = self.run(None, "evaluate base model")
        if not result.ok:
            raise StudyFailed(f"evaluating the base model failed: {result.status}: {result.reason} "
                              f"(log: {self.paths.root / 'base'})")
        self.base = result
        return result

    # ------------------------------------------------------------------ the loop
    def search(self, trials: int | None = None) -> None:
        """The whole study (see the module docstring). SIGTERM (a preempted job) stops it as Ctrl-C does."""
        with sigterm_as_interrupt():
            self._prepare_and_search(trials)

    def _prepare_and_search(self, trials: int | None) -> None:
        check_space(self.paths, self.space)
        ctl = self.controller()  # opens storage early: a bad URL fails before any work
        for folder in [*self.paths.root.glob("*"), *self.paths.root.glob("*/*")]:  # workers of a killed controller
            if not folder_locked(folder):
                kill_orphan(folder)
        if self.suite.backend == "vllm-server":  # a missing vLLM fails now, not after the prepare job
            from autotune.evaluate.backends import make_backend

            make_backend(self.suite.backend, self.suite).check_installed()
        self.tracking = self._tracking_run()  # a tracker that cannot start fails now (exit 2), before any work
        status = "failed"
        try:
            self.prepare()
            with self.warm_engine() as engine:
                self._search(ctl, engine, trials)
            status = "ok"
        except (KeyboardInterrupt, Interrupted):
            status = "killed"
            raise
        finally:
            self.tracking.finish(status)

    def _tracking_run(self) -> StudyRun:
        """The study-level tracker run (``search.tracking``): its config is what the study searches and how."""
        spec = resolve_tracking(self.space.search.tracking, self.paths.root, self.space.name)
        space = self.space
        config = {"study": space.name, "study_dir": str(self.paths.root), "sampler": space.search.sampler,
                  "pruner": space.search.pruner, "trials": space.search.trials, "seed": space.search.seed,
                  "domains": ",".join(space.domains), "proxy.tokens": space.proxy.tokens,
                  "proxy.seq_len": space.proxy.seq_len, "proxy.batch_tokens": space.proxy.batch_tokens,
                  "objective": space.objective.model_dump_json(exclude_defaults=True), "suite": self.suite.name}
        return StudyRun(spec, space.name, config, file=space.source_file, warn=self.warn).start()

    @contextlib.contextmanager
    def warm_engine(self) -> Iterator[Any]:
        """The study's warm vLLM engine (``autotune.evaluate.vllm_engine.WarmEngine``) for a ``vllm-server``
        suite with ``vllm.warm`` on a launcher whose workers run on this machine; None otherwise."""
        from autotune.evaluate.backends import gpu_present

        env = getattr(self.launcher, "env", None)
        if self.suite.backend != "vllm-server" or not self.suite.vllm.warm or env is None:
            yield None
            return
        if gpu_present() and self.suite.vllm.kv_cache_memory is None:
            # a server sized by gpu_memory_utilization would hold most of the GPU the trials train on
            self.warn("vllm.warm: on a GPU, give the engine a size (vllm.kv_cache_memory, e.g. 4GiB, and a "
                     "gpu_memory_utilization that leaves room for training); each trial starts its own server")
            yield None
            return
        from autotune.evaluate.vllm_engine import WarmEngine

        engine = WarmEngine(self.suite.vllm, self.suite.batch_size, self.suite.seed.torch or 0, Path(self.prepared.base),
                            self.paths.root / "engine" / f"{socket.gethostname()}-{os.getpid()}")  # one per controller
        try:
            env[ENGINE_ENV] = engine.start().to_env()
            yield engine
        finally:
            env.pop(ENGINE_ENV, None)
            engine.stop()

    def _search(self, ctl, engine, trials: int | None) -> None:
        launcher_env = getattr(self.launcher, "env", {})
        self.evaluate_base()
        self._recover(ctl)
        if self.tracking.on:  # those finished before this session
            self.tracking.log_trials(ctl.study.get_trials(deepcopy=False))
        with folder_lock(self.paths.root / "prepare"):  # workers starting together enqueue the prior once
            ctl.enqueue_prior()
            self._retry_oom(ctl)
        budget = trials or self.space.search.trials
        overall = self.progress(f"study {self.space.name}")
        overall.update({"phase": "trials", "total": budget})
        overall.update({"advance": ctl.finished()})
        try:
            while ctl.finished() + ctl.running() < budget:
                asked = ctl.ask()
                if ctl.claimed_before(asked.number) >= budget:  # another worker took the last place first
                    ctl.tell_failed(asked.trial, "surplus", "the budget was filled by other workers", counts=False)
                    break
                if engine is not None:  # a server that a trial's weights broke is started again
                    launcher_env[ENGINE_ENV] = engine.ensure().to_env()
                try:
                    with ctl.heartbeat(asked.trial):
                        folder, result = self.run(asked.proposal, f"trial {asked.number}", self._rung_reporter(ctl, asked),
                                                  trial=asked.number)
                except Pruned as p:
                    ctl.tell_pruned(asked.trial, p.reason, {"rungs": p.rungs})
                    self.log(f"trial {asked.number} pruned: {p.reason}")
                    self.tracking.log_trial_of(ctl.storage, asked.trial)
                    overall.update({"advance": 1})
                    continue
                except KeyboardInterrupt as e:
                    signum = getattr(e, "signum", signal.SIGINT)  # autotune.procs.Terminated: SIGTERM
                    how = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                    ctl.tell_failed(asked.trial, "interrupted", f"stopped by {how}; rerun to resume", counts=False)
                    ctl.requeue(ctl.study.trials[asked.number])
                    raise Interrupted(signum) from None
                except Exception as e:
                    if isinstance(e, OutOfSpace) or is_disk_full(e):
                        self._leave_to_rerun(ctl, asked, f"out of disk space ({disk_full_reason(e)}); rerun to resume")
                    raise
                self._tell(ctl, asked.trial, folder, result)
                self.tracking.log_trial_of(ctl.storage, asked.trial)
                overall.update({"advance": 1})
                ctl.fail_lost_trials()
            # other workers may still be running the last trials: tables cover what is finished now
        finally:
            overall.close()
        self.write_tables(ctl)

    def _leave_to_rerun(self, ctl, asked, reason: str) -> None:
        """The trial stopped through no fault of its own: failed as interrupted (not counted) and asked again. A
        storage that cannot be written now (on the full disk) keeps it running: the next session recovers it
        (``_recover``: its controller is gone)."""
        try:
            ctl.tell_failed(asked.trial, "interrupted", reason, counts=False)
            ctl.requeue(ctl.study.trials[asked.number])
        except Exception as e:  # noqa: BLE001
            if not is_disk_full(e):
                raise

    def _retry_oom(self, ctl) -> None:
        """Trials that ran out of memory run again once the memory settings (``proxy.micro_batch_seqs``,
        ``search.launcher``'s memory_limit, sharding, kind, num_processes) differ from the ones they failed
        with; each retry takes its failed trial's place in the budget."""
        from optuna.trial import TrialState

        now = memory_settings(self.space.model_dump(mode="json"))
        for t in ctl.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.user_attrs.get(Attr.STATUS) == "oom" and t.user_attrs.get(Attr.MEMORY_SETTINGS, now) != now \
                    and ctl.retry(t):
                self.log(f"trial {t.number} ran out of memory with {t.user_attrs[Attr.MEMORY_SETTINGS]}: "
                         f"queued again with {now}")

    def _rung_reporter(self, ctl, asked) -> Callable[[dict], None]:
        """Progress-event hook: report each rung's bits-per-byte score; raise Pruned when the pruner says stop."""

        seen: list[dict] = []

        def on_event(event: dict) -> None:
            if "rung" not in event:
                return
            value = rung_value(self.space.objective, self.suite, event["metrics"], self.base.metrics)
            seen.append({**event, "value": value})
            asked.trial.set_user_attr(Attr.RUNGS, seen)
            if ctl.report_rung(asked.trial, event["tokens"], value):
                raise Pruned(f"pruned at rung {event['rung']} ({event['tokens']:,} tokens) by {self.space.search.pruner}: "
                             f"bits-per-byte score {value:+.4f}", seen)

        return on_event

    def _tell(self, ctl, trial, folder: Path, result: RunResult) -> None:
        attrs = {Attr.RUN_DIR: str(folder.relative_to(self.paths.root)), Attr.STATUS: result.status}
        if result.status == "oom":  # the settings it ran with (a recovered trial may be from an earlier session)
            job = folder / "job.json"
            try:
                ran = read_json(job)["space"] if job.exists() else None
            except (DamagedFile, KeyError, TypeError):  # a damaged job.json: the settings of this session
                ran = None
            attrs[Attr.MEMORY_SETTINGS] = memory_settings(ran if isinstance(ran, dict) else self.space.model_dump(mode="json"))
        if not result.ok:
            self.warn(f"trial {trial.number} {result.status}: {result.reason}")
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            frozen = ctl.study.trials[trial.number]
            # a crash may be transient (a killed or segfaulted worker): retried once; NaN, OOM, timeout are not
            retried = result.status == "crashed" and ctl.retry_once(frozen)
            ctl.tell_failed(trial, result.status, result.reason + (" (retried once)" if retried else ""))
            return
        s = score(self.space.objective, self.suite, result.metrics, self.base.metrics)
        k = self.space.objective.beyond_noise
        floor = self.noise(ctl).get("target") if k else None
        if floor is not None and not ctl.study.trials[trial.number].user_attrs.get(Attr.PRIOR):
            # feasible only if the target gain beats the seed noise of a difference of two runs
            need = k * math.sqrt(2.0) * floor.std
            s = dataclasses.replace(s, constraint=max(s.constraint if s.constraint is not None else -math.inf, need - s.target))
            attrs[Attr.NOISE_MARGIN] = need
        attrs.update({Attr.METRICS: result.metrics, Attr.FEASIBLE: s.feasible,
                      Attr.TOKENS_PER_S: result.train.get("tokens_per_s")})
        ctl.tell_score(trial, s, attrs)
        _log.info("trial %d complete: target %+.4f, general %+.4f, %s", trial.number, s.target, s.general,
                  "feasible" if s.feasible else "infeasible")

    def noise(self, ctl) -> dict:
        """Seed-noise statistics per metric (and of target / general) over the prior's finished replicates."""


        reps = [{**t.metrics, "target": t.target, "general": t.general} for t in self.rows(ctl)
                if t.state == "complete" and t.prior]
        return noise_floor(reps)

    def _recover(self, ctl) -> None:
        """Trials left RUNNING by a killed controller on this host: tell a finished run's result, rerun the rest.

        Trials of other machines are recovered by heartbeat (``Controller.fail_lost_trials``).
        """
        ctl.fail_lost_trials()
        for frozen in ctl.dead_owner_trials():
            proposal = frozen.user_attrs.get(Attr.PROPOSAL)
            trial = ctl.trial(frozen.number)
            if proposal is not None:
                folder = self.paths.trial_dir(self.run_key(Proposal.from_json(proposal)))
                done = _finished_result(folder / "result.json")
                if done is not None:
                    self._tell(ctl, trial, folder, done)
                    continue
            ctl.tell_failed(trial, "interrupted", "the controller stopped while this trial ran; rerun", counts=False)
            ctl.requeue(frozen)

    # ------------------------------------------------------------------ outputs
    def rows(self, ctl) -> list[TrialRecord]:
        """Every trial that counts (not queued, not an interrupted trial that was rerun), by number."""
        records = [TrialRecord.from_frozen(t) for t in ctl.study.get_trials(deepcopy=False)]
        return [r for r in records if r is not None]

    def write_tables(self, ctl) -> None:
        """``ratios.csv`` and ``metrics.csv`` (one row per finished run, as OLMix reads them), ``summary.json``."""
        from autotune.search.export import trial_frames

        frames = trial_frames(self, ctl)
        frames["ratios"].to_csv(self.paths.root / "ratios.csv", index=False, float_format="%.6f")
        frames["metrics"].to_csv(self.paths.root / "metrics.csv", index=False, float_format="%.6f")
        write_json_atomic(self.paths.root / "summary.json", {
            "base": self.base.metrics if self.base else {}, "trials": [t.to_row() for t in self.rows(ctl)],
            "noise": {k: v.to_json() for k, v in self.noise(ctl).items()},
            # where these trials live: a reader of a study whose storage moved must not trust an old study.db
            "storage": storage_record(self.storage or self.space.search.storage, self.paths.root)})


def _tee(first: Callable[[dict], None], second: Callable[[dict], None] | None) -> Callable[[dict], None]:
    if second is None:
        return first

    def both(event: dict) -> None:
        first(event)
        second(event)

    return both


class _LogBar:
    """The progress of a study run without a progress display (a Python caller): each job's phases, logged."""

    def __init__(self, label: str) -> None:
        self.label = label

    def update(self, event: dict) -> None:
        if "phase" in event:
            _log.info("%s: %s%s", self.label, event["phase"], f" ({event['total']})" if event.get("total") else "")

    def close(self) -> None:
        pass


def _tail(path: Path, n: int = 1) -> str:
    if not path.exists():
        return ""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-300:]

