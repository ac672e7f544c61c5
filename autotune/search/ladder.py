"""``autotune ladder SPACE``: re-run a study's prior and best trials at the space's ladder of proxy token
budgets, then check that the rungs rank the mixtures alike (``autotune.extrapolate.ladder``).

Each rung is a sub-study, ``runs/<study>/ladder/<study>-tokens-<N>/``, of the same space with
``proxy.tokens = N`` (no pruner), whose trials are exactly the chosen trials' parameters and seeds, enqueued
(``Controller.enqueue_missing``) and run by the ordinary ``Study`` loop: its storage, resumption, failure
handling and progress bars. The search's own ``proxy.tokens`` is one more rung, read from the study's
trials. ``runs/<study>/ladder/ladder.json`` lists the rungs and the mixtures; ``autotune extrapolate`` (and
this command, when the space has an ``extrapolate:`` section) put the analysis into recipe.yaml.

Run one ``autotune ladder`` per study at a time (two would both run the missing rungs' trials).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError
from rich.table import Table

from autotune.config.space import SearchSpace
from autotune.errors import UserError
from autotune.extrapolate.ladder import analyze, decision_metrics, higher_is_better
from autotune.extrapolate.study_data import load_ladder
from autotune.records import Attr, TrialRecord, write_json_atomic
from autotune.search.study import ProgressFactory, Study, read_trials, study_dir

LADDER_DIR = "ladder"


def choose_trials(trials: list[TrialRecord], maximize: str, top_k: int) -> list[TrialRecord]:
    """The prior (its first seed) and the ``top_k`` best other complete trials: feasible ones first, then by
    the maximised score (``target`` for a Pareto study)."""
    done = [t for t in trials if t.state == "complete" and getattr(t, maximize) is not None and t.mixture]
    prior = sorted((t for t in done if t.prior), key=lambda t: (t.seed or 0, t.number))[:1]
    others = sorted((t for t in done if not t.prior), key=lambda t: (t.feasible is not False, getattr(t, maximize)),
                    reverse=True)
    return prior + others[:top_k]


def rung_space(space: SearchSpace, tokens: int, trials: int) -> SearchSpace:
    """The space of the rung at ``tokens``: the same space, its own name and folder under the study's, no pruner."""
    data = space.model_dump(mode="json")
    data["name"] = f"{space.name}-tokens-{tokens}"
    data["proxy"]["tokens"] = tokens
    data["search"].update(trials=trials, pruner="none", runs_dir=str(study_dir(space) / LADDER_DIR))
    data["ladder"] = data["extrapolate"] = data["verify"] = None  # a rung is not laddered, extrapolated or verified
    try:
        return SearchSpace.model_validate({**data, "source_file": space.source_file})
    except ValidationError as e:
        first = e.errors()[0]
        raise UserError(f"the rung's space does not validate: {first['msg'].removeprefix('Value error, ')}",
                        file=space.source_file, field="ladder.tokens", value=tokens) from None


def trained_tokens(space: SearchSpace) -> int:
    """Tokens a proxy run of this space trains: whole steps of ``batch_tokens``."""
    p = space.proxy
    return p.steps * p.seqs_per_step * p.seq_len


def run_ladder(space: SearchSpace, *, storage: str | None = None, progress: ProgressFactory | None = None,
               log: Callable[[str], None] | None = None, allow_code_execution: bool = False) -> Path:
    """Run (or resume) the ladder of the study of ``space``; returns the path of ``ladder.json``. ``log``: where
    its messages go (default: the ``autotune.search.ladder`` logger, at INFO).

    Raises UserError when the space has no ``ladder`` section, its study has not run, has changed, or has
    fewer than two complete trials to compare."""
    from autotune.search.controller import Controller

    log = log or logging.getLogger(__name__).info
    spec = space.ladder
    if spec is None:
        raise UserError("the space has no ladder section; add e.g. `ladder: {tokens: [1.0e5, 1.0e6], top_k: 4}` "
                        "or give --set 'ladder={tokens: [1.0e5, 1.0e6]}'", file=space.source_file, field="ladder")
    root, trials = read_trials(space)
    summary_path = root / "summary.json"
    maximize = space.objective.maximize or "target"
    chosen = choose_trials(trials, maximize, spec.top_k)
    if len(chosen) < 2:
        raise UserError(f"the ladder compares at least 2 complete trials; this study has {len(chosen)}",
                        file=summary_path, field="trials")
    search_steps = space.proxy.steps
    new = [t for t in spec.tokens if rung_space(space, t, 1).proxy.steps != search_steps]
    if not new:
        raise UserError("the ladder needs a rung other than the search's own proxy.tokens", file=space.source_file,
                        field="ladder.tokens", value=spec.tokens)

    main = Controller(space, root, storage)
    items = []
    for t in chosen:
        frozen = main.study.trials[t.number]
        items.append((dict(frozen.params), {Attr.SEED: t.seed, Attr.LADDER_OF: t.number}))
    del main
    mixtures = [{"label": f"trial {t.number}", "trial": t.number, "prior": t.prior, "mixture": t.mixture,
                 "schedule": t.schedule, "seed": t.seed} for t in chosen]
    rungs = [{"tokens": trained_tokens(space), "requested": space.proxy.tokens, "dir": ".", "search": True}]
    bar = (progress or (lambda label: _Null()))(f"ladder {space.name}")
    bar.update({"phase": f"{len(new)} rungs x {len(chosen)} runs", "total": len(new)})
    try:
        for tokens in new:
            sub = rung_space(space, tokens, len(chosen))
            sub_root = study_dir(sub)
            ctl = Controller(sub, sub_root, storage)
            budget = ctl.enqueue_missing(items)
            todo = budget - ctl.finished()
            del ctl
            if todo > 0 or not (sub_root / "summary.json").exists():
                log(f"rung {tokens:,} tokens: {todo} of {len(chosen)} runs to do in {sub_root}")
                Study(sub, storage=storage, progress=progress, log=log,
                      allow_code_execution=allow_code_execution).search(budget)
            else:
                log(f"rung {tokens:,} tokens: all {len(chosen)} runs done ({sub_root})")
            rungs.append({"tokens": trained_tokens(sub), "requested": tokens,
                          "dir": str(sub_root.relative_to(root)), "search": False})
            bar.update({"advance": 1})
    finally:
        bar.close()
    out = root / LADDER_DIR / "ladder.json"
    write_json_atomic(out, {"version": 1, "study": space.name, "axis": "tokens", "top_k": spec.top_k,
                            "min_kendall": spec.min_kendall, "rungs": sorted(rungs, key=lambda r: r["tokens"]),
                            "mixtures": mixtures})
    return out


def ladder_report(space: SearchSpace) -> dict:
    """The ladder's analysis (``LadderSection`` as a dict) for the study of ``space``, extrapolated to the
    space's ``extrapolate.tokens`` when it has that section."""

    data = load_ladder(study_dir(space))
    if data is None:
        raise UserError("this study has no ladder yet: run autotune ladder", file=space.source_file, field="ladder")
    target = None
    if space.extrapolate is not None:  # as the recipe rounds it: whole steps of the full run's batch
        batch = space.extrapolate.batch_tokens or space.proxy.batch_tokens
        target = int(space.extrapolate.tokens // batch) * batch
    return analyze(data.tokens, data.mixtures, data.values, {m: higher_is_better(m) for m in data.values},
                   decision=decision_metrics(space.objective), target_tokens=target, min_kendall=data.min_kendall,
                   noise_std=data.noise_std, search_rung=data.search_rung)


def print_ladder(console, section: dict, *, metrics_shown: int = 12) -> None:
    """The ladder as two tables (decision metrics' values per rung; rank agreement per metric) and its warnings."""

    rungs = section["rungs"]
    decision = [m for m, v in section["metrics"].items() if v["decision"]]
    for metric in decision:
        rec = section["metrics"][metric]
        table = Table(title=f"ladder: {metric} per mixture at each rung (tokens per run)"
                            + (" and extrapolated" if rec["extrapolated"] else ""))
        table.add_column("mixture")
        for t in rungs:
            table.add_column(f"{t:,}" + (" (search)" if t == section["search_rung"] else ""), justify="right")
        if rec["extrapolated"]:
            table.add_column(f"{section['target_tokens']:.3g} (extrapolated)", justify="right")
        for mix in section["mixtures"]:
            label = mix["label"] + (" (prior)" if mix["prior"] else "")
            cells = [_num(v) for v in rec["values"][mix["label"]]]
            if rec["extrapolated"]:
                cells.append(_num(rec["extrapolated"][mix["label"]]))
            table.add_row(label, *cells)
        console.print(table)
    table = Table(title="ladder: rank agreement between rungs (Kendall tau / Spearman rho; * = decides the study)")
    table.add_column("metric")
    pairs = section["metrics"][next(iter(section["metrics"]))]["pairs"] if section["metrics"] else []
    for p in pairs:
        table.add_column(f"{_short(p['a'])}->{_short(p['b'])}", justify="right")
    table.add_column("alpha", justify="right")
    table.add_column("best at each rung")
    ordered = decision + [m for m in section["metrics"] if m not in decision]
    for metric in ordered[:metrics_shown]:
        rec = section["metrics"][metric]
        cells = [f"{_num(p['kendall'], '.2f')} / {_num(p['spearman'], '.2f')}" for p in rec["pairs"]]
        cells += [""] * (len(pairs) - len(cells))
        fit = rec["fit"]
        alpha = "-" if fit is None else f"{fit['alpha']:.3g}{'' if fit['method'] == 'shared_alpha' else ' (fixed)'}"
        best = " | ".join(str(v) for v in rec["best"].values())
        table.add_row(metric + (" *" if rec["decision"] else ""), *cells, alpha, best,
                      style=None if rec["agree"] or not rec["decision"] else "bold red")
    console.print(table)
    if section["warnings"]:
        for w in section["warnings"]:
            console.print(f"[bold red]{w}[/]", highlight=False)
    else:
        console.print(f"[green]ladder: the rungs agree[/] on {', '.join(decision)} (Kendall tau >= "
                      f"{section['min_kendall']:g}, same best mixture)", highlight=False)


def _num(v: float | None, spec: str = "+.4f") -> str:
    return "-" if v is None else format(v, spec)


def _short(t: int | str) -> str:
    if isinstance(t, str):
        return "extrap."
    return f"{t / 1e6:.3g}M" if t >= 1e6 else f"{t / 1e3:.3g}K" if t >= 1e3 else str(t)


class _Null:
    def update(self, event: dict) -> None:
        pass

    def close(self) -> None:
        pass
