"""Experiment trackers (``search.tracking``), through accelerate's tracker classes.

Two kinds of tracker run, both off by default:

* one per trial, in its worker (``trial_run``): the training curves at each logged step (``train/loss``,
  ``train/loss.<domain>``, ``train/lr``, ``train/tokens``, ``train/tokens_per_s``), each rung's held-out
  bits-per-byte (``rung/bpb.<domain>``) and the final evaluation (``eval/<metric>``), at the step of
  optimizer updates done; its config holds the trial's shares (``share.<domain>``), schedule
  (``schedule.<name>``), seed, study and trial number. Named ``<study>-trial-<number>``.
* one per study session, in the controller (``StudyRun``, named ``<study>-study``): per finished trial, at
  step = the trial number, its shares, numeric schedule values, scores (``target``, ``general``,
  ``objective`` or ``objective/<i>``, ``constraint``, ``feasible``), state and metrics. A resumed session's run
  first logs the trials finished before it, so the latest run shows the whole study.

Life cycle of a run: ``log(values, step)`` any number of times, then ``finish(status)`` once. Both are
methods of ``Tracker``; ``NullTracker`` is the tracker of a study without one.

Failure policy. A tracker that cannot start (its package missing, wandb without a login, a folder that
cannot be written, a server that does not answer) stops the study before any work, with one line naming
``search.tracking.kind`` (exit 2): the study's own run starts first, in ``Study.search``. In a worker (where
the study's run already started, so the tracker works), a tracker that fails later warns once, in the
worker's log and on the controller's console, and goes quiet: a proxy run is never lost to its logging.

MLflow: logged through ``MlflowClient`` on the run's id (``_MlflowRun``), not accelerate's ``MLflowTracker``,
which sets MLflow's process-wide tracking URI and keeps its run as the active run: a Python caller's own
MLflow URI, active run and ``mlflow.log_*`` calls stay as they were (a caller's active run in the same store
becomes our run's parent). The file store (``file:`` URIs) is in maintenance mode in MLflow 3 and refused
unless ``MLFLOW_ALLOW_FILE_STORE`` is set: with a ``file:`` URI it is ``true`` during each call of ours when it
is unset, and unset again after. The default store is ``sqlite:///<study folder>/mlflow.db``. The other kinds
go through accelerate's trackers, which need accelerate's ``PartialState`` (made once, process-wide; wandb and
trackio keep their own current run too).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from autotune.config.run import Tracking
from autotune.errors import UserError

_log = logging.getLogger(__name__)

# kind -> (accelerate.tracking's class, the module it imports, the package that brings it)
TRACKERS = {"mlflow": ("MLflowTracker", "mlflow", "mlflow-skinny"),
            "tensorboard": ("TensorBoardTracker", "tensorboard", "tensorboard"),
            "wandb": ("WandBTracker", "wandb", "wandb"),
            "trackio": ("TrackioTracker", "trackio", "trackio")}


class Tracker(Protocol):
    """One tracker run: ``log`` values (numbers; others are dropped) at a step, then ``finish`` once with the
    run's status (``ok``, or a failure: ``failed``, ``oom``, ``killed``, ...)."""

    def log(self, values: Mapping[str, Any], step: int) -> None: ...
    def finish(self, status: str = "ok") -> None: ...


class NullTracker:
    """The tracker of a study without ``search.tracking``."""

    def log(self, values: Mapping[str, Any], step: int) -> None:
        pass

    def finish(self, status: str = "ok") -> None:
        pass


class TrackerUnavailable(Exception):
    """A tracker that cannot start: a missing package, a login, a folder, a server."""


# ----------------------------------------------------------------------------------------------- resolving
def resolve(spec: Tracking | None, study_root: Path, study_name: str) -> Tracking | None:
    """``spec`` with what a worker needs wherever it runs: the project (default: the study's name), the
    MLflow URI (default: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<study>/mlflow.db``) and the TensorBoard
    folder (default: ``<study>/tensorboard``) absolute; a relative path is relative to the working directory
    (like ``search.runs_dir``)."""
    if spec is None:
        return None
    update: dict[str, Any] = {"project": spec.project or study_name}
    if spec.kind == "mlflow":
        uri = spec.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{study_root / 'mlflow.db'}"
        if "://" not in uri and not uri.startswith("file:"):  # a plain path: MLflow's file store there
            uri = Path(uri).expanduser().resolve().as_uri()
        update["uri"] = uri
    if spec.kind == "tensorboard" or spec.dir is not None:
        update["dir"] = str(Path(spec.dir).expanduser().resolve()) if spec.dir else str(study_root / "tensorboard")
    return spec.model_copy(update=update)


def where(spec: Tracking) -> str:
    """Where a resolved spec's runs go, for messages."""
    return {"mlflow": f"MLflow at {spec.uri}", "tensorboard": f"TensorBoard files in {spec.dir}"}.get(
        spec.kind, f"{spec.kind} project {spec.project}")


# ----------------------------------------------------------------------------------------------- starting
def _start(spec: Tracking, run_name: str, config: Mapping[str, Any], tags: Mapping[str, str]):
    """An accelerate tracker of ``spec.kind``, started, with ``config`` stored; raises TrackerUnavailable."""
    cls_name, module, package = TRACKERS[spec.kind]
    if importlib.util.find_spec(module) is None:
        extra = " (or pip install 'autotune[tracking]')" if spec.kind in ("mlflow", "tensorboard") else ""
        raise TrackerUnavailable(f"needs the {package} package: pip install {package}{extra}")
    try:
        if spec.kind == "mlflow":  # (no accelerate: see the module docstring)
            tracker = _MlflowRun(spec.uri, spec.project, run_name, tags)
            tracker.start()
            tracker.store_init_configuration(_config(config))
            return tracker
        from accelerate import tracking
        from accelerate.state import PartialState

        PartialState()  # accelerate's trackers log through its logger, which needs its state (one process here)
        if spec.kind == "tensorboard":
            Path(spec.dir).mkdir(parents=True, exist_ok=True)
            tracker = tracking.TensorBoardTracker(run_name, spec.dir, **spec.options)
        elif spec.kind == "wandb":  # (the user's options win)
            tracker = tracking.WandBTracker(spec.project, **{"name": run_name, "group": tags.get("autotune.study"),
                                                             "tags": list(tags.values()),
                                                             **({"dir": spec.dir} if spec.dir else {}), **spec.options})
        else:
            tracker = getattr(tracking, cls_name)(spec.project, **{"name": run_name, **spec.options})
        tracker.start()
        tracker.store_init_configuration(_config(config))
        return tracker
    except TrackerUnavailable:
        raise
    except Exception as e:  # noqa: BLE001  (whatever the library raises: a login, a folder, a server)
        raise TrackerUnavailable(_first_line(e)) from e


class _MlflowRun:
    """One MLflow run through ``MlflowClient`` on its run id, with the methods of accelerate's trackers that
    ``_start`` and ``_Run`` use; it sets nothing of MLflow's process-wide state (the module docstring)."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str]) -> None:
        self.uri, self.experiment, self.run_name, self.tags = uri, experiment, run_name, dict(tags)
        self.client = self.run_id = None

    @contextlib.contextmanager
    def _store(self):
        """MLflow 3 opens a file store only with ``MLFLOW_ALLOW_FILE_STORE``: set during the call when unset."""
        if not self.uri.startswith("file:") or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
            yield
            return
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        try:
            yield
        finally:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)

    def start(self) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        with self._store():
            self.client = MlflowClient(self.uri)
            exp = self.client.get_experiment_by_name(self.experiment)
            try:
                exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment, tags=self.tags)
            except MlflowException:  # another worker created it first
                exp = self.client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
            tags = dict(self.tags)
            caller = mlflow.active_run()  # a caller's run in this store: ours is its child, as mlflow nests runs
            if caller is not None and mlflow.get_tracking_uri() == self.uri:
                tags[MLFLOW_PARENT_RUN_ID] = caller.info.run_id
            try:
                from mlflow.tracking.context.registry import resolve_tags

                tags = resolve_tags(tags)  # source, user, git commit: what mlflow.start_run records
            except Exception:  # noqa: BLE001  (context detection is optional)
                pass
            self.run_id = self.client.create_run(exp_id, tags=tags, run_name=self.run_name).info.run_id

    def store_init_configuration(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        params = [Param(k, str(v)) for k, v in values.items() if len(str(v)) <= MAX_PARAM_VAL_LENGTH]
        with self._store():
            for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])

    def log(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = get_current_time_millis()
        metrics = [Metric(k, float(v), now, int(step)) for k, v in values.items()]
        with self._store():
            for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])

    def finish(self, status: str = "ok") -> None:
        state = "FINISHED" if status == "ok" else "KILLED" if status in ("killed", "interrupted", "pruned") else "FAILED"
        with self._store():
            self.client.set_terminated(self.run_id, state)


def _config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's config as every tracker takes it: flat names, numbers / strings / booleans, no None."""
    return {_name(k): v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items() if v is not None}


def _name(key: str) -> str:
    """A metric or parameter name every tracker takes: letters, digits and ``_-. `` (MLflow's), one ``/``
    after the group (``eval/bpb/math`` -> ``eval/bpb.math``: MLflow's file store keeps a metric as a file, so
    no name may be another's folder; TensorBoard groups by the part before the ``/``)."""
    group, _, rest = re.sub(r"[^\w\-./ ]", "_", str(key)).strip("/").partition("/")
    rest = re.sub(r"/+", ".", rest.strip("/"))
    return f"{group}/{rest}" if group and rest else (group or rest or "_")


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[_name(k)] = v
    return out


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _Run:
    """A started accelerate tracker; a failure after the start warns once (``warn``) and turns it off."""

    def __init__(self, tracker, spec: Tracking, warn: Callable[[str], None]) -> None:
        self.tracker, self.spec, self.warn = tracker, spec, warn

    def log(self, values: Mapping[str, Any], step: int) -> None:
        numbers = _numbers(values)
        if self.tracker is None or not numbers:
            return
        try:
            self.tracker.log(numbers, step=step)
        except Exception as e:  # noqa: BLE001
            self._off("could not log", e)

    def finish(self, status: str = "ok") -> None:
        if self.tracker is None:
            return
        tracker, self.tracker = self.tracker, None
        try:
            if isinstance(tracker, _MlflowRun):
                tracker.finish(status)
            else:
                tracker.finish()
        except Exception as e:  # noqa: BLE001
            self.tracker = tracker
            self._off("could not finish its run", e)

    def _off(self, what: str, e: BaseException) -> None:
        self.tracker = None
        self.warn(f"search.tracking ({self.spec.kind}) {what}: {_first_line(e)}; this run goes on untracked")


# ----------------------------------------------------------------------------------------------- trial runs
def trial_config(study: str, trial: int | None, run_dir: str, proposal, steps: int, seq_len: int) -> dict[str, Any]:
    """A trial's tracker config: its shares, schedule, seed, context, study, number and run folder."""
    return {"study": study, "trial": trial, "run_dir": run_dir, "seed": proposal.seed, "steps": steps,
            "seq_len": seq_len, **{f"share.{d}": v for d, v in proposal.mixture.items()},
            **{f"schedule.{k}": v for k, v in proposal.schedule.items()},
            **{f"context.{k}": v for k, v in proposal.context.items()}}


def trial_run(spec: Tracking | None, study: str, trial: int | None, config: Mapping[str, Any],
              warn: Callable[[str], None]) -> Tracker:
    """The tracker run of one trial (in its worker's main process); a NullTracker without ``search.tracking``
    or when the tracker cannot start here (``warn`` says why: the study's own run started, so this is this
    machine's trouble, and the trial goes on untracked)."""
    if spec is None:
        return NullTracker()
    name = f"{study}-trial-{trial}" if trial is not None else f"{study}-{config.get('run_dir', 'run')}"
    try:
        tracker = _start(spec, name, config, {"autotune.study": study, "autotune.kind": "trial"})
    except TrackerUnavailable as e:
        warn(f"search.tracking ({spec.kind}) could not start this trial's run: {e}; the trial goes on untracked")
        return NullTracker()
    return _Run(tracker, spec, warn)


class Every:
    """``tracker``'s ``log`` for the training curves: only the steps (updates done) that the trainer's own rule
    keeps for every ``n``-th (``autotune.train.trainer.log_due``: the first, every ``n``-th, the ``last``)."""

    def __init__(self, tracker: Tracker, n: int, last: int) -> None:
        from autotune.train.trainer import log_due  # (torch: a worker's, which trains)

        self.tracker, self.n, self.last, self.due = tracker, n, last, log_due

    def log(self, values: Mapping[str, Any], step: int) -> None:
        if self.due(step, self.n, self.last):
            self.tracker.log(values, step)


def warn_to_stderr(message: str) -> None:
    """A warning in this process's log (the worker's: the trial's ``worker.log``)."""
    _log.warning("autotune: warning: %s", message)


# ----------------------------------------------------------------------------------------------- the study run
class StudyRun:
    """The study-level tracker run of one controller session (see the module docstring); with ``spec`` None
    (no ``search.tracking``) it logs nothing. ``start`` raises a ``UserError`` naming ``search.tracking.kind``
    when the tracker cannot start."""

    def __init__(self, spec: Tracking | None, study: str, config: Mapping[str, Any] | None = None, *,
                 file: str | None = None, warn: Callable[[str], None] = warn_to_stderr) -> None:
        self.spec, self.study, self.config, self.file, self.warn = spec, study, config or {}, file, warn
        self.run: Tracker = NullTracker()
        self.logged: set[int] = set()

    def start(self) -> StudyRun:
        if self.spec is None:
            return self
        try:
            tracker = _start(self.spec, f"{self.study}-study", self.config,
                             {"autotune.study": self.study, "autotune.kind": "study"})
        except TrackerUnavailable as e:
            raise UserError(f"the experiment tracker cannot start ({where(self.spec)}): {e}; fix it, or remove "
                            "search.tracking to run untracked", file=self.file, field="search.tracking.kind",
                            value=self.spec.kind) from None
        self.run = _Run(tracker, self.spec, self.warn)
        return self

    def log_trial(self, frozen) -> None:
        """A finished trial (an Optuna ``FrozenTrial``), once per session; running or queued trials wait."""
        from autotune.records import Attr, TrialRecord

        if self.spec is None:
            return
        record = TrialRecord.from_frozen(frozen)
        if record is None or record.state not in ("complete", "pruned", "fail") or record.number in self.logged:
            return
        self.logged.add(record.number)
        values: dict[str, Any] = {**{f"share.{d}": v for d, v in record.mixture.items()},
                                  **{f"schedule.{k}": v for k, v in record.schedule.items()},
                                  "complete": record.state == "complete", "pruned": record.state == "pruned",
                                  "failed": record.state == "fail", "prior": record.prior}
        if record.complete:
            objective = list(frozen.values or [])
            values.update({"target": record.target, "general": record.general, "feasible": record.feasible,
                           "constraint": record.constraint,
                           "train_tokens_per_s": frozen.user_attrs.get(Attr.TOKENS_PER_S),
                           **({"objective": objective[0]} if len(objective) == 1 else
                              {f"objective/{i}": v for i, v in enumerate(objective)}),
                           **{f"metrics/{k}": v for k, v in record.metrics.items()}})
        self.run.log(values, step=record.number)

    @property
    def on(self) -> bool:
        """Whether this study has a tracker (``search.tracking``): nothing is read for it otherwise."""
        return self.spec is not None

    def log_trial_of(self, storage, trial) -> None:
        """``trial`` (an Optuna ``Trial``) once it finished, read alone from ``storage``; nothing without a tracker."""
        if self.on:
            self.log_trial(storage.get_trial(trial._trial_id))

    def log_trials(self, trials) -> None:
        for t in trials:
            self.log_trial(t)

    def finish(self, status: str = "ok") -> None:
        self.run.finish(status)

