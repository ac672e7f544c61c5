"""``autotune eval CHECKPOINT --suite FILE``: score one checkpoint on a suite, print a table or JSON.

The gate builds on it. Scores are cached (``$AUTOTUNE_HOME/eval-cache``) by everything they depend on,
so evaluating an unchanged checkpoint again takes well under a second and loads no model. Exit codes:
0 done, 1 the evaluation failed (a model server that would not start, a crash), 2 bad input (the message
names file, field and value), 130 interrupted (Ctrl-C; a started model server is stopped first).

Wiring into ``autotune/cli.py``::

    from autotune.cli.eval import eval_cmd
    app.command("eval")(eval_cmd)

``eval_cmd`` declares the typer arguments and options; ``eval_command`` is the plain function behind it.
``python -m autotune.cli.eval`` runs the command on its own (the tests use it as a subprocess).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from autotune.errors import UserError


def eval_command(checkpoint: Path, suite: Path, backend: str | None = None, output: Path | None = None,
                 allow_code_execution: bool = False, space: Path | None = None, json_out: bool = False,
                 no_cache: bool = False, console: Console | None = None, err_console: Console | None = None) -> int:
    """Evaluate ``checkpoint`` on ``suite``; print a table (or JSON); write ``output/eval.json`` + samples.

    Returns the exit code (0, 1, 2 or 130; see the module docstring).
    """
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    err = err_console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    from autotune.evaluate.backends import ServerError

    try:
        result = _evaluate(checkpoint, suite, backend, output, allow_code_execution, space, no_cache)
    except UserError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except ServerError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished tasks stay cached, unfinished ones were dropped; a model server, "
                  "if one was started, was stopped.")
        return 130
    doc = {"checkpoint": str(Path(checkpoint).resolve()), "suite": str(Path(suite).resolve()), **result.to_json()}
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        from autotune.records import write_json_atomic

        write_json_atomic(output / "eval.json", doc)
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    else:
        print_table(console, doc)
    return 0


def _evaluate(checkpoint: Path, suite_path: Path, backend: str | None, output: Path | None,
              allow_code_execution: bool, space_path: Path | None, no_cache: bool):
    from autotune.evaluate.backends import Checkpoint
    from autotune.evaluate.harness import EvalOptions, run_suite
    from autotune.evaluate.suite import BACKENDS, load_suite

    if backend is not None and backend not in BACKENDS:
        raise UserError(f"unknown backend (choose {', '.join(BACKENDS)})", field="--backend", value=backend)
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise UserError("not a Hugging Face checkpoint folder (no config.json)", field="CHECKPOINT", value=str(checkpoint))
    space = None
    if space_path is not None:
        from autotune.config.space import load_space

        space = load_space(space_path)
    suite = load_suite(suite_path, list(space.domains) if space else None)
    heldout = _heldout(suite, checkpoint, space)
    options = EvalOptions(backend=backend, use_cache=not no_cache, allow_code_execution=allow_code_execution)
    return run_suite(Checkpoint(checkpoint), suite, heldout=heldout, out_dir=output, options=options)


def _heldout(suite, checkpoint: Path, space) -> dict[str, Any]:
    """Held-out tokens for the suite's bits-per-byte entries, tokenized with the checkpoint's tokenizer (cached)."""
    if not suite.bpb_entries:
        return {}
    from autotune.data.prepare import pack_domain
    from autotune.evaluate.harness import HeldoutTokens
    from autotune.hashing import tokenizer_hash

    out = {}
    for entry in suite.bpb_entries:
        source = entry.source
        if source is None and space is not None and entry.bpb in space.domains:
            source = space.domains[entry.bpb].source
            if not isinstance(source, str):  # relative paths are relative to the space file
                source = source.resolved(space.root)
        if source is None:
            raise UserError("a bits-per-byte entry needs held-out text: give --space SPACE.yaml (its domain's source) "
                            "or a source in the suite entry", file=suite.source_file,
                            field=f"{suite.where(entry)}.bpb", value=entry.bpb)
        packed = pack_domain(source, checkpoint, where=f"bpb.{entry.bpb}")
        seq_len = space.proxy.seq_len if space is not None else 1024
        fingerprint = f"{packed.manifest['splits']['heldout']['source_hash']}:{tokenizer_hash(checkpoint)}"
        out[entry.bpb] = HeldoutTokens(packed.tokens("heldout"), seq_len, fingerprint)
    return out


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
    evaluating an unchanged checkpoint again takes under a second.

    Example: autotune eval runs/demo/trials/<hash>/checkpoint --suite evals/demo.yaml --space search_spaces/demo.yaml
    """
    code = eval_command(checkpoint, suite, backend, output, allow_code_execution, space, json_out, no_cache)
    if code:
        raise typer.Exit(code)


def main() -> None:  # pragma: no cover - `python -m autotune.cli.eval`
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(eval_cmd)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
