"""Reading config files: YAML -> a mapping, ``--set key.sub=value`` overrides, and pydantic's validation
errors -> one ``UserError`` line naming the file, the field and the value."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from autotune.errors import UserError


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, a parse error or a non-mapping is a UserError naming the file."""
    if not path.exists():
        raise UserError(f"{what} file not found", file=path)
    if path.is_dir():
        raise UserError(f"{what} is a folder, not a YAML file", file=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"invalid YAML{where}: {problem}", file=path) from None
    if not isinstance(data, dict):
        raise UserError(f"a {what} must be a YAML mapping", file=path, value=type(data).__name__ if data is not None else None)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], file: Path,
                    presets: Mapping[Any, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a loaded mapping.

    ``presets``: named values a field may hold instead of a mapping (``base_model: demo:tiny-base``); setting
    a field inside one expands it to its mapping first.
    """
    presets = presets or {}
    for item in overrides:
        if "=" not in item:
            raise UserError("an override must read key.sub=value", field="--set", value=item)
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        cur = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = cur.get(part)
            if nxt is None or (isinstance(nxt, str) and nxt in presets):  # a preset name expands to its mapping, to set a field inside
                nxt = cur[part] = dict(presets.get(nxt, {}))
            if not isinstance(nxt, dict):
                raise UserError(f"cannot set a field inside a {type(nxt).__name__}", file=file, field=key, value=nxt)
            cur = nxt
        cur[parts[-1]] = value
    return data


# ----------------------------------------------------------------------------------------------- errors
# Unions (float | FloatRange, str | PathSource) report one error per branch: prefer our own checks, then
# unknown / missing fields, over "not a number" from the branch the user did not mean.
_RANK = {"value_error": 0, "extra_forbidden": 1, "missing": 1, "literal_error": 1}


def _rank(error: dict[str, Any]) -> int:
    """An error's rank (lower says more); "not a number" for a mapping or a list comes from a union branch
    the user did not mean (``float`` of ``float | FloatRange``): after the errors inside the branch they meant."""
    if error["type"].endswith("_type") and isinstance(error.get("input"), dict | list):
        return 3
    return _RANK.get(error["type"], 2)
# Tags pydantic puts in ``loc`` for validators and union branches it names itself.
_GENERATED_TAGS = ("function-", "literal[", "list[")


@dataclass(frozen=True)
class ErrorStyle:
    """How ``validation_error_to_user_error`` reads and words an error (the loaders differ here)."""

    # Union-branch tags in ``loc`` that are no level of the YAML (``str``, ``PathSource``), left out of the
    # field together with pydantic's own (``function-...``, ``literal[...]``, ``list[...]``); None: keep all.
    branch_tags: Collection[str] | None = ()
    # Other ``loc`` items that are no level of the YAML: ``skip_level(loc, i)`` is true for ``loc[i]``.
    skip_level: Callable[[tuple[Any, ...], int], bool] | None = None
    # True: the error that says most (see _RANK); False: pydantic's first.
    ranked: bool = True
    index: str = "[{}]"  # a list index in the field
    prefix: str = ""  # before the field
    top_level: str | None = None  # the field when ``loc`` is all tags
    # A message around pydantic's, as it is (``{msg}``): then the field but no value, and no wording of ours
    # for unknown or missing fields.
    template: str | None = None
    elide_over: int | None = 120  # a mapping whose repr is longer is not shown as the value


YAML_ERRORS = ErrorStyle()
# pydantic's first error, its ``loc`` joined with dots, every mapping shown.
PLAIN_ERRORS = ErrorStyle(branch_tags=None, ranked=False, index=".{}", elide_over=None)


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    cur = data
    for item in loc:
        if isinstance(cur, dict) and item in cur:
            cur = cur[item]
        elif isinstance(cur, list) and isinstance(item, int) and item < len(cur):
            cur = cur[item]
        elif item == "bounds":
            continue
        else:
            return None
    return cur


def _field(loc: tuple[Any, ...], style: ErrorStyle) -> str | None:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if style.skip_level is not None and style.skip_level(loc, i):
            continue
        if isinstance(item, int):
            parts.append(style.index.format(item))
        elif style.branch_tags is not None and isinstance(item, str) and (
                item in style.branch_tags or item.startswith(_GENERATED_TAGS)):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    path = "".join(parts)
    return style.prefix + path if style.prefix or path else style.top_level


def validation_error_to_user_error(err: ValidationError, file: Path, data: Any = None,
                                   style: ErrorStyle = YAML_ERRORS) -> UserError:
    """One of pydantic's errors as one line naming the file, the field and the value."""
    errors = err.errors()
    first = min(errors, key=_rank) if style.ranked else errors[0]
    loc = tuple(first["loc"])
    field = _field(loc, style)
    if style.template is not None:
        return UserError(style.template.format(msg=first["msg"]), file=file, field=field)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return UserError("unknown field (a typo?)", file=file, field=field)
    if first["type"] == "missing":
        return UserError("required field is missing", file=file, field=field)
    if not loc or field is None:  # a check across fields: its message names them
        return UserError(msg, file=file)
    value = first.get("input", _lookup(data, loc))
    if style.elide_over is not None and isinstance(value, dict) and len(repr(value)) > style.elide_over:
        return UserError(msg, file=file, field=field)
    return UserError(msg, file=file, field=field, value=value)
