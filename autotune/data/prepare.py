"""Domain text -> packed, memory-mapped token files with a manifest, cached by content.

Layout under ``$AUTOTUNE_HOME`` (default ``~/.cache/autotune``)::

    tokenizers/<key>/            HF tokenizer folder (the demo's is a byte-level BPE trained here)
    tokens/<key>/train.bin       uint16/uint32 tokens; every document is followed by the EOS token
    tokens/<key>/heldout.bin
    tokens/<key>/manifest.json   documents, tokens and bytes per split, tokenizer hash, source files and hashes
    fingerprints/<path hash>.json   a file's sha256 while its size/mtime/ctime/inode are unchanged

``<key>`` hashes the source's content key (``sources.py``: files by size and sha256, reading options) and the
tokenizer's hash, so a second study on the same data and tokenizer reuses the tokens, wherever the files
live. Sources above ``PARALLEL_MIN_BYTES`` are tokenized by a pool of processes; the files are the same
bytes for any number of processes. Every folder is written to a temp name and renamed when complete, so a
kill never leaves a half cache.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autotune.data.sources import DATA_VERSION, DocumentSource, open_source
from autotune.errors import UserError
from autotune.hashing import tokenizer_hash
from autotune.paths import building, home
from autotune.records import digest, read_json, write_json_atomic

__all__ = ["DATA_VERSION", "EOS", "PackedDomain", "pack_domain", "source_documents", "source_key"]

EOS = "<|endoftext|>"
# Text per tokenization task: large enough that a task's overhead (pickling, a batch call) is small, small
# enough that a few tasks in flight per process bound the memory.
CHUNK_BYTES = 1 << 20
CHUNK_DOCUMENTS = 4096
# Below this many source bytes, tokenize in this process: a pool's processes each import transformers and
# load the tokenizer first (about 2-4 s each, measured on a 2-core machine).
PARALLEL_MIN_BYTES = 64 << 20
# Tasks in flight per process: enough to keep every process busy while the reader parses the next chunk.
_IN_FLIGHT_PER_WORKER = 2


# ----------------------------------------------------------------------------------------------- sources
def source_documents(source, split: str, *, where: str) -> list[str]:
    """Documents of a domain source (``demo:<name>``, ``PathSource`` or ``HFSource``) for ``split``."""
    heldout = split == "heldout"
    return [text for held, text in open_source(source, where=where, cache=home()).documents() if held == heldout]


def source_key(source, *, where: str = "source") -> dict:
    """What identifies a source's documents and split (files by size and sha256; see ``sources.py``)."""
    return open_source(source, where=where, cache=home()).key()


# ----------------------------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class PackedDomain:
    """A domain's packed tokens: ``train.bin`` / ``heldout.bin`` plus the manifest. ``cached``: found
    in the cache rather than tokenized by this call. ``origin``: this caller's ``source`` and ``files``
    (paths, sizes, hashes) where they differ from the manifest's: the cache is shared by content, so its
    manifest names the files of whichever study packed those bytes first."""

    folder: Path
    cached: bool = field(default=False, compare=False)
    origin: dict | None = field(default=None, compare=False)

    @property
    def manifest(self) -> dict:
        return {**read_json(self.folder / "manifest.json"), **(self.origin or {})}

    def tokens(self, split: str) -> np.ndarray:
        m = self.manifest
        return np.memmap(self.folder / f"{split}.bin", dtype=np.dtype(m["dtype"]), mode="r")


def tokenize_workers(size_bytes: int) -> int:
    """Processes to tokenize a source of this size: 1 (in-process) below ``PARALLEL_MIN_BYTES``, else one per
    core up to 8; ``AUTOTUNE_TOKENIZE_WORKERS`` overrides."""
    env = os.environ.get("AUTOTUNE_TOKENIZE_WORKERS")
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise UserError("must be a whole number >= 1", field="AUTOTUNE_TOKENIZE_WORKERS", value=env)
        return n
    if size_bytes < PARALLEL_MIN_BYTES:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


def pack_domain(source, tokenizer_dir: Path, *, where: str, on_progress: Callable[[str], None] | None = None,
                workers: int | None = None) -> PackedDomain:
    """Tokenize a domain source into ``train.bin`` / ``heldout.bin`` (each document followed by EOS), or find
    it in the cache. ``where`` names the domain in errors (``domains.math``); ``workers`` processes tokenize
    (default: ``tokenize_workers`` of the source's size); the output does not depend on it. The pool's
    processes are spawned, so they import the caller's main module: a script that packs a large source
    needs an ``if __name__ == "__main__":`` guard (the CLI and the worker have one)."""
    reader = open_source(source, where=where, cache=home())
    tok_hash = tokenizer_hash(tokenizer_dir)
    key = digest({"source": reader.key(), "tokenizer": tok_hash})
    final = home() / "tokens" / key
    if (final / "manifest.json").exists():
        return PackedDomain(final, cached=True, origin={
            "source": source if isinstance(source, str) else source.model_dump(mode="json"), "files": reader.files()})
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no EOS token to separate documents", field="base_model", value=str(tokenizer_dir))
    dtype = np.dtype(np.uint16 if len(tokenizer) <= 65535 else np.uint32)
    workers = workers or tokenize_workers(reader.size_bytes())
    if on_progress:
        on_progress(where)
    t0 = time.perf_counter()
    with building(final) as tmp:
        splits = _pack(reader, tokenizer_dir, tokenizer, eos, dtype, tmp, workers)
        total = sum(s["documents"] for s in splits.values())
        if total == 0:
            raise UserError("the source holds no text", field=reader.field, value=_value(source))
        if not splits["train"]["documents"] or not splits["heldout"]["documents"]:
            raise UserError(f"too few documents ({total}) for a train / held-out split", field=reader.field,
                            value=_value(source))
        seconds = time.perf_counter() - t0
        write_json_atomic(tmp / "manifest.json", {
            "data_version": DATA_VERSION, "tokenizer": str(tokenizer_dir), "tokenizer_hash": tok_hash,
            "dtype": dtype.name, "eos_token_id": eos,
            "source": source if isinstance(source, str) else source.model_dump(mode="json"),
            "key": reader.key(), "files": reader.files(), "splits": splits,
            "tokenize": {"workers": workers, "seconds": round(seconds, 2),
                         "tokens_per_s": round(sum(s["tokens"] for s in splits.values()) / max(seconds, 1e-9))}})
    return PackedDomain(final)


def _value(source):
    if isinstance(source, str):
        return source
    return getattr(source, "path", None) or getattr(source, "hf", None) or getattr(source, "from_disk", None)


def _pack(reader: DocumentSource, tokenizer_dir: Path, tokenizer, eos: int, dtype: np.dtype, out: Path,
          workers: int) -> dict:
    """Stream the reader's documents, tokenize them in order (here or in a pool), append to the .bin files."""
    splits = {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in ("train", "heldout")}
    hashes = {s: hashlib.sha256() for s in splits}

    def chunks() -> Iterator[tuple[list[str], list[bool]]]:
        texts: list[str] = []
        flags: list[bool] = []
        size = 0
        for held, text in reader.documents():
            try:
                raw = text.encode()
            except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no tokenizer takes it
                raw = text.encode("utf-8", "replace")
                text = raw.decode()
            split = "heldout" if held else "train"
            hashes[split].update(raw)
            splits[split]["documents"] += 1
            splits[split]["bytes"] += len(raw)
            texts.append(text)
            flags.append(held)
            size += len(raw)
            if size >= CHUNK_BYTES or len(texts) >= CHUNK_DOCUMENTS:
                yield texts, flags
                texts, flags, size = [], [], 0
        if texts:
            yield texts, flags

    encoder = _Encoder(tokenizer, eos, dtype)
    with open(out / "train.bin", "wb") as train_f, open(out / "heldout.bin", "wb") as held_f:
        for train_ids, held_ids in _encode_in_order(chunks(), encoder, tokenizer_dir, workers):
            train_f.write(train_ids.tobytes())
            held_f.write(held_ids.tobytes())
            splits["train"]["tokens"] += len(train_ids)
            splits["heldout"]["tokens"] += len(held_ids)
    for s, h in hashes.items():
        splits[s]["source_hash"] = h.hexdigest()[:16]
    return splits


class _Encoder:
    """Texts -> (train tokens, held-out tokens), each document followed by EOS. Per document, so the result
    does not depend on how documents are grouped into chunks or processes."""

    def __init__(self, tokenizer, eos: int, dtype: np.dtype) -> None:
        self.tokenizer, self.eos, self.dtype = tokenizer, eos, dtype

    def __call__(self, texts: list[str], heldout: list[bool]) -> tuple[np.ndarray, np.ndarray]:
        # split_special_tokens: a text that contains "<|endoftext|>" is text, not a document boundary.
        ids = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True, return_attention_mask=False,
                             return_token_type_ids=False, verbose=False)["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(lengths.sum()))
        ends = np.cumsum(lengths + 1) - 1  # where each document's EOS goes
        packed = np.empty(int(lengths.sum()) + len(ids), dtype=self.dtype)
        is_token = np.ones(len(packed), dtype=bool)
        is_token[ends] = False
        packed[is_token] = flat
        packed[ends] = self.eos
        held = np.repeat(np.asarray(heldout, dtype=bool), lengths + 1)
        return packed[~held], packed[held]


_worker_encoder: _Encoder | None = None


def _init_worker(tokenizer_dir: str, eos: int, dtype: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    from transformers import AutoTokenizer

    global _worker_encoder
    _worker_encoder = _Encoder(AutoTokenizer.from_pretrained(tokenizer_dir), eos, np.dtype(dtype))


def _encode_task(texts: list[str], heldout: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    assert _worker_encoder is not None, "_init_worker did not run"
    return _worker_encoder(texts, heldout)


def _encode_in_order(chunks: Iterator[tuple[list[str], list[bool]]], encoder: _Encoder, tokenizer_dir: Path,
                     workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Encoded chunks in input order; with ``workers`` > 1, by a pool of spawned processes with at most
    ``_IN_FLIGHT_PER_WORKER`` tasks each in flight (memory stays bounded however large the source)."""
    if workers <= 1:
        for texts, flags in chunks:
            yield encoder(texts, flags)
        return
    # spawn, not fork: the parent may hold torch and tokenizers thread pools, which do not survive a fork.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(str(tokenizer_dir), encoder.eos, encoder.dtype.name))
    pending: deque[Future] = deque()
    try:
        for texts, flags in chunks:
            pending.append(pool.submit(_encode_task, texts, flags))
            if len(pending) >= workers * _IN_FLIGHT_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as e:
        raise RuntimeError("a tokenization process died: out of memory, or (when calling pack_domain from a "
                           "script) the script lacks an `if __name__ == '__main__':` guard, which spawned "
                           "processes need; AUTOTUNE_TOKENIZE_WORKERS=1 tokenizes in-process") from e
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
