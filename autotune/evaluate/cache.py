"""The evaluation result cache: re-evaluating an unchanged checkpoint costs nothing.

lm-eval scores move with the backend, the batch size, the few-shot count and the prompt template, so a
task run is cached under the hash of all of them: backend (and its dtype / device / parallelism), model
hash, batch size, few-shot count, template hash (task YAML chain, function modules, data files), lm-eval
version, limit and seeds. Each entry is a JSON record plus lm-eval's per-sample log (jsonl) under
``$AUTOTUNE_HOME/eval-cache/<key[:2]>/``; the JSON is written last, atomically, so a present record is
complete. A checkpoint's hash (``autotune.hashing``) is memoised by its files' sizes and mtimes: a cached
re-evaluation reads a few small files and imports neither torch nor lm_eval.

``NullCache`` is the same interface that remembers nothing (``--no-cache``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from autotune.paths import home
from autotune.records import digest, read_json, write_json_atomic

# Bump when what a record holds, or how a score is computed from lm-eval's output, changes.
CACHE_FORMAT = 1


def cache_key(parts: dict[str, Any]) -> str:
    return digest({**parts, "format": CACHE_FORMAT}, n=24)


class Cache(Protocol):
    """Life cycle: ``get(key)`` before running; ``put(key, record, samples)`` after; ``samples_path(key)``."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, record: dict[str, Any], samples: list[dict] | None = None) -> None: ...

    def samples_path(self, key: str) -> Path | None: ...


class ResultCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def default(cls) -> ResultCache:
        return cls(home() / "eval-cache")

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def samples_path(self, key: str) -> Path | None:
        p = self.root / key[:2] / f"{key}.samples.jsonl"
        return p if p.exists() else None

    def get(self, key: str) -> dict[str, Any] | None:
        p = self._path(key)
        if not p.exists():
            return None
        try:
            rec = read_json(p)
        except (ValueError, OSError):
            return None  # a damaged record is a miss: the run is repeated and the record rewritten
        if rec.get("samples") and self.samples_path(key) is None:
            return None
        return rec

    def put(self, key: str, record: dict[str, Any], samples: list[dict] | None = None) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        if samples is not None:
            tmp = p.parent / f".{key}.samples.jsonl.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                for s in samples:
                    f.write(json.dumps(s, default=str, ensure_ascii=False) + "\n")
            os.replace(tmp, p.parent / f"{key}.samples.jsonl")
        write_json_atomic(p, {**record, "samples": samples is not None})


class NullCache:
    """Remembers nothing: every lookup misses."""

    def get(self, key: str) -> dict[str, Any] | None:
        return None

    def put(self, key: str, record: dict[str, Any], samples: list[dict] | None = None) -> None:
        pass

    def samples_path(self, key: str) -> Path | None:
        return None


def read_samples(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
