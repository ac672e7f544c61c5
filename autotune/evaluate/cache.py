"""The evaluation result cache: re-evaluating an unchanged checkpoint costs nothing.

lm-eval scores move with the backend, the batch size, the few-shot count and the prompt template, so a
task run is cached under the hash of all of them: backend (and its dtype / device / parallelism), model
hash, batch size, few-shot count, template hash (task YAML chain, function modules, data files), lm-eval
version, limit and seeds. Each entry is a JSON record plus lm-eval's per-sample log (jsonl) under
``$AUTOTUNE_HOME/eval-cache/<key[:2]>/``; the JSON is written last, atomically, so a present record is
complete. Looking up a checkpoint's hash is memoised by its files' sizes and mtimes: a cached
re-evaluation reads a few small files and imports neither torch nor lm_eval.

``NullCache`` is the same interface that remembers nothing (``--no-cache``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

from autotune.records import digest, read_json, write_json_atomic

# Bump when what a record holds, or how a score is computed from lm-eval's output, changes.
CACHE_FORMAT = 1
# Files that make up a checkpoint: weights, config, tokenizer.
_CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".tiktoken")


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
        from autotune.data.prepare import home

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


# ----------------------------------------------------------------------------------------------- model hashes
def checkpoint_hash(path: Path, memo_dir: Path | None = None) -> str:
    """Hash of a checkpoint folder's weights, config and tokenizer files.

    Hashing a 14 GB checkpoint takes a minute, so the result is memoised under ``memo_dir`` by the files'
    names, sizes and modification times (what an unchanged checkpoint keeps).
    """
    path = Path(path).resolve()
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in _CHECKPOINT_SUFFIXES
                   and f.name != "pretrain_summary.json")
    stamp = digest([str(path), *[(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]], n=24)
    memo = (memo_dir / f"{stamp}.txt") if memo_dir is not None else None
    if memo is not None and memo.exists():
        return memo.read_text().strip()
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    out = h.hexdigest()[:16]
    if memo is not None:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(out)
    return out


def state_dict_hash(model) -> str:
    """Hash of a model in memory: its parameters' and buffers' names, dtypes, shapes and bytes."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
