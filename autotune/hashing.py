"""Content hashes, each fact in one place: which files make up a checkpoint or a tokenizer, and how they
are hashed. Every key that names a run, a cache entry or a study's base comes from here.

* ``checkpoint_hash(folder)``: the weights in every format HF writes (``.safetensors``, ``.bin``, ``.pt``,
  ``.pth``, sharded ``*.index.json``), the configs, and the tokenizer files. Memoised under
  ``$AUTOTUNE_HOME/hashes/`` by the files' names, sizes and modification times, so an unchanged 14 GB
  checkpoint is read once, not at every start.
* ``hub_base_hash(folder, repo_id, commit)``: a base named by Hub id (``base_model: {hf: ...}``): its
  checkpoint hash and the commit the cache resolved its revision to.
* ``tokenizer_hash(folder)``: the tokenizer files only (a model's config or weights do not change how text
  is tokenized).
* ``file_hash`` / ``files_hash``: a file's, or a list of files', bytes.
* ``state_dict_hash(model)``: a model in memory (imports torch only when called).

The formulas match what studies written before this module recorded for checkpoints of ``.json`` +
``.safetensors`` files and for JSON-only tokenizers, so those studies keep their keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from autotune.paths import home
from autotune.records import digest

# Files that hold a checkpoint's weights (sharded indexes are .json files).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Files a tokenizer is made of, by name or suffix: HF fast/slow tokenizers, sentencepiece, tiktoken.
TOKENIZER_NAMES = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                             "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja",
                             "chat_template.json"})
TOKENIZER_SUFFIXES = (".model", ".tiktoken")
# Written beside a checkpoint, not part of it: timings of the demo base's pre-training.
_NOT_CHECKPOINT = frozenset({"pretrain_summary.json"})
_CHUNK = 1 << 20


def is_tokenizer_file(path: Path) -> bool:
    return path.name in TOKENIZER_NAMES or path.suffix in TOKENIZER_SUFFIXES


def is_checkpoint_file(path: Path) -> bool:
    """Weights, configs (every ``.json``, incl. shard indexes and ``trainer_state.json``) and tokenizer files."""
    if path.name in _NOT_CHECKPOINT:
        return False
    return path.suffix in WEIGHT_SUFFIXES or path.suffix == ".json" or is_tokenizer_file(path)


def _update(h, path: Path) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)


def file_hash(path: Path, n: int = 16) -> str:
    """sha256 of one file's bytes (first ``n`` hex digits; 64 for the whole digest)."""
    h = hashlib.sha256()
    _update(h, Path(path))
    return h.hexdigest()[:n]


def files_hash(files: Iterable[Path], *, names: bool = True) -> str:
    """sha256 over files in the given order, each preceded by its name when ``names``."""
    h = hashlib.sha256()
    for f in files:
        if names:
            h.update(f.name.encode())
        _update(h, f)
    return h.hexdigest()[:16]


def _memoised(kind: str, files: list[Path], folder: Path, compute) -> str:
    stamp = digest([kind, str(folder), *[(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]], n=24)
    memo = home() / "hashes" / f"{stamp}.txt"
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    out = compute()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(out)
    except OSError:  # a read-only cache costs time, not correctness
        pass
    return out


def checkpoint_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    return sorted(f for f in folder.iterdir() if f.is_file() and is_checkpoint_file(f))


def checkpoint_hash(folder: Path) -> str:
    """Hash of what a checkpoint folder computes: weights (every format), configs, tokenizer files."""
    folder = Path(folder).resolve()
    files = checkpoint_files(folder)
    return _memoised("checkpoint", files, folder, lambda: files_hash(files))


def hub_base_hash(folder: Path, repo_id: str, commit: str) -> str:
    """The identity of a base named by Hub id: its files (``checkpoint_hash``) and the commit its revision
    resolved to, so another revision is another base even where its files are the same. The model card, a
    ``README.md``, is no checkpoint file: a card-only commit changes the commit, not the files."""
    return digest({"checkpoint": checkpoint_hash(folder), "hub": f"{repo_id}@{commit}"})


def tokenizer_hash(folder: Path) -> str:
    """Hash of a tokenizer's files in ``folder`` (a tokenizer folder or a whole checkpoint)."""
    folder = Path(folder).resolve()
    files = sorted(f for f in folder.iterdir() if f.is_file() and is_tokenizer_file(f))
    # bytes without names: the formula studies recorded before this module (JSON-only tokenizers)
    return _memoised("tokenizer", files, folder, lambda: files_hash(files, names=False))


def state_dict_hash(model) -> str:
    """Hash of a model in memory: its parameters' and buffers' names, dtypes, shapes and bytes."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
