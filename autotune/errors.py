"""User-facing errors: bad input that the CLI reports in one line and exits 2 on, without a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_MISSING = object()


class UserError(Exception):
    """Bad input from the user: names the file, the field and the value.

    The CLI prints ``str(error)`` and exits with code 2. Never raise it for a bug of ours.
    """

    exit_code = 2

    def __init__(self, problem: str, *, file: str | Path | None = None, field: str | None = None,
                 value: Any = _MISSING) -> None:
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.field = field
        self.value = value
        super().__init__(self._format())

    def _format(self) -> str:
        where = ": ".join(p for p in (self.file, self.field) if p)
        text = f"{where}: {self.problem}" if where else self.problem
        if self.value is not _MISSING:
            text += f" (got {self.value!r})"
        return text


class TrialFailed(Exception):
    """A proxy run or its evaluation failed; the trial is marked failed with ``reason`` and the study goes on."""

    def __init__(self, status: str, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status}: {reason}")


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation failure: Python's MemoryError, torch's OutOfMemoryError (CUDA), or a RuntimeError from
    the CUDA or CPU allocator ("out of memory" / "can't allocate memory"). Checked without importing torch."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)
