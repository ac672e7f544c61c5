"""``autotune search SPACE --dry-run``: build every stage's configuration a study would build, train nothing.

Each stage is built by the code the study runs, not by a copy of it: the ``Study`` (suite, launcher), the
harness's task plan and the suite's backend, the storage URL (parsed, its driver imported, never
connected), the ``Controller`` (sampler, pruner, distributions) over an in-memory storage asked for the
prior proposals and one sampled proposal, the trainer's ``TrainConfig`` and learning rates of each, the
objective on made-up metrics, the ladder's rung spaces and the recipe's input checks. Nothing is written:
no study folder, no ``study.db``. Whatever ``autotune validate`` accepts must pass here, with
``--allow-code-execution`` where validate notes that the suite runs code, which ``search`` refuses without
it (``tests/test_faults_validation.py`` holds the two to that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from autotune.config.space import SearchSpace
from autotune.errors import UserError

IN_MEMORY = "sqlite:///:memory:"  # the Controller's storage in a dry run: Optuna's tables, in memory only


@dataclass
class Plan:
    """What a dry run built, as lines to print, and warnings the study would print at the same stage."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def dry_run(space: SearchSpace, *, storage: str | None = None, trials: int | None = None,
            allow_code_execution: bool = False) -> Plan:
    """Build every stage of a study of ``space``; raises ``UserError`` where a stage refuses its input.

    A suite that runs code is refused without ``allow_code_execution``, as ``autotune search`` refuses it,
    and before the suite's backend is checked (that runs the suite's ``vllm.python``)."""
    from autotune.evaluate.suite import require_code_permission
    from autotune.search.study import Study, study_dir

    plan = Plan()
    study = Study(space, storage=storage, allow_code_execution=allow_code_execution)  # the suite, the launcher
    require_code_permission(study.suite, allow_code_execution)
    plan.lines.append(f"study {space.name} in {study_dir(space)} ({trials or space.search.trials} trials; "
                      f"launcher {type(study.launcher).__name__})")
    plan.lines.append(_suite(study, allow_code_execution))
    plan.lines.append(f"storage {_storage(space, storage)}")
    proposals, line = _proposals(space)
    plan.lines.append(line)
    plan.lines.extend(_trainer(space, p, label) for label, p in proposals)
    plan.lines.append(_objective(space, study.suite))
    if space.ladder is not None:
        plan.lines.append(_ladder(space))
    if space.extrapolate is not None:
        plan.lines.append(_extrapolation(space, plan.warnings))
    if space.verify is not None:
        plan.lines.append(_verify(space))
    return plan


def _suite(study, allow_code_execution: bool) -> str:
    """The checks the harness makes before it runs a suite (``harness._plan``) and the suite's backend."""
    from autotune.evaluate.backends import make_backend
    from autotune.evaluate.harness import EvalOptions
    from autotune.evaluate.harness import _plan as task_runs  # the harness's own plan of the lm-eval runs

    suite = study.suite
    runs = task_runs(suite, EvalOptions(allow_code_execution=allow_code_execution))
    backend = make_backend(suite.backend, suite)
    if suite.backend == "vllm-server":  # as Study.search: a missing vLLM fails before any work
        backend.check_installed()
    return (f"suite {suite.name}: {len(suite.target)} target, {len(suite.general)} general, {len(suite.report)} "
            f"report entries; {len(runs)} lm-eval runs and {len(suite.bpb_entries)} bits-per-byte entries on {suite.backend}")


def _storage(space: SearchSpace, override: str | None) -> str:
    """The storage ``open_storage`` would open, checked as far as can be without creating or connecting to
    it: sqlite's file, a journal's folder, an RDB URL parsed and its driver imported (SQLAlchemy's
    ``create_engine`` connects only on first use)."""
    from autotune.search.controller import check_storage_spec, redact, storage_error
    from autotune.search.study import study_dir

    spec = override or space.search.storage
    where = "--storage" if override else "search.storage"
    if spec == "sqlite":
        return f"sqlite {study_dir(space) / 'study.db'} (not created)"
    journal = check_storage_spec(space, spec, where)  # open_storage's own checks
    if journal is not None:
        return f"journal {journal}"
    import sqlalchemy

    try:
        sqlalchemy.create_engine(spec).dispose()
    except Exception as e:  # noqa: BLE001  (ArgumentError, NoSuchModuleError, ImportError of the driver ...)
        raise storage_error(e, spec, space, where) from None
    return f"{redact(spec)} (not connected)"


def _proposals(space: SearchSpace) -> tuple[list[tuple[str, object]], str]:
    """The study's Controller over an in-memory storage: its prior proposals (one per replicate), then one
    proposal drawn by the sampler from the distributions."""
    from autotune.search.controller import Controller

    ctl = Controller(space, Path("/nonexistent-dry-run"), IN_MEMORY)  # no sqlite: nothing made there
    ctl.enqueue_prior()
    asked = [ctl.ask() for _ in range(space.proxy.replicates + 1)]
    out = [(f"prior (seed {a.proposal.seed})", a.proposal) for a in asked[:-1]] + [("sampled", asked[-1].proposal)]
    dists = ", ".join(sorted(ctl.distributions()))
    directions = "/".join(d.name.lower() for d in ctl.study.directions)
    return out, f"sampler {space.search.sampler}, pruner {space.search.pruner}, {directions}; searched: {dists}"


def _trainer(space: SearchSpace, proposal, label: str) -> str:
    """The worker's ``TrainConfig`` of a proposal, and its learning rate at the first, warmup's last and last step."""
    from autotune.search.worker import train_config
    from autotune.train.schedules import lr_at

    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    try:
        cfg = train_config(space, proposal, None, cuda)
    except ValueError as e:
        raise UserError(f"the trainer refuses the {label} proposal: {e}", file=space.source_file) from None
    steps = cfg.steps
    points = sorted({0, min(steps - 1, round(cfg.schedule.warmup_fraction * steps)), steps - 1})
    lrs = [lr_at(s, steps, cfg.schedule) for s in points]
    if not all(math.isfinite(x) and x >= 0 for x in lrs):
        raise UserError(f"the {label} proposal's learning rate is not a finite number at steps {points}: {lrs}",
                        file=space.source_file, field="schedule")
    mix = ", ".join(f"{d} {w:.3f}" for d, w in proposal.mixture.items())
    start = " (start_lr: base, read at prepare)" if proposal.schedule.get("start_lr") == "base" else ""
    return (f"trainer, {label}: {steps} steps of {cfg.seqs_per_step} x {cfg.seq_len} tokens, {cfg.precision}, "
            f"{cfg.schedule.kind} peak_lr {cfg.schedule.peak_lr:.3g}{start}; mixture {mix}")


def _objective(space: SearchSpace, suite) -> str:
    """The objective on made-up metrics (each entry 0.1 better than the base): finite, or a setting breaks it."""
    from autotune.objective import rung_value, score

    base = {e.key: 0.5 for e in suite.entries}
    metrics = {e.key: 0.5 + (0.1 if e.higher_is_better else -0.1) for e in suite.entries}
    s = score(space.objective, suite, metrics, base)
    values = [s.target, s.general, *s.values, *([s.constraint] if s.constraint is not None else [])]
    if space.proxy.rungs:
        values.append(rung_value(space.objective, suite, metrics, base))
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"the objective is not a finite number on made-up metrics ({values}): check the weights",
                        file=suite.source_file)
    return f"objective: target {s.target:+.3f}, general {s.general:+.3f} on made-up gains of 0.1 per entry"


def _ladder(space: SearchSpace) -> str:
    """Each rung's space, as ``autotune ladder`` builds it."""
    from autotune.search.ladder import rung_space

    rungs = [rung_space(space, t, space.ladder.top_k + space.proxy.replicates) for t in space.ladder.tokens]
    return f"ladder: {len(rungs)} rungs ({', '.join(f'{r.proxy.steps} steps' for r in rungs)}), top_k {space.ladder.top_k}"


def _verify(space: SearchSpace) -> str:
    """The verification's sub-study space, as ``autotune verify`` builds it (here on the prior mixture and the
    schedule ranges' lower ends; the real candidates come from recipe.yaml and the trials)."""
    from autotune.search.verify import SCHEDULE_FIELDS, spec_of, verify_space, verify_tokens

    spec = spec_of(space)
    schedule = {}
    for name in SCHEDULE_FIELDS:
        v = getattr(space.schedule, name)
        schedule[name] = v[0] if isinstance(v, list) else getattr(v, "low", v)
    prior = space.mixture.prior or {d: 1 / len(space.domains) for d in space.domains}
    sub = verify_space(space, verify_tokens(space), [{"mixture": prior, "schedule": schedule}], 1)
    n = 1 + len(spec.baselines)
    return (f"verify (autotune verify, after the recipe): up to {n} mixtures x {spec.seeds} seeds at "
            f"{sub.proxy.tokens:,} tokens ({sub.proxy.steps} steps) each")


def _extrapolation(space: SearchSpace, warnings: list[str]) -> str:
    """The checks ``build_recipe`` makes before it reads the trials, on the space's ``extrapolate:`` section.
    A recipe that cannot keep every domain under 16 epochs is a warning, as at the end of a search."""
    from autotune.extrapolate.recipe import _check_inputs, _search_region

    spec = space.extrapolate
    batch_tokens = int(spec.batch_tokens or space.proxy.batch_tokens)
    available = {k: float(v) for k, v in spec.available_tokens.items()}
    try:
        _check_inputs(SimpleNamespace(space=space, name=space.name), spec.tokens, available, spec.max_epochs, batch_tokens)
    except UserError as e:
        raise UserError(e.problem, file=space.source_file, field=f"extrapolate.{e.field}", value=e.value) from None
    run_tokens = int(spec.tokens // batch_tokens) * batch_tokens
    try:
        warnings.extend(_search_region(space, run_tokens, available, spec.max_epochs, force=False).warnings)
    except UserError as e:
        warnings.append(f"recipe.yaml would not be written: {e.problem}")
    return f"extrapolation: {run_tokens:,} tokens in {run_tokens // batch_tokens:,} steps of {batch_tokens:,}"
