"""What every config schema shares: the frozen, closed base model and the parsers of YAML numbers."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """A validated record: immutable, and an unknown field is an error (a typo), not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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
