"""``autotune gate CHECKPOINT --suite FILE --baseline BASELINE``: the CI regression gate on checkpoints.

Evaluates the checkpoint (through the evaluator and its cache, as ``autotune eval``), reads per-document
values from the sample logs, and compares each suite entry with the baseline's by a paired bootstrap
(``autotune/gate.py`` has the statistics). BASELINE is a file written by ``--write-baseline`` or another
checkpoint folder (evaluated the same way). Every bad input is found before any evaluation starts.

Exit codes: 0 pass (or baseline written), 1 regression, 2 bad input (one line naming file, field and
value; a baseline that is not comparable is bad input), 3 an evaluation failed, 130 interrupted.
Outputs with ``-o DIR``: ``gate.md`` (for a PR comment or ``$GITHUB_STEP_SUMMARY``), ``junit.xml`` (one
test case per entry), ``gate.json``, and the evaluations' sample logs under ``checkpoint/`` (and
``baseline/``).

Wiring into ``autotune/cli.py``::

    from autotune.cli.gate import gate_cmd
    app.command("gate")(gate_cmd)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from autotune.errors import UserError

EXIT_PASS, EXIT_REGRESSION, EXIT_BAD_INPUT, EXIT_EVAL_FAILED = 0, 1, 2, 3


class EvalFailed(Exception):
    """An evaluation crashed (model load, lm-eval, a model server): exit 3."""


@dataclass
class GateArgs:
    """The command's inputs, as given (``gate_command`` checks them)."""

    checkpoint: Path
    suite: Path
    baseline: Path | None = None
    write_baseline: Path | None = None
    force: bool = False
    config: Path | None = None
    tolerance: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    confidence: float | None = None
    resamples: int | None = None
    output: Path | None = None
    json_out: bool = False
    backend: str | None = None
    space: Path | None = None
    allow_code_execution: bool = False
    no_cache: bool = False


def gate_command(args: GateArgs, console: Console | None = None, err_console: Console | None = None) -> int:
    """Run the gate; returns the exit code (see the module docstring)."""
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    err = err_console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    try:
        return _gate(args, console, err)
    except UserError as e:  # escape: a field such as entries[demo_math_mc/acc] is not rich markup
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except EvalFailed as e:
        err.print(f"[bold red]error:[/] evaluation failed: {escape(str(e))}", highlight=False, soft_wrap=True)
        return EXIT_EVAL_FAILED
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished tasks stay cached; nothing was compared.")
        return 130


# ----------------------------------------------------------------------------------------------- the run
@dataclass
class _Plan:
    """The checked inputs: what is evaluated, against what, and how it is decided."""

    suite: Any
    space: Any
    config: Any  # GateConfig
    rules: list[Any]  # list[Rule]: CLI --tolerance rules first, then the config file's
    baseline_doc: dict[str, Any] | None  # None: --write-baseline, or a baseline checkpoint folder


def _gate(args: GateArgs, console: Console, err: Console) -> int:
    from autotune.gate.compare import check_comparable, compare

    plan = _check_inputs(args)
    with tempfile.TemporaryDirectory(prefix="autotune-gate-") as tmp:
        out_root = args.output if args.output is not None else Path(tmp)
        current = _evaluate_snapshot(args, args.checkpoint, out_root / "checkpoint", plan, err)
        if args.write_baseline is not None:
            _write_baseline(args.write_baseline, current, console, err)
            return EXIT_PASS
        baseline_doc = plan.baseline_doc
        if baseline_doc is None:
            baseline_doc = _evaluate_snapshot(args, args.baseline, out_root / "baseline", plan, err)
        check_comparable(baseline_doc, current, file=args.baseline)
        verdicts = compare(baseline_doc, current, plan.config, plan.rules, file=args.baseline)
    report = _report(args, plan.config, plan.suite, baseline_doc, current, verdicts)
    if args.output is not None:
        from autotune.records import write_json_atomic

        args.output.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.output / "gate.json", report)
        _write_text_atomic(args.output / "gate.md", render_markdown(report))
        _write_text_atomic(args.output / "junit.xml", render_junit(report))
    if args.json_out:
        sys.stdout.write(json.dumps(report, indent=1, sort_keys=True) + "\n")
    else:
        print_table(console, report)
    return EXIT_REGRESSION if report["status"] == "fail" else EXIT_PASS


def _check_inputs(args: GateArgs) -> _Plan:
    """Every check that needs no evaluation, so that bad input costs no model load (UserError, exit 2)."""
    from pydantic import ValidationError

    from autotune.evaluate.suite import BACKENDS, load_suite
    from autotune.gate.compare import (
        GateConfig,
        check_comparable,
        check_patterns,
        load_gate_config,
        read_baseline,
    )

    if (args.baseline is None) == (args.write_baseline is None):
        raise UserError("give exactly one of --baseline (compare) or --write-baseline (record a baseline)",
                        field="--baseline")
    if args.write_baseline is not None and args.write_baseline.is_dir():
        raise UserError("is a folder; give a file name such as gate-baseline.json", field="--write-baseline",
                        value=str(args.write_baseline))
    if args.write_baseline is not None and args.write_baseline.exists() and not args.force:
        raise UserError("the baseline file exists; pass --force to replace it", field="--write-baseline",
                        value=str(args.write_baseline))
    _check_checkpoint(args.checkpoint, "CHECKPOINT")
    if args.backend is not None and args.backend not in BACKENDS:
        raise UserError(f"unknown backend (choose {', '.join(BACKENDS)})", field="--backend", value=args.backend)
    baseline_doc = None
    if args.baseline is not None:
        if args.baseline.is_dir():
            _check_checkpoint(args.baseline, "--baseline")
        elif not args.baseline.exists():
            raise UserError("not found (a baseline file from --write-baseline, or a checkpoint folder)",
                            field="--baseline", value=str(args.baseline))
        else:
            baseline_doc = read_baseline(args.baseline)

    config = load_gate_config(args.config)
    over = {k: v for k, v in (("confidence", args.confidence), ("resamples", args.resamples)) if v is not None}
    for k, v in over.items():  # CLI overrides, checked by the same model as the file
        try:
            GateConfig.model_validate({k: v})
        except ValidationError as e:
            raise UserError(e.errors()[0]["msg"], field=f"--{k}", value=v) from None
    skip_patterns = [(p, f"--skip[{i}]", None) for i, p in enumerate(args.skip)] + config.skip_rules()
    config = config.model_copy(update={**over, "skip": [*args.skip, *config.skip]})
    rules = [_cli_rule(r, i) for i, r in enumerate(args.tolerance)] + config.rules()

    space = None
    if args.space is not None:
        from autotune.config.space import load_space

        space = load_space(args.space)
    suite = load_suite(args.suite, list(space.domains) if space else None)
    keys = [e.key for e in suite.entries]
    check_patterns([(r.pattern, r.field, r.file) for r in rules if r.pattern != "*"], keys)
    check_patterns(skip_patterns, keys)
    if baseline_doc is not None:  # suite, backend, lm-eval and task settings now; the rest after the run
        check_comparable(baseline_doc, _planned(args, suite), file=args.baseline)
    return _Plan(suite, space, config, rules, baseline_doc)


def _write_baseline(path: Path, current: dict[str, Any], console: Console, err: Console) -> None:
    from autotune.records import write_json_atomic

    write_json_atomic(path, current)
    gateable = sum(e["docs"] is not None for e in current["entries"].values())
    console.print(f"baseline written: {path} ({len(current['entries'])} entries, {gateable} with per-document "
                  f"values; model {current['model_hash']})", highlight=False, markup=False)
    for key, e in current["entries"].items():
        if e["docs"] is None:
            err.print(f"[yellow]note:[/] {escape(key)} cannot be gated: {escape(e['not_gateable'])}", highlight=False)


def _check_checkpoint(path: Path, field: str) -> None:
    if not (Path(path) / "config.json").is_file():
        raise UserError("not a Hugging Face checkpoint folder (no config.json)", field=field, value=str(path))


def _cli_rule(text: str, i: int):
    """``--tolerance TOL`` (every entry) or ``--tolerance PATTERN=TOL``."""
    from autotune.gate.compare import Rule, Tolerance

    pattern, sep, tol = text.rpartition("=")
    if not sep:
        pattern, tol = "*", text
    if not pattern:
        raise UserError("must read TOLERANCE or PATTERN=TOLERANCE, e.g. 0.02, 2% or 'bpb/*=1%'",
                        field=f"--tolerance[{i}]", value=text)
    return Rule(pattern, Tolerance.parse(tol, field=f"--tolerance[{i}]"), f"--tolerance[{i}]")


def _planned(args: GateArgs, suite) -> dict[str, Any]:
    """What can be checked against a baseline before evaluating: suite, entries, backend, lm-eval version and,
    per task entry, an explicit few-shot count, the limit and the template hash (the rest after the run)."""
    from autotune.evaluate.backends import Checkpoint, make_backend
    from autotune.evaluate.suite import TaskEntry
    from autotune.evaluate.taskdefs import check_entry, lm_eval_version, template_hash
    from autotune.gate.compare import BASELINE_FORMAT

    backend = make_backend(args.backend or suite.backend, suite)
    entries: dict[str, Any] = {}
    for e in suite.entries:
        identity: dict[str, Any] = {}
        if isinstance(e, TaskEntry):
            tdef = check_entry(e, suite, file=suite.source_file, where=suite.where(e))
            if e.num_fewshot is not None:
                identity["num_fewshot"] = e.num_fewshot
            identity["limit"] = e.limit
            if tdef is not None:
                identity["template_hash"] = template_hash(tdef, e, suite)
        entries[e.key] = {"identity": identity}
    return {"format": BASELINE_FORMAT, "suite": {"name": suite.name}, "lm_eval_version": lm_eval_version(),
            "backend": backend.fingerprint(Checkpoint(args.checkpoint)), "entries": entries}


def _evaluate_snapshot(args: GateArgs, checkpoint: Path, out_dir: Path, plan: _Plan, err: Console) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the suite and return its snapshot (identity + per-document values)."""
    from autotune.cli.eval import _evaluate
    from autotune.evaluate.backends import ServerError

    suite = plan.suite
    err.print(f"evaluating {checkpoint} on suite {suite.name} ...", highlight=False, markup=False)
    try:
        result = _evaluate(checkpoint, args.suite, args.backend, out_dir, args.allow_code_execution, args.space,
                           args.no_cache)
    except (UserError, KeyboardInterrupt):
        raise
    except ServerError as e:
        raise EvalFailed(f"{checkpoint}: {e}") from e
    except Exception as e:  # noqa: BLE001  (a crash inside the evaluation is exit 3, with its traceback)
        err.print(traceback.format_exc(), highlight=False, markup=False)
        raise EvalFailed(f"{checkpoint}: {type(e).__name__}: {e}") from e
    return collect(checkpoint, suite, result, out_dir)


def collect(checkpoint: Path, suite, result, out_dir: Path) -> dict[str, Any]:
    """The snapshot of one evaluation: per-document values of every entry read from ``out_dir/samples``."""
    from autotune.evaluate.cache import read_samples
    from autotune.evaluate.suite import BpbEntry
    from autotune.evaluate.taskdefs import check_entry
    from autotune.gate.compare import DocValues, NotGateable, bpb_doc_values, snapshot, task_doc_values

    rows = {r["key"]: r for r in result.rows}
    task_by_entry = {k: t for t in result.meta["tasks"].values() for k in t["entries"]}
    docs: dict[str, DocValues | str] = {}
    for entry in suite.entries:
        row = rows[entry.key]
        try:
            if isinstance(entry, BpbEntry):
                rel = result.meta["bpb"][entry.bpb].get("samples")
                windows = read_samples(out_dir / rel) if rel and (out_dir / rel).exists() else []
                docs[entry.key] = bpb_doc_values(windows, row["value"])
            else:
                t = task_by_entry[entry.key]
                samples = read_samples(out_dir / t["samples"]) if t.get("samples") else []
                tdef = check_entry(entry, suite, file=suite.source_file, where=suite.where(entry))
                docs[entry.key] = task_doc_values(entry.metric, entry.filter, entry.normalize,
                                                  tdef.output_type if tdef else None, samples, row["raw"])
        except NotGateable as e:
            docs[entry.key] = str(e)
    return snapshot(checkpoint, suite, result.meta, result.rows, docs)


# ----------------------------------------------------------------------------------------------- outputs
def _report(args: GateArgs, config, suite, baseline: dict[str, Any], current: dict[str, Any],
            verdicts) -> dict[str, Any]:
    counts = {s: sum(v.status == s for v in verdicts) for s in ("pass", "fail", "skip")}
    status = "fail" if counts["fail"] else "pass"
    return {"status": status, "exit_code": EXIT_REGRESSION if status == "fail" else EXIT_PASS,
            "checkpoint": current["checkpoint"], "model_hash": current["model_hash"],
            "baseline": str(args.baseline), "baseline_checkpoint": baseline.get("checkpoint"),
            "baseline_model_hash": baseline.get("model_hash"), "baseline_created": baseline.get("created"),
            "suite": suite.name, "suite_file": str(args.suite), "confidence": config.confidence,
            "resamples": config.resamples, "seed": config.seed, "groups": list(config.groups), "counts": counts,
            "entries": [v.to_json() for v in verdicts]}


_ICON = {"pass": "✅", "fail": "❌", "skip": "⏭️"}


def _num(x: Any, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def _bounds(e: dict[str, Any]) -> str:
    return "-" if e["low"] is None else f"[{_num(e['low'], True)}, {_num(e['high'], True)}]"


def _tol(e: dict[str, Any]) -> str:
    if e["tolerance"] is None:
        return "-"
    relative = e["tolerance"].endswith("%") and e["threshold"] is not None
    return e["tolerance"] + (f" ({_num(e['threshold'])})" if relative else "")


def headline(report: dict[str, Any]) -> str:
    c = report["counts"]
    gated = c["pass"] + c["fail"]
    skipped = f", {c['skip']} skipped" if c["skip"] else ""
    if report["status"] == "fail":
        names = ", ".join(e["key"] for e in report["entries"] if e["status"] == "fail")
        return f"regression in {c['fail']} of {gated} entries{skipped}: {names}"
    return f"passed: {gated} entries, no regression{skipped}"


def render_markdown(report: dict[str, Any]) -> str:
    """The summary for a PR comment or ``$GITHUB_STEP_SUMMARY``."""
    conf = f"{report['confidence']:.0%}"
    icon = _ICON[report["status"]]
    lines = [f"### {icon} autotune gate: {headline(report)}", "",
             f"`{Path(report['checkpoint']).name}` (model `{report['model_hash']}`) against baseline "
             f"`{report['baseline']}` (model `{report['baseline_model_hash']}`) on suite **{report['suite']}**. "
             f"An entry fails when the checkpoint is worse than the baseline by more than its tolerance with {conf} "
             f"confidence (paired bootstrap over the same documents, {report['resamples']} resamples).", "",
             f"| | entry | group | baseline | checkpoint | drop | {conf} bounds of the drop | tolerance | n | note |",
             "|:-:|---|---|--:|--:|--:|:-:|--:|--:|---|"]
    for e in report["entries"]:
        arrow = " ↓" if not e["higher_is_better"] else ""
        note = (e["note"] or "").replace("|", "\\|")
        lines.append(f"| {_ICON[e['status']]} | `{e['key']}`{arrow} | {e['group']} | {_num(e['baseline'])} | "
                     f"{_num(e['value'])} | {_num(e['drop'], True)} | {_bounds(e)} | {_tol(e)} | {e['n'] or '-'} | "
                     f"{note} |")
    lines += ["", f"Drop: how much worse the checkpoint is, in the metric's unit (positive = worse; ↓ marks metrics "
                  f"where lower is better). Bounds: one-sided {conf} bounds. n: documents resampled (held-out "
                  "bits-per-byte: scored windows). The bootstrap covers which documents were drawn, not training "
                  "noise: the tolerance absorbs seed-to-seed differences.", ""]
    return "\n".join(lines)


def render_junit(report: dict[str, Any]) -> str:
    """JUnit XML: one test case per suite entry (failure = regression, skipped = not gated)."""
    import xml.etree.ElementTree as ET

    c = report["counts"]
    total = len(report["entries"])
    root = ET.Element("testsuites", name="autotune gate", tests=str(total), failures=str(c["fail"]),
                      errors="0", skipped=str(c["skip"]))
    ts = ET.SubElement(root, "testsuite", name=f"autotune gate: {report['suite']}", tests=str(total),
                       failures=str(c["fail"]), errors="0", skipped=str(c["skip"]))
    props = ET.SubElement(ts, "properties")
    for k in ("checkpoint", "model_hash", "baseline", "baseline_model_hash", "confidence", "resamples"):
        ET.SubElement(props, "property", name=k, value=str(report[k]))
    for e in report["entries"]:
        case = ET.SubElement(ts, "testcase", classname=f"gate.{report['suite']}.{e['group']}", name=e["key"], time="0")
        detail = (f"{e['metric']}{' (lower is better)' if not e['higher_is_better'] else ''}: baseline "
                  f"{_num(e['baseline'])}, checkpoint {_num(e['value'])}, drop {_num(e['drop'], True)}, "
                  f"{report['confidence']:.0%} bounds {_bounds(e)}, tolerance {_tol(e)}, {e['n']} documents. "
                  f"{e['note']}")
        if e["status"] == "fail":
            ET.SubElement(case, "failure", message=e["note"] or "regression", type="regression").text = detail
        elif e["status"] == "skip":
            ET.SubElement(case, "skipped", message=e["note"] or "not gated")
        else:
            ET.SubElement(case, "system-out").text = detail
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def print_table(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    conf = f"{report['confidence']:.0%}"
    table = Table(title=escape(f"{Path(report['checkpoint']).name} against {report['baseline']} on suite "
                               f"{report['suite']}"))
    for col in ("", "entry", "group", "baseline", "checkpoint", "drop", f"{conf} bounds", "tolerance", "n", "note"):
        table.add_column(col, justify="right" if col in ("baseline", "checkpoint", "drop", "n") else "left",
                         no_wrap=col != "note")
    style = {"pass": "green", "fail": "bold red", "skip": "dim"}
    for e in report["entries"]:
        table.add_row(f"[{style[e['status']]}]{e['status']}[/]",
                      *map(escape, (e["key"] + (" v" if not e["higher_is_better"] else ""), e["group"],
                                    _num(e["baseline"]), _num(e["value"]), _num(e["drop"], True), _bounds(e), _tol(e),
                                    str(e["n"] or "-"), e["note"])))
    console.print(table)
    colour = "bold red" if report["status"] == "fail" else "bold green"
    console.print(f"[{colour}]{report['status'].upper()}[/] {escape(headline(report))}  "
                  "(drop > 0: worse; v: lower is better)",
                  highlight=False)


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------- typer
def gate_cmd(
    checkpoint: Annotated[Path, typer.Argument(
        help="Hugging Face checkpoint folder to check (config.json, weights, tokenizer), "
             "e.g. runs/demo/trials/<hash>/checkpoint.",
        show_default=False)],
    suite: Annotated[Path, typer.Option("--suite", help="Suite YAML whose entries are gated, e.g. evals/demo.yaml.",
                                        show_default=False)],
    baseline: Annotated[Path | None, typer.Option(
        help="What to compare against: a file written by --write-baseline, or another checkpoint folder "
             "(evaluated the same way, results cached). E.g. --baseline gate-baseline.json.",
        show_default=False)] = None,
    write_baseline: Annotated[Path | None, typer.Option(
        "--write-baseline", help="Evaluate CHECKPOINT and record it as a baseline file instead of comparing "
                                 "(scores, per-document values, suite/backend/task identity). "
                                 "E.g. --write-baseline gate-baseline.json.", show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing --write-baseline file (never replaced without it). "
                        "E.g. --write-baseline gate-baseline.json --force.")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Gate config YAML: confidence, resamples, seed, tolerance rules, skip patterns, groups. "
                         "E.g. --config evals/demo.gate.yaml.", show_default=False)] = None,
    tolerance: Annotated[list[str] | None, typer.Option(
        "--tolerance", help="How much worse an entry may get (repeatable, before the config's rules): TOLERANCE "
                            "for all entries or PATTERN=TOLERANCE; absolute in the metric's unit (0.02) or relative "
                            "to the baseline (2%). Default: 0.01 for bounded scores (acc, exact_match), 1% for "
                            "likelihood metrics (bpb, gold_logprob). E.g. --tolerance 'bpb/*=0.5%'.",
        show_default=False)] = None,
    skip: Annotated[list[str] | None, typer.Option(
        "--skip", help="Entry-key pattern not to gate (repeatable), e.g. --skip 'demo_math_gen/*'.",
        show_default=False)] = None,
    confidence: Annotated[float | None, typer.Option(
        help="Fail an entry only when its drop exceeds the tolerance with this one-sided confidence, "
             "in (0.5, 1); default 0.95 (or the config's). E.g. --confidence 0.99.", show_default=False)] = None,
    resamples: Annotated[int | None, typer.Option(
        help="Paired bootstrap resamples, 100-100000; default 2000 (or the config's). E.g. --resamples 5000.",
        show_default=False)] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Folder for gate.md, junit.xml, gate.json and the evaluations' sample logs. "
                               "E.g. -o gate-out.", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the report as JSON instead of a table (what -o writes to gate.json). "
                       "E.g. --json > gate.json.")] = False,
    backend: Annotated[str | None, typer.Option(
        help="hf | vllm | vllm-server (default: the suite's backend); a baseline made with another backend "
             "is refused. E.g. --backend vllm.", show_default=False)] = None,
    space: Annotated[Path | None, typer.Option(
        help="Search space whose domains give the held-out text of the suite's bpb entries, "
             "e.g. --space search_spaces/demo.yaml.", show_default=False)] = None,
    allow_code_execution: Annotated[bool, typer.Option(
        "--allow-code-execution", help="Allow tasks that execute model-generated code (HumanEval, MBPP), "
                                       "e.g. a suite with humaneval: --allow-code-execution.")] = False,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Evaluate again even when cached results exist (e.g. to rule out a stale cache: "
                           "--no-cache).")] = False,
) -> None:
    """CI regression gate: fail when CHECKPOINT is worse than a baseline on a suite, beyond tolerance, with confidence.

    Each suite entry is compared on the same documents: a paired bootstrap gives the confidence bounds of the
    drop (how much worse, in the metric's unit), and the entry fails only when the drop exceeds its tolerance
    with --confidence. A baseline made with another suite, backend, lm-eval version, task version, few-shot
    count, prompt template or held-out text is refused, not compared. Exit codes: 0 pass (or baseline
    written), 1 regression, 2 bad input, 3 evaluation failed.

    Record a baseline:  autotune gate ckpt/main --suite evals/demo.yaml --space search_spaces/demo.yaml --write-baseline base.json

    Gate a candidate:   autotune gate ckpt/pr --suite evals/demo.yaml --space search_spaces/demo.yaml --baseline base.json --config evals/demo.gate.yaml -o gate-out
    """
    args = GateArgs(checkpoint=checkpoint, suite=suite, baseline=baseline, write_baseline=write_baseline, force=force,
                    config=config, tolerance=list(tolerance or []), skip=list(skip or []), confidence=confidence,
                    resamples=resamples, output=output, json_out=json_out, backend=backend, space=space,
                    allow_code_execution=allow_code_execution, no_cache=no_cache)
    code = gate_command(args)
    if code:
        raise typer.Exit(code)

