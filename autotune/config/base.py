"""What every config schema shares: the frozen, closed base model and the parsers of YAML numbers."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict


class Frozen(BaseModel):
    """A validated record: immutable, and an unknown field is an error (a typo), not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Spec(Frozen):
    """A section of a file the user writes (a space, a suite, a gate config). Its numbers are finite
    (``.inf`` and ``.nan`` are refused, in nested maps and lists too: a suite weight of ``.inf`` made every
    score NaN); its ``Int`` and ``Float`` fields refuse booleans and its ``Bool`` fields numbers (``trials:
    true`` read as 1). Whatever validates here, every later stage accepts (``autotune search --dry-run``
    builds them all; tests/test_faults_validation.py)."""

    model_config = ConfigDict(allow_inf_nan=False)


def _not_bool(v: Any) -> Any:
    """YAML's ``true`` is a Python bool, and bool is an int: pydantic would read it as 1."""
    if isinstance(v, bool):
        raise ValueError(f"a number is expected, not {str(v).lower()}")
    return v


def _fits_int64(v: int) -> int:
    """Counts, sizes and seeds go to numpy, torch and SQLite, which hold 64-bit integers."""
    if not -(2**63) <= v < 2**63:
        raise ValueError(f"{v} is too large (a 64-bit integer at most)")
    return v


Int = Annotated[int, BeforeValidator(_not_bool), AfterValidator(_fits_int64)]
Float = Annotated[float, BeforeValidator(_not_bool)]  # finite: Spec's allow_inf_nan=False
Bool = Annotated[bool, Strict()]  # true or false; not 1, not "yes" (YAML reads yes/no as booleans already)
# numpy's legacy seeding (lm-eval's numpy seed) takes 0 <= seed < 2**32; torch and numpy's Generator take those too
Seed = Annotated[Int, Field(ge=0, lt=2**32)]
# 10**15 tokens: over 60 times the largest published training runs (Llama 3: 1.5e13); far below 2**63
MAX_TOKENS = 10**15
# a year: longer waits overflow the timeouts of threading and subprocess (OverflowError), and mean "never"
MAX_SECONDS = 365 * 86400
# a suite entry's weight is relative to the others: above this the group's weighted sum could overflow
MAX_WEIGHT = 1e6


def whole_tokens(v: Any) -> Any:
    """YAML reads 1e5 as a string and 1.0e5 as a float; token counts are whole numbers."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(v: Any) -> Any:
    """``8GiB``, ``512 MiB``, ``8e9``, ``8GB`` -> bytes (int); anything else is left for the field to refuse."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", v)
        if not m or m.group(2).lower() not in BYTE_UNITS:
            raise ValueError(f"{v!r} is not a size: write bytes or a number with KiB, MiB, GiB, TiB, KB, MB, GB, TB")
        return int(float(m.group(1)) * BYTE_UNITS[m.group(2).lower()])
    return whole_tokens(v)
