"""autotune's own environment settings: the numbers among them are read here, checked, and named when wrong.

=============================  ========================================================================
variable                       meaning
=============================  ========================================================================
``AUTOTUNE_HOME``              the cache root (``autotune.paths.home``)
``AUTOTUNE_PEAK_TFLOPS``       the accelerator's peak TFLOP/s for MFU, a number > 0 (default: looked up
                               by device name; ``autotune.train.summary.peak_flops``)
``AUTOTUNE_TOKENIZE_WORKERS``  processes that tokenize a source, a whole number >= 1 (default: by its
                               size; ``autotune.data.prepare.tokenize_workers``)
``AUTOTUNE_MEMORY_LIMIT``      a worker's memory cap in bytes, a whole number >= 0 (0: none); the launcher
                               sets it from ``search.launcher.memory_limit``
``AUTOTUNE_HOST``              the host name a trial records (default: the machine's)
``AUTOTUNE_VLLM_PYTHON``       the Python of vLLM's own environment
``AUTOTUNE_VLLM_ENGINE``       set by a study for its workers: the warm vLLM engine to load into
``AUTOTUNE_PROGRESS_FILE``     set by a launcher for its worker: where progress lines go
=============================  ========================================================================

A bad number is a ``UserError`` naming the variable and its value (the CLI: one line, exit 2), never a bare
``ValueError`` from ``float()``. ``check_env`` checks every number at once: the CLI calls it before any
command, so a bad setting stops the command before a worker would fail every trial on it.
"""

from __future__ import annotations

import math
import os

from autotune.errors import UserError

PEAK_TFLOPS = "AUTOTUNE_PEAK_TFLOPS"
TOKENIZE_WORKERS = "AUTOTUNE_TOKENIZE_WORKERS"
MEMORY_LIMIT = "AUTOTUNE_MEMORY_LIMIT"


def _bad(name: str, raw: str, must: str) -> UserError:
    return UserError(f"environment variable: must be {must}; set it right or unset it", field=name, value=raw)


def env_float(name: str, default: float | None = None, *, above: float | None = None,
              lo: float | None = None) -> float | None:
    """``$name`` as a finite float (``default`` when unset or empty); ``above``: it must exceed this, ``lo``:
    it must be at least this. A bad value is a ``UserError`` naming the variable and the value."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    must = "a number" + (f" > {above:g}" if above is not None else "") + (f" >= {lo:g}" if lo is not None else "")
    try:
        value = float(raw)
    except ValueError:
        raise _bad(name, raw, must) from None
    if not math.isfinite(value) or (above is not None and value <= above) or (lo is not None and value < lo):
        raise _bad(name, raw, must)
    return value


def env_int(name: str, default: int | None = None, *, lo: int | None = None) -> int | None:
    """``$name`` as a whole number (``default`` when unset or empty), at least ``lo``; ``1e9`` and ``2.0`` are
    accepted when whole. A bad value is a ``UserError`` naming the variable and the value."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    must = "a whole number" + (f" >= {lo}" if lo is not None else "")
    try:
        value = int(raw)
    except ValueError:
        try:
            as_float = float(raw)
        except ValueError:
            raise _bad(name, raw, must) from None
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise _bad(name, raw, must) from None
        value = int(as_float)
    if lo is not None and value < lo:
        raise _bad(name, raw, must)
    return value


def peak_tflops() -> float | None:
    """``$AUTOTUNE_PEAK_TFLOPS``: the accelerator's peak TFLOP/s for MFU, or None when unset."""
    return env_float(PEAK_TFLOPS, above=0)


def tokenize_workers() -> int | None:
    """``$AUTOTUNE_TOKENIZE_WORKERS``: processes that tokenize a source, or None when unset."""
    return env_int(TOKENIZE_WORKERS, lo=1)


def memory_limit() -> int:
    """``$AUTOTUNE_MEMORY_LIMIT``: a worker's memory cap in bytes; 0 when unset (no cap)."""
    return env_int(MEMORY_LIMIT, 0, lo=0) or 0


def check_env() -> None:
    """Read every numeric setting above once: the first bad one raises its ``UserError``."""
    peak_tflops()
    tokenize_workers()
    memory_limit()
