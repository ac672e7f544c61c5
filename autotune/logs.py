"""Logging: library code logs to ``logging.getLogger(__name__)`` (under ``autotune``), never ``print``; the
application shows it.

The applications are the CLI (``autotune ...``: warnings on stderr, as they were printed before) and the
worker process (``python -m autotune.search.worker``: warnings and notes on its stderr, which is the
trial's ``worker.log``). A Python caller configures ``logging`` as usual (``logging.basicConfig(level=
logging.INFO)`` shows each trial's progress); with no configuration at all, warnings still reach stderr
(logging's last resort). Nothing here touches another library's loggers (Optuna's, transformers'): the CLI
quiets Optuna itself (``autotune.cli.logs``), a Python caller keeps its own settings.

The worker's stdout is not logging: it carries the progress protocol (``autotune.search.protocol``).
"""

from __future__ import annotations

import logging
import sys

ROOT = "autotune"


class _Stderr(logging.Handler):
    """Each message as it is, one a line, on the ``sys.stderr`` of the moment of the call (a test runner or
    typer's ``CliRunner`` swaps it), flushed: what ``print(..., file=sys.stderr)`` did."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001  (logging's own contract: a broken stream never raises into the caller)
            self.handleError(record)


def to_stderr(level: int = logging.WARNING) -> logging.Handler:
    """Show autotune's messages at ``level`` and above on stderr, as plain lines; installed once per process
    (a second call only sets the level). For applications (the CLI, the worker), not for library code."""
    logger = logging.getLogger(ROOT)
    handler = next((h for h in logger.handlers if isinstance(h, _Stderr)), None)
    if handler is None:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    handler.setLevel(level)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    return handler
