"""``autotune eval CHECKPOINT --suite FILE``: score one checkpoint on a suite, print a table or JSON.

The evaluation is ``autotune.evaluate.checkpoint.evaluate_checkpoint`` (the gate runs the same). Scores are
cached (``$AUTOTUNE_HOME/eval-cache``) by everything they depend on, so evaluating an unchanged checkpoint
again takes well under a second and loads no model. Exit codes (``autotune.cli.errors``): 0 done, 2 bad
input (the message names file, field and value), 3 the evaluation failed (a model server that would not
start, a crash), 130 interrupted (Ctrl-C; a started model server is stopped first).

``eval_cmd`` is the typer command (``autotune.cli.app`` registers it); ``eval_command`` is the plain function
behind it, returning the exit code. ``python -m autotune.cli.eval`` runs the command on its own (the tests
use it as a subprocess).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from autotune.cli.errors import cli_errors, guarded

# what --allow-code-execution allows (eval, gate, search, ladder); the check is evaluate.suite.code_uses
ALLOW_CODE_HELP = ("Allow the suite to run code on this machine: tasks that execute model-generated code "
                   "(HumanEval, MBPP), Python from the suite's own task_dirs (!function task code, Python task "
                   "classes, metrics Hugging Face evaluate loads as scripts, dataset_kwargs.trust_remote_code) and, for "
                   "vllm-server, the suite's own vllm.python, vllm.extra_args and a custom vllm.serve_command "
                   "($AUTOTUNE_VLLM_PYTHON is your own setting: no flag). "
                   "lm-eval's stock tasks need no flag. Without it such a suite is refused (exit 2); use it "
                   "only for suites you trust, ideally in a sandbox.")

# the --backend choices of eval and gate: config.suite.BACKENDS (tests/test_cli_conventions.py keeps them equal)
BackendName = Literal["hf", "vllm", "vllm-server"]

_INTERRUPTED = ("finished tasks stay cached, unfinished ones were dropped; a model server, if one was started, "
                "was stopped.")


def eval_command(checkpoint: Path, suite: Path, backend: str | None = None, output: Path | None = None,
                 allow_code_execution: bool = False, space: Path | None = None, json_out: bool = False,
                 no_cache: bool = False, console: Console | None = None, err_console: Console | None = None) -> int:
    """Evaluate ``checkpoint`` on ``suite``; print a table (or JSON); write ``output/eval.json`` + samples.

    Returns the exit code (0, 2, 3 or 130; see the module docstring).
    """
    return guarded(lambda: _run(checkpoint, suite, backend, output, allow_code_execution, space, json_out, no_cache,
                                console), interrupted=_INTERRUPTED, err_console=err_console)


def _run(checkpoint: Path, suite: Path, backend: str | None, output: Path | None, allow_code_execution: bool,
         space: Path | None, json_out: bool, no_cache: bool, console: Console | None = None) -> None:
    from autotune.cli import errors
    from autotune.evaluate.checkpoint import evaluate_checkpoint

    with _stdout_to_stderr(json_out):
        result = evaluate_checkpoint(checkpoint, suite, backend, output, allow_code_execution, space, no_cache)
    doc = {"checkpoint": str(Path(checkpoint).resolve()), "suite": str(Path(suite).resolve()), **result.to_json()}
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        from autotune.records import write_json_atomic

        write_json_atomic(output / "eval.json", doc)
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    else:
        print_table(console or errors.console, doc)


@contextlib.contextmanager
def _stdout_to_stderr(on: bool) -> Iterator[None]:
    """With ``--json``, stdout carries the JSON only: while the evaluation runs, what Python code prints and
    what the file descriptor gets (C libraries, the processes they start: vLLM's engine) goes to stderr."""
    if not on:
        yield
        return
    sys.stdout.flush()
    saved_fd, saved_py = os.dup(1), sys.stdout
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout = saved_py


def _fmt(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(console: Console, doc: dict[str, Any]) -> None:
    from rich.table import Table

    meta = doc["meta"]
    table = Table(title=f"{Path(doc['checkpoint']).name} on suite {meta['suite']}")
    for col in ("group", "entry", "metric", "value", "stderr", "n", "shots", "cached"):
        table.add_column(col, justify="right" if col in ("value", "stderr", "n", "shots") else "left")
    for r in doc["rows"]:
        metric = r["metric"] + (f" [{r['filter']}]" if r.get("filter") not in (None, "none") else "") + \
            (" (chance-corrected)" if r.get("normalize") == "chance" else "") + (" v" if not r["higher_is_better"] else "")
        table.add_row(r["group"], r["key"], metric, _fmt(r["value"]), _fmt(r["stderr"]), str(r.get("n") or "-"),
                      str(r.get("num_fewshot") if r.get("num_fewshot") is not None else "-"), "yes" if r["cached"] else "no")
    console.print(table)
    console.print(f"backend {meta['backend']}, batch size {meta['batch_size']}, lm-eval {meta['lm_eval_version']}, "
                  f"model {meta['model_hash']}, {meta['seconds']:.2f} s{' (all cached)' if meta['cached'] else ''}; "
                  "v: lower is better", highlight=False, style="dim")


@cli_errors(interrupted=_INTERRUPTED)
def eval_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Hugging Face checkpoint folder (config.json, weights, tokenizer).",
                                               show_default=False)],
    suite: Annotated[Path, typer.Option("--suite", help="Suite YAML, e.g. evals/demo.yaml or evals/stock_offline.yaml.",
                                        show_default=False)],
    backend: Annotated[BackendName | None, typer.Option(help="Evaluation backend (default: the suite's backend).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder to write eval.json, samples/<task>.jsonl and lm-eval's own results layout (lm_eval/<model>/results_<date>.json, samples_<task>_<date>.jsonl) to.")] = None,
    allow_code_execution: Annotated[bool, typer.Option("--allow-code-execution", help=ALLOW_CODE_HELP)] = False,
    space: Annotated[Path | None, typer.Option(help="Search space whose domains give the held-out text for the suite's bpb entries.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON instead of a table.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Evaluate again even when a cached result exists.")] = False,
    compare_backends: Annotated[str | None, typer.Option(
        "--compare-backends", help="Run the suite through each of these backends (e.g. hf,vllm; the first is the "
        "reference) and compare: per entry both values, per document the log-probability and answer differences. "
        "Exit 1 when they disagree beyond the tolerances.", show_default=False)] = None,
    tolerance: Annotated[float, typer.Option(help="--compare-backends: largest difference of an entry's value "
                                             "(absolute) and of a document's log-probability (relative).")] = 1e-3,
) -> int | None:
    """Score a checkpoint on an evaluation suite (lm-eval tasks, held-out bits-per-byte): a table, or JSON.

    Results are cached by backend, model hash, batch size, few-shot count, template, lm-eval version and limit:
    evaluating an unchanged checkpoint again takes under a second. Exit codes: 0 done, 2 bad input, 3 the
    evaluation failed, 130 interrupted.

    With --compare-backends hf,vllm: both backends' scores side by side and their per-document differences
    (exit 1 if they disagree beyond --tolerance; compare.json in --output).

    Example: autotune eval runs/demo/trials/<hash>/checkpoint --suite evals/demo.yaml --space search_spaces/demo.yaml
    """
    if compare_backends is None:
        _run(checkpoint, suite, backend, output, allow_code_execution, space, json_out, no_cache)
        return None
    return _compare(checkpoint, suite, compare_backends, output, allow_code_execution, space, json_out, no_cache, tolerance)


def _compare(checkpoint: Path, suite: Path, backends: str, output: Path | None, allow_code_execution: bool,
             space: Path | None, json_out: bool, no_cache: bool, tolerance: float) -> int:
    from autotune.cli import errors
    from autotune.evaluate.compare import compare_backends

    with _stdout_to_stderr(json_out):
        doc = compare_backends(checkpoint, suite, [b.strip() for b in backends.split(",") if b.strip()], output=output,
                               abs_tol=tolerance, rel_tol=tolerance, space_path=space,
                               allow_code_execution=allow_code_execution, no_cache=no_cache)
    if output is not None:
        from autotune.records import write_json_atomic

        write_json_atomic(output / "compare.json", doc)
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    else:
        print_comparison(errors.console, doc)
    return 0 if doc["agree"] else 1


def print_comparison(console: Console, doc: dict[str, Any]) -> None:
    from rich.table import Table

    backends = doc["backends"]
    table = Table(title=f"{Path(doc['checkpoint']).name}: {' vs '.join(backends)} (reference {doc['reference']})")
    for col in ("entry", *backends, "docs", "metric differs", "text differs", "max rel. logprob", "agree"):
        table.add_column(col, justify="left" if col == "entry" else "right")
    for e in doc["entries"]:
        table.add_row(e["key"], *(_fmt(e["values"][b]) for b in backends), str(e["docs"]), str(e["metric_differs"]),
                      str(e["answer_differs"]) if e["max_rel_logprob"] is None else "-",
                      "-" if e["max_rel_logprob"] is None else f"{e['max_rel_logprob']:.1e}",
                      "[red]no[/]: " + "; ".join(e["why"]) if e["disagree"] else "[green]yes[/]")
    console.print(table)
    for note in doc["notes"]:
        console.print(f"note: {note}", style="yellow", highlight=False)
    console.print(f"tolerance {doc['abs_tol']:g} (values, absolute; log-probabilities, relative); seconds "
                  + ", ".join(f"{b} {s:.1f}" for b, s in doc["seconds"].items()), style="dim", highlight=False)


def main() -> None:  # pragma: no cover - `python -m autotune.cli.eval`
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(eval_cmd)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
