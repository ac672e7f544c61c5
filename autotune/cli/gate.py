"""``autotune gate CHECKPOINT --suite FILE --baseline BASELINE``: the CI regression gate on checkpoints.

The typer command only: its options become a ``GateArgs`` for ``autotune.gate.run.run_gate``, which checks
every input before any evaluation, evaluates the checkpoint (through the evaluator and its cache, as
``autotune eval``) and compares each suite entry with the baseline by a paired bootstrap. BASELINE is a file
written by ``--write-baseline`` or another checkpoint folder (evaluated the same way).

Exit codes (``autotune.cli.errors``): 0 pass (or baseline written), 1 regression, 2 bad input (one line
naming file, field and value; a baseline that is not comparable is bad input), 3 an evaluation failed, 130
interrupted. Outputs with ``-o DIR``: ``gate.md`` (for a PR comment or ``$GITHUB_STEP_SUMMARY``),
``junit.xml`` (one test case per entry), ``gate.json``, and the evaluations' sample logs under
``checkpoint/`` (and ``baseline/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from autotune.cli.errors import cli_errors, console, err
from autotune.cli.eval import ALLOW_CODE_HELP, BackendName

# the gate config's interval methods (autotune.config.gate.Interval, which imports pydantic: --help stays light;
# tests/test_cli_conventions.py keeps the two equal)
Interval = Literal["bca", "percentile"]

_INTERRUPTED = "finished tasks stay cached; nothing was compared."


# ----------------------------------------------------------------------------------------------- typer
@cli_errors(interrupted=_INTERRUPTED)
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
    interval: Annotated[Interval | None, typer.Option(
        help="The bootstrap's bounds: bca (bias-corrected and accelerated; closer to the stated confidence on "
             "the skewed drops of a few dozen documents) or percentile; default bca (or the config's). "
             "E.g. --interval percentile.", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Folder for gate.md, junit.xml, gate.json and the evaluations' sample logs. "
                               "E.g. -o gate-out.", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the report as JSON instead of a table (what -o writes to gate.json). "
                       "E.g. --json > gate.json.")] = False,
    backend: Annotated[BackendName | None, typer.Option(
        help="Evaluation backend (default: the suite's backend); a baseline made with another backend "
             "is refused. E.g. --backend vllm.", show_default=False)] = None,
    space: Annotated[Path | None, typer.Option(
        help="Search space whose domains give the held-out text of the suite's bpb entries, "
             "e.g. --space search_spaces/demo.yaml.", show_default=False)] = None,
    allow_code_execution: Annotated[bool, typer.Option(
        "--allow-code-execution", help=ALLOW_CODE_HELP + " Not needed by the suites in evals/; "
                                                 "e.g. a suite with humaneval: --allow-code-execution.")] = False,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Evaluate again even when cached results exist (e.g. to rule out a stale cache: "
                           "--no-cache).")] = False,
) -> int:
    """CI regression gate: fail when CHECKPOINT is worse than a baseline on a suite, beyond tolerance, with confidence.

    Each suite entry is compared on the same documents: a paired bootstrap gives the confidence bounds of the
    drop (how much worse, in the metric's unit), and the entry fails only when the drop exceeds its tolerance
    with --confidence. A baseline made with another suite, backend, lm-eval version, task version, few-shot
    count, prompt template or held-out text is refused, not compared. Exit codes: 0 pass (or baseline
    written), 1 regression, 2 bad input, 3 evaluation failed, 130 interrupted.

    Record a baseline:  autotune gate ckpt/main --suite evals/demo.yaml --space search_spaces/demo.yaml --write-baseline base.json

    Gate a candidate:   autotune gate ckpt/pr --suite evals/demo.yaml --space search_spaces/demo.yaml --baseline base.json --config evals/demo.gate.yaml -o gate-out
    """
    from autotune.gate.run import GateArgs, run_gate

    args = GateArgs(checkpoint=checkpoint, suite=suite, baseline=baseline, write_baseline=write_baseline, force=force,
                    config=config, tolerance=list(tolerance or []), skip=list(skip or []), confidence=confidence,
                    resamples=resamples, interval=interval, output=output, json_out=json_out, backend=backend,
                    space=space, allow_code_execution=allow_code_execution, no_cache=no_cache)
    return run_gate(args, console, err)
