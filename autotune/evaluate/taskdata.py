"""Per-task data overrides: local benchmark files -> the field layout an unmodified lm-eval task reads.

A stock lm-eval task names a hub dataset (``dataset_path: allenai/ai2_arc``); offline, the suite's
``data`` override points it at local files instead. Files already in the task's layout (GSM8K's
``test.jsonl``, LAMBADA's ``lambada_test_openai.jsonl``) are passed to ``datasets``' json loader as they
are; others are converted once, by the override's ``fields`` mapping, into
``$AUTOTUNE_HOME/eval-data/<hash>/<split>.jsonl`` (a cache outside the project, keyed by the source
files' content and the mapping).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

from autotune.config.suite import FieldMap, Suite, TaskData
from autotune.errors import UserError
from autotune.evaluate.taskdefs import file_sha
from autotune.paths import building, home

_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\*|-?\d+)\]")
_MISSING = object()


def data_files(data: TaskData, suite: Suite, *, where: str) -> dict[str, str]:
    """``{split: absolute path}`` of the files lm-eval's json loader reads for this override."""
    files = {split: suite.data_file(p) for split, p in data.files.items()}
    if data.fields is None and data.format in ("auto", "jsonl") and all(p.suffix == ".jsonl" for p in files.values()):
        return {s: str(p) for s, p in files.items()}
    key = hashlib.sha256(data.model_dump_json().encode())
    for split, p in sorted(files.items()):
        key.update(f"{split}|{file_sha(p)}".encode())
    final = home() / "eval-data" / key.hexdigest()[:16]
    if not all((final / f"{s}.jsonl").exists() for s in files):
        with building(final) as tmp:
            for split, p in files.items():
                records = read_records(p, data, where=f"{where}.data.files.{split}")
                with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                    for i, rec in enumerate(records):
                        out = convert(rec, data.fields, file=p, index=i, where=where) if data.fields else rec
                        f.write(json.dumps(out, ensure_ascii=False) + "\n")
    return {s: str(final / f"{s}.jsonl") for s in files}


def read_records(path: Path, data: TaskData, *, where: str) -> list[Any]:
    """The records of one local file (jsonl / json / csv / text, optionally gzipped)."""
    name = path.name.removesuffix(".gz")
    fmt = data.format if data.format != "auto" else {".jsonl": "jsonl", ".json": "json", ".csv": "csv",
                                                       ".txt": "text"}.get(Path(name).suffix)
    if fmt is None:
        raise UserError("cannot tell the file's format from its name: set data.format (jsonl, json, csv, text)",
                        file=path, field=where)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=path, field=where) from None
    if fmt == "jsonl":
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"line {lineno} is not JSON ({e.msg})", file=path, field=where) from None
        return out
    if fmt == "json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"not JSON ({e.msg} at line {e.lineno})", file=path, field=where) from None
        if not isinstance(obj, list):
            raise UserError("a .json data file must hold a list of records", file=path, field=where)
        return obj
    if fmt == "csv":
        if data.columns:
            return [dict(zip(data.columns, row, strict=False)) for row in csv.reader(io.StringIO(text)) if row]
        return list(csv.DictReader(io.StringIO(text)))
    return [{"text": line} for line in text.splitlines() if line.strip()]


def convert(record: Any, fields: dict[str, str | FieldMap], *, file: Path, index: int = 0, where: str = "") -> dict:
    """One output record: each (dotted) output field read from ``record`` by its path or ``FieldMap``."""
    out: dict[str, Any] = {}
    for name, spec in fields.items():
        fm = spec if isinstance(spec, FieldMap) else FieldMap(path=spec)
        if fm.path is not None:
            value = _get(record, fm.path, file=file, index=index, where=f"{where}.data.fields.{name}")
        else:
            value = [_get(record, p, file=file, index=index, where=f"{where}.data.fields.{name}") for p in fm.paths or []]
        if fm.map is not None:
            value = [_mapped(v, fm, file, index, where, name) for v in value] if isinstance(value, list) else \
                _mapped(value, fm, file, index, where, name)
        cur = out
        parts = name.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return out


def _mapped(value: Any, fm: FieldMap, file: Path, index: int, where: str, name: str) -> Any:
    assert fm.map is not None
    if str(value) not in fm.map:
        raise UserError(f"record {index}: value {value!r} is not in the map {sorted(fm.map)}", file=file,
                        field=f"{where}.data.fields.{name}.map")
    return fm.map[str(value)]


def _get(record: Any, path: str, *, file: Path, index: int, where: str) -> Any:
    steps: list[str | int] = []
    for name, idx in _STEP.findall(path):
        steps.append(name if name else ("*" if idx == "*" else int(idx)))
    try:
        return _walk(record, steps)
    except (KeyError, IndexError, TypeError):
        raise UserError(f"record {index} has no {path!r} (its keys: {sorted(record) if isinstance(record, dict) else type(record).__name__})",
                        file=file, field=where, value=path) from None


def _walk(obj: Any, steps: list[str | int]) -> Any:
    for n, step in enumerate(steps):
        if step == "*":
            return [_walk(x, steps[n + 1:]) for x in obj]
        obj = obj[step]
    return obj
