"""Run identity, declared on the fields it comes from (marin's ``versioned(...)``), and every key derived
from it here.

Each field of a config that a study keys on carries exactly one mark:

* ``RUN``: determines what a run computes; part of the run's key (its folder under ``trials/``, its train
  state, its lm-eval run) and of the study's identity. ``RUN_UNLESS_DEFAULT``: the same, but left out of
  the key while at its default (a field added after studies had keyed their runs without it).
* ``STUDY``: determines the study but not one run's result (the replicate count, the rungs, a warning
  threshold, what is read from a run); part of the study's identity only: changing it refuses to resume.
* ``HOW``: how a run is computed, not what (micro-batch, compile, threads, state saves, launcher, sharding,
  memory cap); may change between sessions of one study.

``roles(cls)`` raises for a field without a mark, so a new knob cannot silently split or merge runs; the
test suite checks every marked class.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel


@dataclass(frozen=True)
class Identity:
    role: Literal["run", "study", "how"]
    omit_default: bool = False


RUN = Identity("run")
RUN_UNLESS_DEFAULT = Identity("run", omit_default=True)
STUDY = Identity("study")
HOW = Identity("how")
# dataclass fields carry the mark in their metadata under this key: field(default=..., metadata=mark(HOW))
_KEY = "identity"


def mark(identity: Identity) -> dict[str, Identity]:
    """Metadata for a dataclass field: ``field(default=0, metadata=mark(HOW))``."""
    return {_KEY: identity}


class UnclassifiedField(TypeError):
    """A config field without exactly one identity mark (RUN, RUN_UNLESS_DEFAULT, STUDY or HOW)."""


def roles(cls: type) -> dict[str, Identity]:
    """Each field's mark, for a pydantic model class or a dataclass."""
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        items = [(name, [m for m in info.metadata if isinstance(m, Identity)]) for name, info in cls.model_fields.items()]
    elif dataclasses.is_dataclass(cls):
        items = [(f.name, [f.metadata[_KEY]] if _KEY in f.metadata else []) for f in dataclasses.fields(cls)]
    else:
        raise TypeError(f"{cls!r} is neither a pydantic model nor a dataclass")
    out = {}
    for name, marks in items:
        if len(marks) != 1:
            raise UnclassifiedField(f"{cls.__name__}.{name} needs exactly one identity mark (RUN, RUN_UNLESS_DEFAULT, "
                                    f"STUDY or HOW; autotune/config/identity.py), has {len(marks)}")
        out[name] = marks[0]
    return out


def fields_with(cls: type, role: str) -> tuple[str, ...]:
    return tuple(name for name, ident in roles(cls).items() if ident.role == role)


def _value(obj: Any, name: str) -> Any:
    v = getattr(obj, name)
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    return v


def _default(cls: type, name: str) -> Any:
    if issubclass(cls, BaseModel):
        return cls.model_fields[name].get_default(call_default_factory=True)
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def run_key(obj: Any) -> dict[str, Any]:
    """The RUN fields of a config (a model or dataclass instance), as JSON-able values; what keys its runs."""
    cls = type(obj)
    out = {}
    for name, ident in roles(cls).items():
        if ident.role != "run":
            continue
        v = _value(obj, name)
        if ident.omit_default and v == _default(cls, name):
            continue
        out[name] = v
    return out


def without_how(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a JSON dump of ``cls``, possibly of an older format) without its HOW fields."""
    how = set(fields_with(cls, "how"))
    return {k: v for k, v in data.items() if k not in how}


def only_what(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with only the fields marked RUN or STUDY (extra keys, e.g. a Slurm launcher's, are dropped)."""
    what = set(fields_with(cls, "run")) | set(fields_with(cls, "study"))
    return {k: v for k, v in data.items() if k in what}


def omitted_defaults(model: BaseModel) -> dict[Any, Any]:
    """Pydantic's ``exclude=`` for ``model``: every field marked ``RUN_UNLESS_DEFAULT`` that holds its default,
    at any depth (inside nested models, lists and maps). A digest dumped with it is the digest of a config
    written before the field existed."""
    out: dict[Any, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        marks = [m for m in info.metadata if isinstance(m, Identity)]
        if marks and marks[0].omit_default and value == info.default:
            out[name] = True
            continue
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else None
        if isinstance(value, BaseModel):
            if sub := omitted_defaults(value):
                out[name] = sub
        elif items is not None:
            subs = {k: sub for k, v in items if isinstance(v, BaseModel) and (sub := omitted_defaults(v))}
            if subs:
                out[name] = subs
    return out


# ----------------------------------------------------------------------------------------------- proposals
MIXTURE_DIGITS = 9  # shares: float noise below 1e-9 does not split identical proposals
SCHEDULE_DIGITS = 12


def proposal_key(mixture: dict[str, float], schedule: dict[str, Any], seed: Any,
                 context: dict[str, Any] | None = None) -> dict[str, Any]:
    """What identifies a proposal wherever proposals are compared (run folders, the ladder's rungs, the
    controller's queue), with one rounding."""
    def r(v: Any, digits: int) -> Any:
        return round(v, digits) if isinstance(v, float) and math.isfinite(v) else v

    return {"mixture": {k: r(v, MIXTURE_DIGITS) for k, v in sorted(mixture.items())},
            "schedule": {k: r(v, SCHEDULE_DIGITS) for k, v in sorted(schedule.items())},
            "seed": None if seed is None else int(seed),
            **({"context": {k: r(v, MIXTURE_DIGITS) for k, v in sorted(context.items())}} if context else {})}
