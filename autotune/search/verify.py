"""``autotune verify SPACE``: train recipe.yaml's recommended mixture and schedule, and baselines, as complete
proxy runs at ``verify.tokens_factor`` x ``proxy.tokens`` with ``verify.seeds`` seeds each, then test whether
the recommendation beats each baseline beyond the seed noise (``autotune.extrapolate.verify``).

The runs are one sub-study, ``runs/<study>/verify/<study>-verify-tokens-<N>-<digest of its schedule fields>/``, of the same space with
``proxy.tokens = N``, no pruner, bounds and floors opened to the whole simplex (a baseline such as uniform may
lie outside them) and each schedule field widened to the values the candidates use; its trials are exactly
the candidates x seeds, enqueued (``Controller.enqueue_missing``) and run by the ordinary ``Study`` loop: its
storage, content-addressed run folders, resumption, failure handling and progress bars.
``runs/<study>/verify/verify.json`` lists the candidates (as the sub-study runs them) and the seeds; the
analysis goes into recipe.yaml's ``verification`` (and ``autotune extrapolate`` keeps it while the
recommendation is the one verified).

Run one ``autotune verify`` per study at a time (two would both run the missing trials).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autotune.config.identity import proposal_key
from autotune.config.space import SearchSpace, Verify
from autotune.errors import UserError
from autotune.extrapolate.verify import VERIFY_DIR, VERIFY_MANIFEST
from autotune.records import TrialRecord, digest, write_json_atomic
from autotune.search.study import ProgressFactory, Study, StudyPaths, check_space, read_trials, study_dir

SCHEDULE_FIELDS = ("kind", "peak_lr", "warmup_fraction", "decay_fraction", "final_lr_ratio", "decay_shape")
_CHOICE_FIELDS = ("kind", "decay_shape")
LABELS = {"recommended": "recommended", "prior": "prior", "best_trial": "best trial", "uniform": "uniform",
          "natural": "natural", "target_only": "target-only at floor"}


def spec_of(space: SearchSpace) -> Verify:
    """The space's ``verify:`` section, or its defaults."""
    return space.verify or Verify()


def verify_tokens(space: SearchSpace) -> int:
    return int(round(space.proxy.tokens * spec_of(space).tokens_factor))


# ----------------------------------------------------------------------------------------------- candidates
def recommended(recipe, space: SearchSpace, trials: list[TrialRecord] | None = None) -> dict[str, Any]:
    """recipe.yaml's mixture and its schedule, in the proposal's fields (the proxy's fractions of steps): the
    Multi-Power Law's best candidate, or (``chosen_by: best_trial``) the best trial's own decay fraction,
    not the full run's rounded plan."""
    s = recipe.schedule
    best = s.candidates[0] if s.chosen_by == "multi_power_law" and s.candidates else None
    shape = (best.decay_shape if best else s.decay_shape) or _fixed(space.schedule.decay_shape, "linear")
    decay = float(best.decay_fraction) if best else None
    if decay is None:
        number = recipe.provenance.best_trial.get("trial")
        own = next((t.schedule for t in trials or [] if t.number == number), {})
        raw = own.get("decay_fraction", _fixed(space.schedule.decay_fraction, s.decay_fraction))
        decay = float(getattr(raw, "low", raw))  # a searched range the trial did not record: its low end
    schedule = {"kind": s.kind, "peak_lr": float(s.peak_lr), "warmup_fraction": float(s.warmup_fraction),
                "decay_fraction": decay, "final_lr_ratio": float(s.final_lr_ratio), "decay_shape": shape}
    return {"kind": "recommended", "mixture": {d: float(p.share) for d, p in recipe.domains.items()},
            "schedule": schedule, "trial": None, "context": {}}


def _fixed(value: Any, default: Any) -> Any:
    return value[0] if isinstance(value, list) else value if value is not None else default


def natural_mixture(space: SearchSpace) -> dict[str, float] | None:
    """``verify.natural``, else shares proportional to ``extrapolate.available_tokens`` when it names every domain."""
    spec = spec_of(space)
    if spec.natural is not None:
        return dict(spec.natural)
    avail = dict(space.extrapolate.available_tokens) if space.extrapolate else {}
    if set(avail) != set(space.domains):
        return None
    total = sum(avail.values())
    return {d: avail[d] / total for d in space.domains}


def target_only(space: SearchSpace) -> dict[str, float]:
    """The general role at its floor (the larger of ``mixture.floors.general`` and its domains' minimums),
    split over the general domains by their minimums (equally when those are 0); the target domains share the
    rest equally."""
    general = [d for d, v in space.domains.items() if v.role == "general"]
    target = [d for d, v in space.domains.items() if v.role == "target"]
    mins = {d: space.bounds(d).min for d in general}
    floor = max(space.mixture.floors.get("general", 0.0), sum(mins.values()))
    if not target:
        floor = 1.0
    out = {}
    total_min = sum(mins.values())
    for d in general:
        out[d] = floor * (mins[d] / total_min if total_min > 0 else 1.0 / len(general))
    for d in target:
        out[d] = (1.0 - floor) / len(target)
    return {d: out[d] for d in space.domains}


def choose_candidates(space: SearchSpace, trials: list[TrialRecord], recipe) -> tuple[list[dict], list[str]]:
    """The recommendation, then the baselines of ``verify.baselines`` (each once: a baseline equal to an earlier
    candidate is dropped); and notes on the baselines left out."""
    spec = spec_of(space)
    maximize = space.objective.maximize or "target"
    rec = recommended(recipe, space, trials)
    done = [t for t in trials if t.complete and t.mixture]
    prior = sorted((t for t in done if t.prior), key=lambda t: (t.seed or 0, t.number))[:1]
    others = sorted((t for t in done if not t.prior), key=lambda t: (t.feasible is not False, getattr(t, maximize)),
                    reverse=True)
    best_context = (others or prior or [None])[0]
    out, notes = [rec], []
    for kind in spec.baselines:
        if kind in ("prior", "best_trial"):
            pick = prior if kind == "prior" else others[:1]
            if not pick:
                notes.append(f"{LABELS[kind]}: the study has no complete {'prior' if kind == 'prior' else 'other'} trial")
                continue
            t = pick[0]
            out.append({"kind": kind, "mixture": dict(t.mixture), "schedule": _schedule_of(t.schedule, space),
                        "trial": t.number, "context": dict(t.context)})
            continue
        if kind == "uniform":
            mix = {d: 1.0 / len(space.domains) for d in space.domains}
        elif kind == "natural":
            mix = natural_mixture(space)
            if mix is None:
                notes.append("natural: no verify.natural and extrapolate.available_tokens does not name every domain")
                continue
        else:
            mix = target_only(space)
        out.append({"kind": kind, "mixture": mix, "schedule": dict(rec["schedule"]), "trial": None,
                    "context": dict(best_context.context) if best_context else {}})
    rec["context"] = dict(best_context.context) if best_context else {}
    unique, seen = [], {}
    for c in out:
        key = repr(proposal_key(c["mixture"], c["schedule"], 0, c["context"] or None))
        if key in seen:
            notes.append(f"{_label(c)}: the same mixture and schedule as {seen[key]}; run once")
            continue
        c["label"] = _label(c)
        seen[key] = c["label"]
        unique.append(c)
    return unique, notes


def _label(c: dict) -> str:
    return LABELS[c["kind"]] + (f" (trial {c['trial']})" if c.get("trial") is not None else "")


def _schedule_of(s: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """A trial's schedule in the proposal's fields; one an older study did not record takes the space's value
    (a fixed one, the first choice, or a range's low end)."""
    out = {}
    for k in SCHEDULE_FIELDS:
        if s.get(k) is not None:
            out[k] = s[k]
        else:
            v = _fixed(getattr(space.schedule, k), None)
            out[k] = getattr(v, "low", v)
    return out


# ----------------------------------------------------------------------------------------------- the sub-study
def verify_space(space: SearchSpace, tokens: int, candidates: list[dict], trials: int) -> SearchSpace:
    """The sub-study's space: the study's at ``tokens`` per run, its own name and folder, no pruner, the whole
    simplex, and each schedule field fixed or widened to exactly the values the candidates use."""
    data = space.model_dump(mode="json")
    data["proxy"]["tokens"] = tokens
    data["proxy"]["rungs"] = None  # no pruner reads them
    data["search"].update(trials=trials, pruner="none", runs_dir=str(study_dir(space) / VERIFY_DIR))
    data["ladder"] = data["extrapolate"] = data["verify"] = None
    data["mixture"]["bounds"] = {}
    data["mixture"]["floors"] = {}
    for name in SCHEDULE_FIELDS:
        values = [c["schedule"][name] for c in candidates if c["schedule"].get(name) is not None]
        if not values:
            continue
        distinct = sorted(set(values), key=str)
        if len(distinct) == 1:
            data["schedule"][name] = distinct[0]
        elif name in _CHOICE_FIELDS:
            data["schedule"][name] = distinct
        else:
            old = getattr(space.schedule, name)
            lo, hi = float(min(values)), float(max(values))
            data["schedule"][name] = {"low": lo, "high": hi, "log": bool(getattr(old, "log", False) and lo > 0)}
    # the schedule fields key the sub-study's identity: other candidate values (a re-extrapolated recipe,
    # other baselines) get their own sub-study instead of a refused resume
    data["name"] = f"{space.name}-verify-tokens-{tokens}-{digest(data['schedule'])[:8]}"
    try:
        return SearchSpace.model_validate({**data, "source_file": space.source_file})
    except ValidationError as e:
        first = e.errors()[0]
        raise UserError(f"the verification's space does not validate: {first['msg'].removeprefix('Value error, ')}",
                        file=space.source_file, field="verify", value=space.verify) from None


def _params(ctl, c: dict) -> dict[str, Any]:
    """The sub-study's Optuna params that stand for candidate ``c``."""
    domains = ctl.simplex.domains
    u = ctl.simplex.to_unit(c["mixture"])
    params: dict[str, Any] = {f"mix.{n}": x for n, x in zip(domains[:-1], u, strict=True)}
    for name in ctl.distributions():
        if name.startswith("schedule."):
            params[name] = c["schedule"][name.removeprefix("schedule.")]
        elif name.startswith("context."):
            key = name.removeprefix("context.")
            if key not in c["context"]:
                raise UserError(f"the space searches context.{key} but no trial carries a value to verify with",
                                field=f"context.{key}")
            params[name] = c["context"][key]
    return params


def run_verify(space: SearchSpace, *, storage: str | None = None, progress: ProgressFactory | None = None,
               log: Callable[[str], None] | None = None, allow_code_execution: bool = False) -> Path:
    """Run (or resume) the verification of the study of ``space``; returns the path of ``verify.json``.

    Raises UserError when the study has not run, has changed, or has no recipe.yaml (the recommendation)."""
    from autotune.extrapolate.recipe_model import load_recipe
    from autotune.search.controller import Controller

    log = log or logging.getLogger(__name__).info
    spec = spec_of(space)
    root, trials = read_trials(space)
    recipe_path = root / "recipe.yaml"
    if not recipe_path.exists():
        how = (f"autotune extrapolate {root}" if space.extrapolate is not None else
               f"autotune extrapolate {root} --tokens N (or add an extrapolate: section to the space)")
        raise UserError(f"the study has no recipe.yaml to verify: run {how} first", file=recipe_path)
    recipe = load_recipe(recipe_path)
    if set(recipe.domains) != set(space.domains):
        raise UserError(f"recipe.yaml's domains {sorted(recipe.domains)} are not the space's {sorted(space.domains)}; "
                        "run autotune extrapolate again", file=recipe_path, field="domains")
    candidates, notes = choose_candidates(space, trials, recipe)
    for n in notes:
        log(f"verify: {n}")
    tokens = verify_tokens(space)
    seeds = [space.proxy.seed + k for k in range(spec.seeds)]
    sub = verify_space(space, tokens, candidates, len(candidates) * len(seeds))
    sub_root = study_dir(sub)
    check_space(StudyPaths(sub_root), sub)  # before anything is enqueued or written
    ctl = Controller(sub, sub_root, storage)
    items, listed = [], []
    for c in candidates:
        params = _params(ctl, c)
        prop = ctl.params_to_proposal(params, seeds[0])  # what the sub-study runs: its mixture and schedule
        listed.append({"label": c["label"], "kind": c["kind"], "trial": c["trial"], "mixture": prop.mixture,
                       "schedule": prop.schedule, "context": prop.context, "requested_mixture": c["mixture"]})
        items += [(params, {"seed": s}) for s in seeds]
    budget = ctl.enqueue_missing(items)
    todo = budget - ctl.finished()
    del ctl
    manifest = {"version": 1, "study": space.name, "tokens": tokens, "proxy_tokens": int(space.proxy.tokens),
                "trained_tokens": sub.proxy.steps * sub.proxy.seqs_per_step * sub.proxy.seq_len,
                "tokens_factor": spec.tokens_factor, "seeds": seeds, "alpha": spec.alpha,
                "dir": str(sub_root.relative_to(root)), "candidates": listed, "notes": notes}
    out = root / VERIFY_MANIFEST
    write_json_atomic(out, manifest)  # before the runs: an interrupted verification is read back as it stands
    if todo > 0:
        log(f"verify: {todo} of {len(items)} runs to do ({len(candidates)} mixtures x {len(seeds)} seeds, "
            f"{manifest['trained_tokens']:,} tokens each) in {sub_root}")
    else:
        log(f"verify: all {len(items)} runs done ({sub_root})")
    # also with nothing to run: the session writes the sub-study's tables afresh
    Study(sub, storage=storage, progress=progress, log=log, allow_code_execution=allow_code_execution).search(budget)
    return out


# ----------------------------------------------------------------------------------------------- the result
def attach_verification(space: SearchSpace, *, command: str | None = None):
    """The ``Verification`` of the study of ``space``, written into its recipe.yaml (whose recommendation it
    verified); returns it. The recipe's models are refitted (same folds and seed) to predict every candidate."""
    from autotune.extrapolate.recipe import predict_mixtures
    from autotune.extrapolate.recipe_model import load_recipe, write_recipe
    from autotune.extrapolate.verify import section_for

    root = study_dir(space)
    path = root / "recipe.yaml"
    recipe = load_recipe(path)
    section, warnings = section_for(root, space, {d: p.share for d, p in recipe.domains.items()},
                                    {"kind": recipe.schedule.kind, "peak_lr": recipe.schedule.peak_lr},
                                    lambda points: predict_mixtures(root, points))
    if section is None:
        raise UserError(warnings[0] if warnings else "no verification to attach: run autotune verify", file=path)
    data = recipe.model_dump(mode="json")
    data["verification"] = section.model_dump(mode="json")
    data["warnings"] = [w for w in data["warnings"] if not w.startswith(("verify.json verified another",
                                                                         "the verification was left out"))]
    write_recipe(data, path, command=command)
    return section


def print_verification(console, v) -> None:
    """The verification as two tables (per candidate: realised mean and seed spread, predicted with interval;
    the paired tests on the two group scores) and its summary line."""
    from rich.table import Table

    from autotune.extrapolate.recipe_model import tokens_text

    table = Table(title=f"verify: {len(v.candidates)} mixtures x {len(v.seeds)} seeds, realised {v.scale}; "
                        f"predicted {v.predicted_scale}")
    table.add_column("rank", justify="right")
    table.add_column("mixture")
    table.add_column("shares")
    for g in ("target", "general"):
        table.add_column(f"{g} mean ± sd", justify="right")
        table.add_column(f"{g} predicted [interval]", justify="right")
    order = {label: i + 1 for i, label in enumerate(v.ranking)}
    for c in sorted(v.candidates, key=lambda c: order[c.label]):
        cells = [str(order[c.label]), c.label + ("" if c.inside_space else " (outside the space)")
                 + (" (infeasible)" if c.feasible is False else ""),
                 " ".join(f"{d[:4]} {w:.2f}" for d, w in c.mixture.items())]
        for g in ("target", "general"):
            m, sd = c.mean.get(g), c.spread.get(g)
            cells.append("-" if m is None else f"{m:+.4f} ± {sd:.4f}" if sd is not None else f"{m:+.4f}")
            p = c.predicted.get(g)
            cells.append("-" if p is None else f"{p.value:+.4f} [{_n(p.low)}, {_n(p.high)}]")
        table.add_row(*cells, style="bold" if c.kind == "recommended" else None)
    console.print(table)
    tests = Table(title=f"verify: recommendation minus each baseline, paired over seeds (one-sided, alpha {v.alpha:g}; "
                        "seed noise pooled over every mixture)")
    tests.add_column("baseline")
    for g in ("target", "general"):
        tests.add_column(f"{g} diff ± se", justify="right")
        tests.add_column(f"{g} p / verdict", justify="right")
    baselines = [c.label for c in v.candidates if c.kind != "recommended"]
    by = {(c.baseline, c.metric): c for c in v.comparisons}
    for b in baselines:
        cells = [b]
        for g in ("target", "general"):
            c = by.get((b, g))
            if c is None or c.diff is None:
                cells += ["-", "not tested"]
                continue
            cells.append(f"{c.diff:+.4f} ± {_n(c.se, '.4f')}")
            cells.append(f"{_n(c.p_better, '.3f')} {c.verdict}")
        tests.add_row(*cells)
    console.print(tests)
    noise = ", ".join(f"{g} {_n(v.seed_noise.get(g), '.4f')}" for g in ("target", "general"))
    rho = ", ".join(f"{g} {_n(v.rank_agreement.get(g), '.2f')}" for g in ("target", "general"))
    console.print(f"seed noise (pooled sd): {noise}; predicted vs realised rank agreement (Spearman): {rho}",
                  highlight=False)
    if v.coverage is None:
        console.print(f"intervals not checked: they are of proxy-scale scores ({tokens_text(v.proxy_tokens)} tokens), "
                      f"the runs trained {tokens_text(v.tokens)}", highlight=False)
    else:
        cov = ", ".join(f"{g} {c['inside']} of {c['n']} inside the {c['level']:.0%} intervals"
                        for g, c in v.coverage.items())
        console.print(f"coverage: {cov}", highlight=False)
    style = "green" if v.wins else "bold yellow"
    console.print(f"[{style}]verify:[/] {v.summary}", highlight=False)


def _n(x: float | None, spec: str = "+.4f") -> str:
    return "-" if x is None else format(x, spec)
