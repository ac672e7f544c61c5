"""The one path from an error to an exit code, for every command (``@cli_errors`` or ``guarded``).

======  =================================================================================================
code    meaning
======  =================================================================================================
0       done (gate: pass, or baseline written)
1       the result is a failure: a regression (gate), a study that cannot go on (search, ladder: its data
        or base model could not be prepared), or a study none of whose trials completed (search: every one
        failed; the last line says how many, their most common reason and where the worker's log is)
2       bad input (``autotune.errors.UserError``): one line on stderr naming file, field and value, no traceback
3       an evaluation failed (eval, gate: a model server that would not start, a crash: its traceback, then one line)
4       out of disk space (errno ENOSPC, a full SQLite or PostgreSQL storage): one line naming what could not be
        written, no traceback; nothing finished is lost: free some space and rerun to resume
130     interrupted (Ctrl-C): one line on stderr
143     terminated (SIGTERM to ``search`` / ``ladder``, e.g. a preempted Slurm or Kubernetes job): stopped as
        after Ctrl-C (workers stopped, the running trial left to rerun), one line on stderr
======  =================================================================================================

Exceptions of modules that are not imported yet cannot have been raised, so they are matched through
``sys.modules``: this module imports nothing heavy (``autotune --help`` stays light).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from autotune.envvars import check_env
from autotune.errors import UserError, disk_full_reason, is_disk_full
from autotune.logs import to_stderr

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_EVAL_FAILED, EXIT_NO_SPACE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_TERMINATED = 128 + 15  # SIGTERM
EXIT_REGRESSION = EXIT_FAILED

EXIT_CODES = ("Exit codes (every command): 0 done (gate: pass); 1 regression (gate), a study that cannot go on "
              "(search, ladder) or none of whose trials completed (search); 2 bad input (one line naming file, "
              "field and value); 3 an evaluation failed (eval, gate); 4 out of disk space (free some and rerun to "
              "resume); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM; search and ladder stop cleanly, rerun "
              "to resume).")

# off a terminal (CI logs, pipes) rich would wrap tables at 80 columns
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

# (module, class, exit code, prefix of the message); matched in order
_FAILURES = (
    ("autotune.search.study", "OutOfSpace", EXIT_NO_SPACE, ""),
    ("autotune.evaluate.checkpoint", "EvalFailed", EXIT_EVAL_FAILED, "evaluation failed: "),
    ("autotune.evaluate.server", "ServerError", EXIT_EVAL_FAILED, "evaluation failed: "),
    ("autotune.search.study", "StudyFailed", EXIT_FAILED, ""),
)
_INTERRUPTS = (("autotune.search.study", "Interrupted"),)


def _loaded(module: str, name: str) -> type | None:
    m = sys.modules.get(module)
    return getattr(m, name, None) if m is not None else None


def _is(e: BaseException, module: str, name: str) -> bool:
    cls = _loaded(module, name)
    return cls is not None and isinstance(e, cls)


def error_line(e: BaseException | str, err_console: Console | None = None, prefix: str = "") -> None:
    """``error: <message>`` on stderr, one line however long (the message is not rich markup)."""
    (err_console or err).print(f"[bold red]error:[/] {escape(prefix + str(e))}", highlight=False, soft_wrap=True)


def guarded(fn: Callable[[], int | None], *, interrupted: str | None = None, err_console: Console | None = None) -> int:
    """Run ``fn`` and return its exit code (None: 0), mapping the errors above to theirs, each reported on
    stderr. ``interrupted``: what to say after Ctrl-C (e.g. how to resume). Any other exception is a bug of
    ours and propagates with its traceback."""
    out = err_console or err
    try:
        return fn() or EXIT_OK
    except typer.Exit as e:  # a command's own code
        return e.exit_code
    except UserError as e:
        error_line(e, out)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:  # autotune.procs.Terminated (SIGTERM) too
        return _interrupted(out, interrupted, getattr(e, "signum", None))
    except Exception as e:
        if any(_is(e, m, n) for m, n in _INTERRUPTS):
            return _interrupted(out, interrupted, getattr(e, "signum", None))
        for module, name, code, prefix in _FAILURES:
            if _is(e, module, name):
                detail = getattr(e, "detail", None)
                if detail:  # a crash: its traceback first, for the log
                    out.print(detail.rstrip("\n"), highlight=False, markup=False)
                error_line(e, out, prefix)
                return code
        if is_disk_full(e):  # e.g. Optuna's StorageInternalError on a full disk: no traceback, what to do
            error_line(f"{no_space_message(disk_full_reason(e))}; free some space and run the same command "
                       "again to resume", out)
            return EXIT_NO_SPACE
        raise


def no_space_message(reason: str) -> str:
    """``no space left on device``, with what could not be written when the reason says more."""
    if reason.lower().startswith("no space left on device"):
        return "n" + reason[1:]
    return f"no space left on device ({reason})"


def _interrupted(out: Console, text: str | None, signum: int | None = None) -> int:
    """One line after Ctrl-C (exit 130) or SIGTERM (``signum`` 15: exit 143, "terminated")."""
    word = "terminated (SIGTERM)" if signum == 15 else "interrupted"
    out.print(f"[yellow]{word}[/]" + (f": {escape(text)}" if text else ""), highlight=False, soft_wrap=True)
    return EXIT_TERMINATED if signum == 15 else EXIT_INTERRUPTED


def cli_errors(interrupted: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """Decorate a typer command: autotune's environment settings are checked first (``envvars.check_env``), its
    errors go through ``guarded``; a non-zero code becomes ``typer.Exit``. The command may return an exit
    code (e.g. the gate's 1 for a regression)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., None]:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> None:
            to_stderr()  # the library's warnings on stderr, as lines (autotune.logs)

            def checked() -> int | None:
                check_env()  # a bad $AUTOTUNE_* number stops the command here (exit 2), not in a worker
                return command(*args, **kwargs)

            code = guarded(checked, interrupted=interrupted)
            if code:
                raise typer.Exit(code)

        return run

    return decorate
