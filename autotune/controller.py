"""The Optuna controller: the search space as distributions, ask/tell, samplers, storage, constraints.

The only module that imports optuna. Proxy runs are slow external jobs, so this is ask/tell, never
``study.optimize`` with a callback: ``ask()`` returns a trial and its ``Proposal``; the study loop runs
it however it likes and comes back with ``tell_*``.

Mixture shares are not independent floats: the sampler sees K-1 coordinates ``mix.<domain>`` in [0, 1]
that ``SimplexMap`` turns into shares inside the bounds and floors (see ``autotune/simplex.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from autotune.errors import UserError
from autotune.objective import Score, directions
from autotune.records import Proposal
from autotune.simplex import SimplexMap
from autotune.spec import FloatRange, SearchSpace

_SCHEDULE_FIELDS = ("kind", "peak_lr", "warmup_fraction", "decay_fraction", "final_lr_ratio")


def storage_url(space: SearchSpace, study_dir: Path) -> str | optuna.storages.BaseStorage:
    s = space.search.storage
    if s == "sqlite":
        return f"sqlite:///{study_dir / 'study.db'}"
    if s.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(s.removeprefix("journal:")).expanduser()
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" in s:
        return s
    raise UserError("storage must be 'sqlite', an RDB URL (postgresql://...) or 'journal:PATH'",
                    file=space.source_file, field="search.storage", value=s)


def redact(url: str) -> str:
    """A storage URL without its password, for printing."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def make_sampler(space: SearchSpace, n_existing: int = 0) -> optuna.samplers.BaseSampler:
    """The space's sampler, seeded with ``seed + n_existing``: deterministic given the study's state, and a
    resumed study does not replay the random draws of its first session (that would repeat proposals)."""
    s, seed = space.search.sampler, space.search.seed + n_existing
    if s == "tpe":
        # multivariate: mixture coordinates interact; n_startup kept small since proxy runs are costly
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(8, max(3, space.search.trials // 3)))
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, qmc_type="sobol", scramble=True)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if s == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise AssertionError(s)  # the spec admits only the names above


@dataclass
class Asked:
    trial: optuna.Trial
    proposal: Proposal

    @property
    def number(self) -> int:
        return self.trial.number


class Controller:
    """Ask/tell over one Optuna study, resumable: the same space and storage reload the same study."""

    def __init__(self, space: SearchSpace, study_dir: Path) -> None:
        self.space = space
        self.simplex = SimplexMap.from_space(space)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = storage_url(space, study_dir)
        try:
            self.study = optuna.create_study(
                study_name=space.name, storage=storage, load_if_exists=True,
                directions=directions(space.objective), sampler=make_sampler(space))
            if self.study.trials:
                self.study.sampler = make_sampler(space, len(self.study.trials))
        except (optuna.exceptions.StorageInternalError, ValueError, ImportError) as e:
            shown = redact(storage) if isinstance(storage, str) else space.search.storage
            raise UserError(f"cannot open the study storage: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                            file=space.source_file, field="search.storage", value=redact(shown)) from None
        logging.getLogger("optuna").setLevel(logging.WARNING)

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
        return d

    def params_to_proposal(self, params: dict[str, Any], seed: int) -> Proposal:
        u = [params[f"mix.{n}"] for n in self.simplex.domains[:-1]]
        mixture = self.simplex.to_weights(u)
        sched = self.space.schedule
        schedule = {name: params.get(f"schedule.{name}", getattr(sched, name)) for name in _SCHEDULE_FIELDS}
        return Proposal(mixture=mixture, schedule=schedule, seed=seed)

    def prior_params(self) -> dict[str, Any]:
        """Optuna params of the prior mixture and the schedule ranges' centres (log-centre for log ranges)."""
        prior = self.space.mixture.prior
        u = self.simplex.to_unit(prior) if prior else [0.5] * self.simplex.dims
        params: dict[str, Any] = {f"mix.{n}": x for n, x in zip(self.simplex.domains[:-1], u, strict=True)}
        for name, dist in self.distributions().items():
            if name.startswith("schedule."):
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
        for k in range(self.space.proxy.replicates):
            self.study.enqueue_trial(self.prior_params(), user_attrs={"seed": self.space.proxy.seed + k, "prior": True})

    def ask(self) -> Asked:
        trial = self.study.ask(self.distributions())
        seed = int(trial.user_attrs.get("seed", self.space.proxy.seed))
        proposal = self.params_to_proposal(trial.params, seed)
        trial.set_user_attr("proposal", proposal.to_json())
        return Asked(trial, proposal)

    def tell_score(self, trial: optuna.Trial, score: Score, attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("target", score.target)
        trial.set_user_attr("general", score.general)
        if score.constraint is not None:
            trial.set_constraint("general_retention", score.constraint)
        self.study.tell(trial, list(score.values))

    def tell_failed(self, trial: optuna.Trial | int, status: str, reason: str, *, counts: bool = True) -> None:
        """A failed trial keeps its reason; ``counts=False`` (interrupted) does not use up the trial budget."""
        t = trial if isinstance(trial, optuna.Trial) else optuna.Trial(self.study, self._trial_id(trial))
        t.set_user_attr("status", status)
        t.set_user_attr("reason", reason)
        t.set_user_attr("counts", counts)
        self.study.tell(t, state=TrialState.FAIL)

    def _trial_id(self, number: int) -> int:
        return self.study.trials[number]._trial_id

    # ------------------------------------------------------------------ bookkeeping
    def finished(self) -> int:
        """Trials that used up budget: complete, pruned, or failed on their own (not interrupted)."""
        n = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                n += 1
            elif t.state == TrialState.FAIL and t.user_attrs.get("counts", True):
                n += 1
        return n

    def stale_running(self) -> list[optuna.trial.FrozenTrial]:
        """RUNNING trials left by a controller that was killed (one controller per study for now)."""
        return self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    def requeue(self, frozen: optuna.trial.FrozenTrial) -> None:
        """Ask for an interrupted trial's exact proposal again, as the next trial."""
        attrs = {k: v for k, v in frozen.user_attrs.items() if k in ("seed", "prior")}
        self.study.enqueue_trial(frozen.params, user_attrs=attrs)

    def trial(self, number: int) -> optuna.Trial:
        return optuna.Trial(self.study, self._trial_id(number))
