"""Domain text -> packed, memory-mapped token files with a manifest, cached by content.

Layout under ``$AUTOTUNE_HOME`` (default ``~/.cache/autotune``)::

    tokenizers/<key>/            HF tokenizer folder (the demo's is a byte-level BPE trained here)
    tokens/<key>/train.bin       uint16/uint32 tokens, documents separated by EOS
    tokens/<key>/heldout.bin
    tokens/<key>/manifest.json   token, document and byte counts, tokenizer and source hashes

Every folder is written to a temp name and renamed when complete, so a kill never leaves a half cache.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotune.errors import UserError
from autotune.records import digest, read_json, write_json_atomic

EOS = "<|endoftext|>"
# Bump when the demo corpus or the packing format changes: it is part of every cache key.
DATA_VERSION = 1


def home() -> Path:
    env = os.environ.get("AUTOTUNE_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "autotune"


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; rename it to ``final`` when the block finishes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        yield tmp
        if final.exists():  # another process finished first: theirs is identical
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------- sources
def source_documents(source, split: str, *, where: str) -> list[str]:
    """Documents of a domain source (``demo:<name>`` or a ``PathSource``) for ``split``."""
    if isinstance(source, str):
        from autotune.data.demo import demo_documents

        return demo_documents(source.removeprefix("demo:"), split)
    return _path_documents(source, split, where=where)


def _path_documents(source, split: str, *, where: str) -> list[str]:
    files = sorted(glob.glob(os.path.expanduser(source.path), recursive=True))
    if not files:
        raise UserError("no files match", field=f"{where}.source.path", value=source.path)
    docs: list[str] = []
    for f in files:
        p = Path(f)
        if p.is_file() and p.stat().st_size == 0:
            raise UserError("empty file: no documents", file=p, field=f"{where}.source.path", value=source.path)
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=p, field=f"{where}.source") from None
        if p.suffix == ".jsonl":
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"line {lineno} is not JSON ({e.msg})", file=p, field=f"{where}.source.path",
                                    value=source.path) from None
                if not isinstance(obj, dict) or not isinstance(obj.get(source.text_field), str):
                    raise UserError(f"line {lineno} has no string field {source.text_field!r}",
                                    file=p, field=f"{where}.source.text_field", value=source.text_field)
                docs.append(obj[source.text_field])
        else:
            docs.extend(d for d in text.split("\n\n\n") if d.strip())
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError("the source holds no text", field=f"{where}.source.path", value=source.path)
    cut = source.heldout_fraction * 100
    held = [d for d in docs if int(hashlib.sha256(d.encode()).hexdigest()[:8], 16) % 100 < cut]
    train = [d for d in docs if int(hashlib.sha256(d.encode()).hexdigest()[:8], 16) % 100 >= cut]
    if not held or not train:
        raise UserError(f"too few documents ({len(docs)}) for a train / held-out split", field=f"{where}.source.path",
                        value=source.path)
    return train if split == "train" else held


def source_key(source) -> dict:
    """What identifies a source's content without reading it all (files: names, sizes, mtimes)."""
    if isinstance(source, str):
        return {"demo": source, "python": sys.version_info[:2], "version": DATA_VERSION}
    files = sorted(glob.glob(os.path.expanduser(source.path), recursive=True))
    stats = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in files]
    return {"files": stats, "text_field": source.text_field, "heldout": source.heldout_fraction, "version": DATA_VERSION}


# ----------------------------------------------------------------------------------------------- tokenizer
def train_demo_tokenizer(vocab_size: int, sources: list[str]) -> Path:
    """A byte-level BPE trained on the demo sources' train splits; cached, deterministic."""
    key = digest({"vocab": vocab_size, "sources": sorted(sources), "python": sys.version_info[:2], "v": DATA_VERSION})
    final = home() / "tokenizers" / f"demo-{key}"
    if (final / "tokenizer.json").exists():
        return final
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    docs = [d for s in sorted(sources) for d in source_documents(s, "train", where=s)]
    tok.train_from_iterator(docs, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   unk_token=None, model_max_length=1_000_000)
    with building(final) as tmp:
        fast.save_pretrained(tmp)
    return final


def tokenizer_hash(tokenizer_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(tokenizer_dir.glob("*.json")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class PackedDomain:
    """A domain's packed tokens: ``train.bin`` / ``heldout.bin`` plus the manifest."""

    folder: Path

    @property
    def manifest(self) -> dict:
        return read_json(self.folder / "manifest.json")

    def tokens(self, split: str) -> np.ndarray:
        m = self.manifest
        return np.memmap(self.folder / f"{split}.bin", dtype=np.dtype(m["dtype"]), mode="r")


def pack_domain(source, tokenizer_dir: Path, *, where: str,
                on_progress: Callable[[str], None] | None = None) -> PackedDomain:
    tok_hash = tokenizer_hash(tokenizer_dir)
    key = digest({"source": source_key(source), "tokenizer": tok_hash})
    final = home() / "tokens" / key
    if (final / "manifest.json").exists():
        return PackedDomain(final)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no EOS token to separate documents", field="base_model", value=str(tokenizer_dir))
    dtype = np.uint16 if len(tokenizer) <= 65535 else np.uint32
    manifest: dict = {"tokenizer": str(tokenizer_dir), "tokenizer_hash": tok_hash, "dtype": np.dtype(dtype).name,
                      "source": source if isinstance(source, str) else source.model_dump(), "splits": {}}
    with building(final) as tmp:
        for split in ("train", "heldout"):
            if on_progress:
                on_progress(f"{where}:{split}")
            docs = source_documents(source, split, where=where)
            h = hashlib.sha256()
            n_tokens = 0
            with open(tmp / f"{split}.bin", "wb") as f:
                for i in range(0, len(docs), 512):
                    chunk = docs[i:i + 512]
                    for d in chunk:
                        h.update(d.encode())
                    ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
                    flat = np.fromiter((t for seq in ids for t in (*seq, eos)), dtype=dtype)
                    f.write(flat.tobytes())
                    n_tokens += len(flat)
            manifest["splits"][split] = {"documents": len(docs), "tokens": n_tokens,
                                         "bytes": sum(len(d.encode()) for d in docs), "source_hash": h.hexdigest()[:16]}
        write_json_atomic(tmp / "manifest.json", manifest)
    return PackedDomain(final)
