"""``autotune gate``'s work, apart from its options: check every input before any evaluation, evaluate the
checkpoint (and a baseline checkpoint) through the evaluator and its cache, read per-document values from
the sample logs, compare each suite entry with the baseline by a paired bootstrap (``autotune.gate.compare``
has the statistics), and write / print the report (``autotune.gate.render``).

Imports nothing heavy at module level: ``autotune --help`` stays light.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from autotune.config.gate import GateConfig, Rule, Tolerance, load_gate_config
from autotune.config.space import load_space
from autotune.config.suite import BACKENDS, BpbEntry, TaskEntry
from autotune.errors import UserError
from autotune.evaluate.backends import Checkpoint, make_backend
from autotune.evaluate.cache import read_samples
from autotune.evaluate.checkpoint import evaluate_checkpoint
from autotune.evaluate.suite import load_suite, require_code_permission
from autotune.evaluate.taskdefs import check_entry, lm_eval_version, template_hash
from autotune.gate.compare import (
    BASELINE_FORMAT,
    DocValues,
    NotGateable,
    bpb_doc_values,
    check_comparable,
    check_finite_baseline,
    check_patterns,
    compare,
    read_baseline,
    snapshot,
    task_doc_values,
)
from autotune.gate.render import print_table, write_outputs
from autotune.records import write_json_atomic

EXIT_PASS, EXIT_REGRESSION = 0, 1


@dataclass
class GateArgs:
    """The command's inputs, as given (``run_gate`` checks them)."""

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
    interval: str | None = None
    output: Path | None = None
    json_out: bool = False
    backend: str | None = None
    space: Path | None = None
    allow_code_execution: bool = False
    no_cache: bool = False


# ----------------------------------------------------------------------------------------------- the run
@dataclass
class _Plan:
    """The checked inputs: what is evaluated, against what, and how it is decided."""

    suite: Any
    space: Any
    config: Any  # GateConfig
    rules: list[Any]  # list[Rule]: CLI --tolerance rules first, then the config file's
    baseline_doc: dict[str, Any] | None  # None: --write-baseline, or a baseline checkpoint folder


def run_gate(args: GateArgs, console: Console, err: Console) -> int:
    """Run the gate; returns 0 (pass, or baseline written) or 1 (regression). Raises ``UserError`` for bad
    input (before any evaluation), ``EvalFailed`` when an evaluation fails."""

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
        write_outputs(args.output, report)
    if args.json_out:
        sys.stdout.write(json.dumps(report, indent=1, sort_keys=True) + "\n")
    else:
        print_table(console, report)
    return EXIT_REGRESSION if report["status"] == "fail" else EXIT_PASS


def _check_inputs(args: GateArgs) -> _Plan:
    """Every check that needs no evaluation, so that bad input costs no model load (UserError, exit 2)."""


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
    over = {k: v for k, v in (("confidence", args.confidence), ("resamples", args.resamples),
                              ("interval", args.interval)) if v is not None}
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

        space = load_space(args.space)
    suite = load_suite(args.suite, list(space.domains) if space else None)
    require_code_permission(suite, args.allow_code_execution, args.backend)  # before _planned asks its vLLM
    keys = [e.key for e in suite.entries]
    check_patterns([(r.pattern, r.field, r.file) for r in rules if r.pattern != "*"], keys)
    check_patterns(skip_patterns, keys)
    if baseline_doc is not None:  # suite, backend, lm-eval and task settings now; the rest after the run
        check_comparable(baseline_doc, _planned(args, suite), file=args.baseline)
    return _Plan(suite, space, config, rules, baseline_doc)


def _write_baseline(path: Path, current: dict[str, Any], console: Console, err: Console) -> None:
    """Entries whose values are not finite (a diverged model) are recorded as not gateable: ``read_baseline``
    refuses non-finite values, so a baseline written here always reads back."""
    for key, e in current["entries"].items():
        if e["docs"] is not None:
            try:
                check_finite_baseline(key, DocValues.from_json(e["docs"]), file=path)
            except UserError:
                e["docs"], e["not_gateable"] = None, "non-finite per-document values (diverged weights?)"
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

    suite = plan.suite
    err.print(f"evaluating {checkpoint} on suite {suite.name} ...", highlight=False, markup=False)
    result = evaluate_checkpoint(checkpoint, args.suite, args.backend, out_dir, args.allow_code_execution, args.space,
                                 args.no_cache)
    return collect(checkpoint, suite, result, out_dir)


def collect(checkpoint: Path, suite, result, out_dir: Path) -> dict[str, Any]:
    """The snapshot of one evaluation: per-document values of every entry read from ``out_dir/samples``."""

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
            "resamples": config.resamples, "interval": config.interval, "seed": config.seed,
            "groups": list(config.groups), "counts": counts,
            "entries": [v.to_json() for v in verdicts]}
