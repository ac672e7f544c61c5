"""User-facing errors: bad input that the CLI reports in one line and exits 2 on, without a traceback."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from autotune.redact import redact

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
        return redact(text)  # a storage URL's password, wherever a message quotes it


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


def is_disk_full(e: BaseException) -> bool:
    """No space left on a filesystem, in ``e`` or an exception it wraps (``__cause__`` / ``__context__``, e.g.
    Optuna's StorageInternalError around SQLAlchemy's around sqlite3's): an OSError ENOSPC or EDQUOT (over
    quota), SQLite's "database or disk is full", PostgreSQL's disk full (SQLSTATE 53100), or a library's
    message "No space left on device". Checked without importing those libraries."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        msg = str(cur).lower()
        if "no space left on device" in msg or "database or disk is full" in msg or getattr(cur, "pgcode", None) == "53100":
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def disk_full_reason(e: BaseException) -> str:
    """The innermost disk-full error of ``e`` in one line: ``No space left on device: '/path'``."""
    cur: BaseException | None = e
    found = e
    seen: set[int] = set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if is_disk_full(cur):
            found = cur
        cur = cur.__cause__ or cur.__context__
    if isinstance(found, OSError) and found.strerror:
        return found.strerror + (f": {found.filename}" if found.filename else "")
    return (str(found).splitlines() or [type(found).__name__])[0][:300]
