"""The Optuna controller: the search space as distributions, ask/tell, samplers, storage, constraints.

Where the search meets Optuna (the study loop reads trial states through it; readers of a finished study
go through ``records.load_trials``). Proxy runs are slow external jobs, so this is ask/tell, never
``study.optimize`` with a callback: ``ask()`` returns a trial and its ``Proposal``; the study loop runs
it however it likes and comes back with ``tell_*``.

Mixture shares are not independent floats: the sampler sees K-1 coordinates ``mix.<domain>`` in [0, 1]
that ``SimplexMap`` turns into shares inside the bounds and floors (see ``autotune/search/simplex.py``).

What Optuna's own tools (optuna-dashboard, ``trials_dataframe``, the visualisations) show is what a user means:
every trial carries its shares as user attributes ``share.<domain>`` from the moment it is queued or asked,
the study names its objective values (``set_metric_names``), and a trial's constraint is stored where both
Optuna 5 and optuna-dashboard read it (``_set_constraint``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from autotune.config.space import FloatRange, SearchSpace
from autotune.errors import UserError
from autotune.objective import Score, directions, metric_names
from autotune.records import Attr, Proposal, digest
from autotune.redact import MASK, redact  # redact: also this module's for its importers
from autotune.search.simplex import SimplexMap

_SCHEDULE_FIELDS = ("kind", "peak_lr", "warmup_fraction", "decay_fraction", "final_lr_ratio", "decay_shape", "start_lr")


# A worker records a heartbeat for its running trial every search.heartbeat_s; a trial silent for
# search.grace_s is taken as lost (its machine died) by whichever worker notices first, failed, and retried
# once (Optuna's RetryHeartbeatStaleTrialCallback, see Controller._on_stale). Optuna's RDB storage implements
# the heartbeat; on a journal file, only dead owners on the same host are detected (by pid).


def worker_host() -> str:
    """This worker's host name; AUTOTUNE_HOST overrides it (containers that share one hostname)."""
    return os.environ.get("AUTOTUNE_HOST") or socket.gethostname()


def storage_spec(space: SearchSpace, study_dir: Path, override: str | None = None, *, make_dir: bool = True) -> str:
    """The storage URL the study opens (``sqlite``: ``runs/<name>/study.db``, its folder made unless
    ``make_dir`` is false). The real URL, password included: print it only through ``redact``."""
    s = override or space.search.storage
    if s == "sqlite":
        if make_dir:
            study_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{study_dir / 'study.db'}"
    return s


def open_storage(space: SearchSpace, study_dir: Path, override: str | None = None,
                 on_stale=None) -> optuna.storages.BaseStorage:
    s = storage_spec(space, study_dir, override)
    field = "--storage" if override else "search.storage"
    journal = check_storage_spec(space, s, field)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(journal)))
    kwargs = {"pool_pre_ping": True} if not s.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(s, engine_kwargs=kwargs, heartbeat_interval=space.search.heartbeat_s,
                                                  grace_period=space.search.grace_s, heartbeat_stale_trial_callback=on_stale)
        except Exception as e:  # noqa: BLE001  (driver errors vary: OperationalError, ArgumentError, ImportError ...)
            # workers starting together on a new database race to create Optuna's tables: the loser retries
            # (IntegrityError on a row, or SQLite's "table ... already exists" from a CREATE TABLE)
            raced = type(e).__name__ == "IntegrityError" or "already exists" in str(e)
            if not raced or attempt == 4:
                raise storage_error(e, s, space, field) from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def check_storage_spec(space: SearchSpace, spec: str, field: str) -> Path | None:
    """Refuse a storage spec that is neither a journal file in an existing folder nor a URL; the journal's
    path for ``journal:PATH``, else None."""
    if spec.startswith("journal:"):
        path = Path(spec.removeprefix("journal:")).expanduser()
        if not path.parent.is_dir():
            raise UserError("the journal file's folder does not exist", file=space.source_file, field=field, value=spec)
        return path
    if "://" not in spec:
        raise UserError("storage must be 'sqlite', an RDB URL (postgresql://...) or 'journal:PATH'",
                        file=space.source_file, field=field, value=redact(spec))
    return None


def storage_exists(space: SearchSpace, study_dir: Path, override: str | None = None) -> bool:
    """For readers (status, export), before anything is opened: whether the storage is there and holds
    Optuna's tables, checked without creating or migrating anything (opening an RDB storage creates its
    tables, connecting to SQLite creates the file). False only for the default ``runs/<name>/study.db``
    not made yet (no trial recorded); any other missing, empty or foreign storage is a ``UserError``."""
    s = storage_spec(space, study_dir, override, make_dir=False)
    field = "--storage" if override else "search.storage"

    def refuse(problem: str) -> UserError:
        return UserError(f"{problem}; `autotune search` creates a study, the readers only read one (check the URL)",
                         file=space.source_file, field=field, value=redact(s))

    if s.startswith("journal:"):
        path = Path(s.removeprefix("journal:")).expanduser()
        if not path.is_file() or path.stat().st_size == 0:
            raise refuse(f"the journal file {path} {'is empty' if path.is_file() else 'does not exist'}: it holds no study")
        return True
    if "://" not in s:
        raise UserError("storage must be 'sqlite', an RDB URL (postgresql://...) or 'journal:PATH'",
                        file=space.source_file, field=field, value=redact(s))
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        url = make_url(s)
        if url.get_backend_name() == "sqlite":
            path = Path(url.database or ":memory:")
            if not path.is_file():
                if (override or space.search.storage) == "sqlite":  # runs/<name>/study.db: not made yet
                    return False
                raise refuse(f"{path} does not exist: it holds no study")
            if path.stat().st_size == 0:
                raise UserError(f"{path} is empty (0 bytes): it holds no study (a full disk or a cut copy?); the trials "
                                "of the last finished search are in summary.json (autotune report reads them), or give "
                                "the study's storage with --storage", file=space.source_file, field=field, value=redact(s))
        engine = sqlalchemy.create_engine(s)  # imports the driver; connects on first use
        try:
            with engine.connect() as conn:
                tables = sqlalchemy.inspect(conn).get_table_names()
        finally:
            engine.dispose()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (driver errors vary: OperationalError, ArgumentError, ImportError ...)
        raise storage_error(e, s, space, field) from None
    if "studies" not in tables:
        raise refuse("this storage holds no Optuna study (no 'studies' table)")
    return True


# the pip package of each SQLAlchemy driver a storage URL may select
_DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "pg8000": "pg8000",
                    "mysqldb": "mysqlclient", "pymysql": "pymysql", "mysqlconnector": "mysql-connector-python",
                    "mariadbconnector": "mariadb", "oracledb": "oracledb", "cx_oracle": "cx_Oracle", "pyodbc": "pyodbc"}


def driver_hint(url: str) -> str:
    """What to install for the driver ``url`` selects, as SQLAlchemy resolves it: a bare ``postgresql://`` is
    psycopg 3 with SQLAlchemy 2.x (the ``[postgres]`` extra installs psycopg2: write ``postgresql+psycopg2://``),
    ``mysql://`` is mysqlclient."""
    import importlib.util

    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
        driver = u.get_dialect().driver
    except Exception:  # noqa: BLE001  (an unknown dialect: its own error says so)
        return ""
    hint = f" (the URL selects the driver {driver}: pip install {_DRIVER_PACKAGES.get(driver, driver)}"
    if u.get_backend_name() == "postgresql" and driver != "psycopg2" and importlib.util.find_spec("psycopg2"):
        hint += ", or write the URL as postgresql+psycopg2://... to use the installed psycopg2"
    return hint + ")"


def storage_error(e: Exception, url: str, space: SearchSpace, field: str) -> UserError:
    """An error opening (or parsing) the storage URL as one line: the driver's message, redacted, and what to
    install when the driver is missing."""
    first = redact(str(e).splitlines()[0][:200] if str(e) else "")
    hint = driver_hint(url) if isinstance(e, ImportError | ModuleNotFoundError) else ""
    if f":{MASK}@" in url and not hint:  # a space.yaml's copy of the URL: its password was never written
        hint = (" (this URL's password was redacted when the study folder was written: give the study's space file, "
                "or the URL with --storage)")
    return UserError(f"cannot open the study storage: {type(e).__name__}: {first}{hint}",
                     file=space.source_file, field=field, value=redact(url))


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial ``number`` of a study seeded ``search.seed``. Trial numbers are unique
    within a study (the storage hands them out), so concurrent workers never draw with the same seed, a
    resumed study draws with new ones, and a fresh study with the same space and seed draws the same
    proposals, on any host and in any process."""
    return int(digest([seed, number], 8), 16)


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler made anew for each trial, seeded by ``trial_seed(seed, trial.number)``; it delegates the
    sampler interface (``before_trial`` -> ``infer_relative_search_space`` / ``sample_relative`` /
    ``sample_independent`` -> ``after_trial``) to that trial's sampler. Everything a sampler learns from
    the study it reads from the storage, so a fresh instance per trial proposes what one long-lived
    instance would, minus the dependence on which process asks; the exception is GPSampler, whose in-process
    warm start of its kernel fit is lost between trials (its proposals are reproducible, but not those of
    one long-lived GPSampler). Optuna builds a Trial object (and so calls ``before_trial``) also to tell or
    set attributes on a trial; sampling happens within ``ask``, so that re-made sampler is never used."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._inner = make(trial_seed(seed, -1))

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._inner = self._make(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """The space's sampler, seeded per trial from ``seed`` (QMC: one scrambled sequence for the whole study,
    its points indexed by a counter in the storage, so it takes ``seed`` itself; Optuna does not update that
    counter atomically, so two workers asking at the same instant may draw the same QMC point)."""
    if space.search.sampler == "qmc":
        return _sampler(space, seed)
    return PerTrialSeed(lambda s: _sampler(space, s), seed)


def _sampler(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    s = space.search.sampler
    if s == "tpe":
        # multivariate: mixture coordinates interact; n_startup kept small since proxy runs are costly
        # constant liar: parallel workers see running trials as bad, so they do not all propose the same point
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=min(8, max(3, space.search.trials // 3)))
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(seed=seed, qmc_type="sobol", scramble=True)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if s == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise AssertionError(s)  # the spec admits only the names above


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    """Pruning over token rungs; resources are tokens trained, the first rung the minimum."""
    kind = space.search.pruner
    if kind == "none":
        return optuna.pruners.NopPruner()
    first = space.proxy.rung_steps[0] * space.proxy.seqs_per_step * space.proxy.seq_len
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=2)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=space.proxy.tokens, reduction_factor=2)
    raise AssertionError(kind)


@dataclass
class Asked:
    trial: optuna.Trial
    proposal: Proposal

    @property
    def number(self) -> int:
        return self.trial.number


class Controller:
    """Ask/tell over one Optuna study, resumable: the same space and storage reload the same study."""

    def __init__(self, space: SearchSpace, study_dir: Path, storage: str | None = None, *, create: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        """``create``: a search makes its study (and storage) when missing; a reader (``create=False``: status,
        export) only opens an existing one, and a storage that holds no such study is a ``UserError``. A
        reader of a study whose default study.db was never made sees no trials, with a note to ``log``."""
        self.space = space
        self.simplex = SimplexMap.from_space(space)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry_stale = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        field = "--storage" if storage else "search.storage"
        spec = storage_spec(space, study_dir, storage, make_dir=create)
        if create or storage_exists(space, study_dir, storage):
            self.storage = open_storage(space, study_dir, storage, on_stale=self._on_stale)
        else:
            (log or logging.getLogger(__name__).info)(f"no trial recorded yet: {study_dir / 'study.db'} does not exist (if this study's storage "
                           "is elsewhere, give it with --storage URL)")
            self.storage = optuna.storages.InMemoryStorage()
        if not create and not isinstance(self.storage, optuna.storages.InMemoryStorage):
            try:
                self.storage.get_study_id_from_name(space.name)
            except KeyError:
                raise UserError(f"this storage holds no study named {space.name!r}; `autotune search` creates it, the "
                                "readers only read one (check the URL and the space's name)",
                                file=space.source_file, field=field, value=redact(spec)) from None
        try:
            self.host, self.pid = worker_host(), os.getpid()
            self.study = optuna.create_study(
                study_name=space.name, storage=self.storage, load_if_exists=True,
                directions=directions(space.objective), sampler=optuna.samplers.RandomSampler(),
                pruner=make_pruner(space))
        except (optuna.exceptions.StorageInternalError, ValueError) as e:
            raise UserError(f"cannot open the study: {type(e).__name__}: {redact(str(e).splitlines()[0][:200])}",
                            file=space.source_file, field=field, value=redact(spec)) from None
        self.study.sampler = make_sampler(space, space.search.seed)
        names = metric_names(space.objective)
        if create and self.study.metric_names != names:  # a reader writes nothing
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(names)

    # ------------------------------------------------------------------ distributions
    def distributions(self) -> dict[str, Any]:
        d: dict[str, Any] = {f"mix.{n}": FloatDistribution(0.0, 1.0) for n in self.simplex.domains[:-1]}
        sched = self.space.schedule
        for name in _SCHEDULE_FIELDS:
            v = getattr(sched, name)
            if isinstance(v, FloatRange):
                d[f"schedule.{name}"] = FloatDistribution(v.low, v.high, log=v.log)
            elif isinstance(v, list):
                d[f"schedule.{name}"] = CategoricalDistribution(v)
        for name in ("seq_len", "rope_theta"):
            v = getattr(self.space.context, name)
            if isinstance(v, FloatRange):
                d[f"context.{name}"] = FloatDistribution(v.low, v.high, log=v.log)
            elif isinstance(v, list):
                d[f"context.{name}"] = CategoricalDistribution(v)
        return d

    def params_to_proposal(self, params: dict[str, Any], seed: int) -> Proposal:
        u = [params[f"mix.{n}"] for n in self.simplex.domains[:-1]]
        mixture = self.simplex.to_weights(u)
        sched = self.space.schedule
        schedule = {name: params.get(f"schedule.{name}", getattr(sched, name)) for name in _SCHEDULE_FIELDS}
        context = {name: params.get(f"context.{name}", getattr(self.space.context, name))
                   for name in ("seq_len", "rope_theta")}
        return Proposal(mixture=mixture, schedule=schedule, seed=seed,
                        context={k: v for k, v in context.items() if v is not None})

    def share_attrs(self, params: dict[str, Any]) -> dict[str, float]:
        """The user attributes ``share.<domain>`` of the mixture that ``params`` (the sampler's coordinates)
        stand for; empty while the coordinates are not all there."""
        u = [params.get(f"mix.{n}") for n in self.simplex.domains[:-1]]
        if any(x is None for x in u):
            return {}
        return {Attr.share(d): w for d, w in self.simplex.to_weights(u).items()}

    def prior_params(self) -> dict[str, Any]:
        """Optuna params of the prior mixture and the schedule ranges' centres (log-centre for log ranges)."""
        prior = self.space.mixture.prior
        u = self.simplex.to_unit(prior) if prior else [0.5] * self.simplex.dims
        params: dict[str, Any] = {f"mix.{n}": x for n, x in zip(self.simplex.domains[:-1], u, strict=True)}
        for name, dist in self.distributions().items():
            if name.startswith(("schedule.", "context.")):
                if isinstance(dist, CategoricalDistribution):
                    params[name] = dist.choices[0]
                elif dist.log:
                    params[name] = (dist.low * dist.high) ** 0.5
                else:
                    params[name] = (dist.low + dist.high) / 2
        return params

    # ------------------------------------------------------------------ ask / tell
    def enqueue_prior(self) -> None:
        """On a new study: the prior mixture first, once per replicate seed (the seed-noise floor)."""
        if self.study.trials:
            return
        params = self.prior_params()
        for k in range(self.space.proxy.replicates):
            self.study.enqueue_trial(params, user_attrs={**self.share_attrs(params), Attr.SEED: self.space.proxy.seed + k,
                                                         Attr.PRIOR: True})

    def enqueue_missing(self, items: list[tuple[dict[str, Any], dict[str, Any]]]) -> int:
        """Enqueue exact trials ``(params, user_attrs)`` (a ``seed`` among the attrs) unless one with the same
        params and seed is complete, running or waiting; the ladder re-runs chosen trials so. A study with
        trials skips ``enqueue_prior``. Returns the trial budget that runs every waiting trial."""
        needed = {f"mix.{n}" for n in self.simplex.domains[:-1]}

        def key(params: dict[str, Any], seed: Any) -> str | None:
            if not needed <= set(params):  # a trial still being asked (its params half written)
                return None
            seed = int(seed if seed is not None else self.space.proxy.seed)
            return digest(self.params_to_proposal(params, seed).key())

        live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        have = {key(t.system_attrs.get("fixed_params") or t.params, t.user_attrs.get(Attr.SEED))
                for t in self.study.get_trials(deepcopy=False, states=live)}
        for params, attrs in items:
            if key(params, attrs.get(Attr.SEED)) not in have:
                self.study.enqueue_trial(params, user_attrs={**self.share_attrs(params), **attrs})
                have.add(key(params, attrs.get(Attr.SEED)))
        waiting = len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        return self.finished() + self.running() + waiting

    def ask(self) -> Asked:
        with warnings.catch_warnings():
            # heartbeats are recorded by our own thread around each proxy run (ask/tell), not by optimize()
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            trial = self.study.ask(self.distributions())
        seed = int(trial.user_attrs.get(Attr.SEED, self.space.proxy.seed))
        proposal = self.params_to_proposal(trial.params, seed)
        trial.set_user_attr(Attr.PROPOSAL, proposal.to_json())
        trial.set_user_attr(Attr.OWNER, {"host": self.host, "pid": self.pid})
        have = trial.user_attrs  # a queued trial has its shares already
        for d, share in proposal.mixture.items():
            if have.get(Attr.share(d)) != share:
                trial.set_user_attr(Attr.share(d), share)
        return Asked(trial, proposal)

    def heartbeat(self, trial: optuna.Trial) -> Heartbeat:
        return Heartbeat(self.storage, trial._trial_id, self.space.search.heartbeat_s)

    def tell_score(self, trial: optuna.Trial, score: Score, attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr(Attr.TARGET, score.target)
        trial.set_user_attr(Attr.GENERAL, score.general)
        if score.constraint is not None:
            _set_constraint(trial, score.constraint)
        self.study.tell(trial, list(score.values))

    def report_rung(self, trial: optuna.Trial, tokens: int, value: float) -> bool:
        """Report a rung's intermediate value; True if the pruner says to stop the trial."""
        trial.report(value, step=tokens)
        return trial.should_prune()

    def tell_pruned(self, trial: optuna.Trial, reason: str, attrs: dict[str, Any]) -> None:
        for k, v in {**attrs, Attr.STATUS: "pruned", Attr.REASON: reason}.items():
            trial.set_user_attr(k, v)
        self.study.tell(trial, state=TrialState.PRUNED)

    def tell_failed(self, trial: optuna.Trial | int, status: str, reason: str, *, counts: bool = True) -> None:
        """A failed trial keeps its reason; ``counts=False`` (interrupted) does not use up the trial budget."""
        t = trial if isinstance(trial, optuna.Trial) else optuna.Trial(self.study, self._trial_id(trial))
        t.set_user_attr(Attr.STATUS, status)
        t.set_user_attr(Attr.REASON, reason)
        t.set_user_attr(Attr.COUNTS, counts)
        self.study.tell(t, state=TrialState.FAIL)

    def _trial_id(self, number: int) -> int:
        return self.study.trials[number]._trial_id

    # ------------------------------------------------------------------ bookkeeping
    def _counts(self, t: optuna.trial.FrozenTrial, retried: set[int]) -> bool:
        """Whether a trial holds a place in the budget: not waiting, not interrupted, not replaced by a retry."""
        if t.state == TrialState.WAITING:
            return False
        if t.state == TrialState.FAIL:
            return t.user_attrs.get(Attr.COUNTS, True) and t.number not in retried
        return True

    def _retried(self) -> set[int]:
        return {t.user_attrs[Attr.RETRY_OF] for t in self.study.get_trials(deepcopy=False) if Attr.RETRY_OF in t.user_attrs}

    def finished(self) -> int:
        """Trials that used up budget: complete, pruned, or failed for good (not interrupted, not retried)."""
        retried = self._retried()
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.state != TrialState.RUNNING and self._counts(t, retried))

    def running(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def claimed_before(self, number: int) -> int:
        """Trials numbered below ``number`` that hold a place in the budget (done, counting, or running)."""
        retried = self._retried()
        return sum(1 for t in self.study.get_trials(deepcopy=False) if t.number < number and self._counts(t, retried))

    def dead_owner_trials(self) -> list[optuna.trial.FrozenTrial]:
        """RUNNING trials whose controller ran on this host and is gone (killed): recoverable at once."""
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get(Attr.OWNER) or {}
            if owner.get("host") == self.host and owner.get("pid") != self.pid and not _alive(owner.get("pid")):
                out.append(t)
        return out

    def fail_lost_trials(self) -> None:
        """Trials whose heartbeat stopped on any machine: failed (reason recorded) and retried once."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def _on_stale(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """The storage's heartbeat-stale callback (``fail_lost_trials``): the lost trial, FAIL already, is queued
        again by Optuna's ``RetryHeartbeatStaleTrialCallback`` (which records ``failed_trial`` and
        ``retry_history``), once: not when the trial is itself a retry (of a crash, an OOM or a lost trial), as
        ``retry_once``. The retry carries what the trial was asked with (params, seed, prior, shares) and
        ``retry_of`` for autotune's readers, not what its run left (owner, proposal, rungs: written when asked)."""
        if frozen.user_attrs.get(Attr.RETRY_OF) is not None:
            return
        frozen.user_attrs = self._carried(frozen, (Attr.SEED, Attr.PRIOR)) | {Attr.RETRY_OF: frozen.number}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry_stale(study, frozen)

    def _carried(self, frozen: optuna.trial.FrozenTrial, keys: tuple[str, ...]) -> dict[str, Any]:
        """A queued copy's user attributes: ``keys`` of ``frozen``'s, and the shares of its params."""
        return {**self.share_attrs(frozen.params), **{k: v for k, v in frozen.user_attrs.items() if k in keys}}

    def retry_once(self, frozen: optuna.trial.FrozenTrial) -> bool:
        """Enqueue a failed trial's proposal again, unless it is itself a retry. True if enqueued."""
        if frozen.user_attrs.get(Attr.RETRY_OF) is not None:
            return False
        return self.retry(frozen)

    def retry(self, frozen: optuna.trial.FrozenTrial) -> bool:
        """Enqueue a failed trial's proposal again unless a retry of it exists (it may itself be a retry)."""
        if frozen.number in self._retried():
            return False
        attrs = self._carried(frozen, (Attr.SEED, Attr.PRIOR))
        self.study.enqueue_trial(frozen.params, user_attrs={**attrs, Attr.RETRY_OF: frozen.number})
        return True

    def requeue(self, frozen: optuna.trial.FrozenTrial) -> None:
        """Ask for an interrupted trial's exact proposal again, as the next trial (no retry limit)."""
        attrs = self._carried(frozen, (Attr.SEED, Attr.PRIOR, Attr.RETRY_OF))
        self.study.enqueue_trial(frozen.params, user_attrs=attrs)

    def trial(self, number: int) -> optuna.Trial:
        return optuna.Trial(self.study, self._trial_id(number))


def _set_constraint(trial: optuna.Trial, value: float) -> None:
    """Store a trial's constraint (<= 0: feasible) as the system attribute ``constraints``: ``[value]``, the layout
    Optuna 4 wrote and optuna-dashboard 0.21 reads (its plots mark infeasible trials from it; Optuna 5's
    ``Trial.set_constraint`` writes ``constraints:<name>``, which the dashboard does not see). Optuna 5 reads the
    list too (as constraint "0"): ``trial.constraints``, ``best_trial`` and the samplers see one constraint.
    Writing both layouts would give every trial two (infeasibility summed twice; GPSampler refuses a study whose
    trials disagree on the count, as those of older studies, with one, would)."""
    if math.isnan(value):
        raise ValueError(f"trial {trial.number}: a constraint value cannot be NaN")
    trial.storage.set_trial_system_attr(trial._trial_id, Attr.CONSTRAINTS, [float(value)])


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Heartbeat:
    """Records the trial's heartbeat on a thread while the trial runs (RDB storages; a no-op elsewhere)."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval_s: float) -> None:
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        # Optuna's RDB storage records heartbeats (and has its interval when they are on); not journal files
        self.enabled = isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001  (a storage hiccup must not kill the run; the next beat retries)
                logging.getLogger(__name__).warning("heartbeat failed for trial id %s", self.trial_id)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> Heartbeat:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
