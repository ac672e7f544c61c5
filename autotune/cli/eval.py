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

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from autotune.cli.errors import cli_errors, guarded

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
    backend: Annotated[str | None, typer.Option(help="hf | vllm | vllm-server (default: the suite's backend).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder to write eval.json and samples/<task>.jsonl to.")] = None,
    allow_code_execution: Annotated[bool, typer.Option("--allow-code-execution",
                                                       help="Allow tasks that execute model-generated code (HumanEval, MBPP).")] = False,
    space: Annotated[Path | None, typer.Option(help="Search space whose domains give the held-out text for the suite's bpb entries.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON instead of a table.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Evaluate again even when a cached result exists.")] = False,
) -> None:
    """Score a checkpoint on an evaluation suite (lm-eval tasks, held-out bits-per-byte): a table, or JSON.

    Results are cached by backend, model hash, batch size, few-shot count, template, lm-eval version and limit:
    evaluating an unchanged checkpoint again takes under a second. Exit codes: 0 done, 2 bad input, 3 the
    evaluation failed, 130 interrupted.

    Example: autotune eval runs/demo/trials/<hash>/checkpoint --suite evals/demo.yaml --space search_spaces/demo.yaml
    """
    _run(checkpoint, suite, backend, output, allow_code_execution, space, json_out, no_cache)


def main() -> None:  # pragma: no cover - `python -m autotune.cli.eval`
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(eval_cmd)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
