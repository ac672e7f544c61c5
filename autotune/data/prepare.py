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
kill never leaves a half cache; what damages a finished one later (a truncated copy, a full disk while
rsyncing, a bad sector) is caught by the manifest's ``integrity`` record (each file's size and blake2b) before
the tokens are used, and the entry is rebuilt with a warning (``verify_packed``).

Memory is bounded whatever the source holds: a source yields long documents in pieces (``piece_bytes``,
``sources.py``), and a tokenization batch holds at most ``CHUNK_BYTES`` of text or one piece.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import multiprocessing
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autotune import envvars
from autotune.data.sources import DATA_VERSION, DocumentSource, open_source
from autotune.errors import UserError
from autotune.hashing import tokenizer_hash
from autotune.paths import building, home
from autotune.records import digest, read_json, write_json_atomic

_log = logging.getLogger(__name__)

__all__ = ["DATA_VERSION", "EOS", "DamagedCache", "PackedDomain", "pack_domain", "source_documents", "source_key",
           "verify_packed"]

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
# Integrity checks of a cached entry, each time it is used. Sizes always (a stat). blake2b runs at ~500 MB/s
# on one core here (measured: 256 MiB in 0.5 s), so a file up to FULL_CHECK_BYTES is hashed whole; a larger
# one by SAMPLE_BLOCKS blocks of SAMPLE_BYTES spread over it (first and last included): 16 MiB read whatever
# its size, which catches a truncated, zeroed or half-copied file, not every flipped bit.
FULL_CHECK_BYTES = 256 << 20
SAMPLE_BLOCKS = 16
SAMPLE_BYTES = 1 << 20
SPLITS = ("train", "heldout")


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
        """The split's tokens, memory-mapped; a file whose size is not the manifest's token count (damaged since
        ``pack_domain`` checked it) is a ``DamagedCache``, never a shorter stream."""
        m = self.manifest
        path = self.folder / f"{split}.bin"
        expected = m["splits"][split]["tokens"] * np.dtype(m["dtype"]).itemsize
        size = path.stat().st_size if path.exists() else None
        if size != expected:
            raise DamagedCache(f"damaged token cache {self.folder}: {path} is "
                               f"{'missing' if size is None else f'{size} bytes'}, its manifest says {expected}; "
                               "run the command again to rebuild it")
        return np.memmap(path, dtype=np.dtype(m["dtype"]), mode="r")


class DamagedCache(RuntimeError):
    """A packed-token folder that no longer matches its manifest (a crash, not bad input: rerunning rebuilds it)."""


# ----------------------------------------------------------------------------------------------- integrity
def _sample_offsets(size: int) -> list[int]:
    if size <= SAMPLE_BLOCKS * SAMPLE_BYTES:
        return [0]
    step = (size - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1)
    return [round(i * step) for i in range(SAMPLE_BLOCKS)]


def sample_hash(path: Path) -> str:
    """blake2b of a file's size and ``SAMPLE_BLOCKS`` blocks spread over it (the whole file when small)."""
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        for offset in _sample_offsets(size):
            f.seek(offset)
            h.update(f.read(SAMPLE_BYTES if size > SAMPLE_BLOCKS * SAMPLE_BYTES else size))
    return h.hexdigest()


def full_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify_packed(folder: Path) -> str | None:
    """Why a packed-token folder cannot be used (its manifest unreadable, a file missing, of the wrong size or
    not matching its checksum), or None when it is whole. A manifest written before the ``integrity`` record
    is checked by the sizes its token counts imply."""
    try:
        m = read_json(folder / "manifest.json")
        itemsize = np.dtype(m["dtype"]).itemsize
        expected = {s: int(m["splits"][s]["tokens"]) * itemsize for s in SPLITS}
        integrity = m.get("integrity") or {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{folder / 'manifest.json'} is unreadable ({type(e).__name__}: {e})"
    for s in SPLITS:
        path = folder / f"{s}.bin"
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected[s] or integrity.get(path.name, {}).get("bytes", size) != size:
            return f"{path} is {size} bytes, its manifest says {expected[s]}"
        record = integrity.get(path.name)
        if not record:
            continue
        if size <= FULL_CHECK_BYTES:
            ok = full_hash(path) == record["blake2b"]
        else:
            ok = sample_hash(path) == record["sample_blake2b"]
        if not ok:
            return f"{path} does not match its checksum"
    return None


def _integrity(folder: Path, full: dict[str, str]) -> dict:
    """The manifest's record of each token file: size, blake2b of the whole (hashed as written), sampled blake2b."""
    out = {}
    for s in SPLITS:
        path = folder / f"{s}.bin"
        out[path.name] = {"bytes": path.stat().st_size, "blake2b": full[s], "sample_blake2b": sample_hash(path)}
    return out


def _discard(folder: Path, reason: str) -> None:
    """Move a damaged entry out of the way (another process may be doing the same) and say so."""
    _log.warning("autotune: warning: damaged token cache %s: %s; rebuilding it", folder, reason)
    aside = folder.with_name(f".{folder.name}.damaged.{os.getpid()}")
    try:
        os.replace(folder, aside)
    except FileNotFoundError:  # another process moved it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def tokenize_workers(size_bytes: int) -> int:
    """Processes to tokenize a source of this size: 1 (in-process) below ``PARALLEL_MIN_BYTES``, else one per
    core up to 8; ``AUTOTUNE_TOKENIZE_WORKERS`` overrides."""
    n = envvars.tokenize_workers()  # checked: a bad value names the variable
    if n is not None:
        return n
    if size_bytes < PARALLEL_MIN_BYTES:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


def pack_domain(source, tokenizer_dir: Path, *, where: str, on_progress: Callable[[str], None] | None = None,
                workers: int | None = None, threads: bool | None = None) -> PackedDomain:
    """Tokenize a domain source into ``train.bin`` / ``heldout.bin`` (each document followed by EOS), or find
    it in the cache. ``where`` names the domain in errors (``domains.math``); ``workers`` processes tokenize
    (default: ``tokenize_workers`` of the source's size); ``threads``: the tokenizer's own threads in this
    process (``tokenizer_threads``; default: on when it tokenizes in-process, one worker). The output depends
    on neither. The pool's
    processes are spawned, so they import the caller's main module: a script that packs a large source
    needs an ``if __name__ == "__main__":`` guard (the CLI and the worker have one)."""
    reader = open_source(source, where=where, cache=home())
    tok_hash = tokenizer_hash(tokenizer_dir)
    key = digest({"source": reader.key(), "tokenizer": tok_hash})
    final = home() / "tokens" / key
    if final.exists():
        damage = verify_packed(final)
        if damage is None:
            return PackedDomain(final, cached=True, origin={
                "source": source if isinstance(source, str) else source.model_dump(mode="json"),
                "files": reader.files()})
        _discard(final, damage)
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
        threads = workers <= 1 if threads is None else threads
        splits, pieces, full = _pack(reader, tokenizer_dir, tokenizer, eos, dtype, tmp, workers, threads)
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
            "key": reader.key(), "files": reader.files(), "splits": splits, "pieces": pieces,
            "integrity": _integrity(tmp, full),
            "tokenize": {"workers": workers, "threads": threads, "seconds": round(seconds, 2),
                         "tokens_per_s": round(sum(s["tokens"] for s in splits.values()) / max(seconds, 1e-9))}})
    return PackedDomain(final)


def _value(source):
    if isinstance(source, str):
        return source
    return getattr(source, "path", None) or getattr(source, "hf", None) or getattr(source, "from_disk", None)


# A batch of texts for the tokenizer: (texts, held-out flags, last-piece flags).
Batch = tuple[list[str], list[bool], list[bool]]


def _pack(reader: DocumentSource, tokenizer_dir: Path, tokenizer, eos: int, dtype: np.dtype, out: Path,
          workers: int, threads: bool) -> tuple[dict, dict, dict[str, str]]:
    """Stream the reader's pieces, tokenize them in order (here or in a pool), append to the .bin files.
    Returns the splits' counts, the pieces' counts and each file's blake2b (hashed as it is written)."""
    splits = {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in SPLITS}
    hashes = {s: hashlib.sha256() for s in splits}
    pieces = {"piece_bytes": getattr(getattr(reader, "spec", None), "piece_bytes", None), "documents_in_pieces": 0}

    def batches() -> Iterator[Batch]:
        texts: list[str] = []
        flags: list[bool] = []
        lasts: list[bool] = []
        size = 0
        whole = True  # the current document so far came in one piece
        for held, text, last in reader.pieces():
            try:
                raw = text.encode()
            except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no tokenizer takes it
                raw = text.encode("utf-8", "replace")
                text = raw.decode()
            if texts and (size + len(raw) > CHUNK_BYTES or len(texts) >= CHUNK_DOCUMENTS):
                yield texts, flags, lasts  # before, not after, this text: a batch holds CHUNK_BYTES or one piece
                texts, flags, lasts, size = [], [], [], 0
            split = "heldout" if held else "train"
            hashes[split].update(raw)
            splits[split]["documents"] += last
            splits[split]["bytes"] += len(raw)
            pieces["documents_in_pieces"] += last and not whole
            whole = last
            texts.append(text)
            flags.append(held)
            lasts.append(last)
            size += len(raw)
        if texts:
            yield texts, flags, lasts

    encoder = _Encoder(tokenizer, eos, dtype)
    written = {s: hashlib.blake2b(digest_size=16) for s in SPLITS}
    with open(out / "train.bin", "wb") as train_f, open(out / "heldout.bin", "wb") as held_f:
        for train_ids, held_ids in _encode_in_order(batches(), encoder, tokenizer_dir, workers, threads):
            for s, f, ids in (("train", train_f, train_ids), ("heldout", held_f, held_ids)):
                data = ids.tobytes()
                f.write(data)
                written[s].update(data)
                splits[s]["tokens"] += len(ids)
    for s, h in hashes.items():
        splits[s]["source_hash"] = h.hexdigest()[:16]
    return splits, pieces, {s: h.hexdigest() for s, h in written.items()}


class _Encoder:
    """Texts -> (train tokens, held-out tokens), EOS after each document's last piece. Per text, so the result
    does not depend on how texts are grouped into batches or processes."""

    def __init__(self, tokenizer, eos: int, dtype: np.dtype) -> None:
        self.tokenizer, self.eos, self.dtype = tokenizer, eos, dtype

    def __call__(self, texts: list[str], heldout: list[bool], last: list[bool]) -> tuple[np.ndarray, np.ndarray]:
        # split_special_tokens: a text that contains "<|endoftext|>" is text, not a document boundary.
        ids = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True, return_attention_mask=False,
                             return_token_type_ids=False, verbose=False)["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        closes = np.asarray(last, dtype=bool)
        spans = lengths + closes  # each text's tokens, plus its EOS where it ends a document
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(lengths.sum()))
        eos_at = (np.cumsum(spans) - 1)[closes]
        packed = np.empty(int(spans.sum()), dtype=self.dtype)
        is_token = np.ones(len(packed), dtype=bool)
        is_token[eos_at] = False
        packed[is_token] = flat
        packed[eos_at] = self.eos
        held = np.repeat(np.asarray(heldout, dtype=bool), spans)
        return packed[~held], packed[held]


_worker_encoder: _Encoder | None = None


_PARALLELISM = "TOKENIZERS_PARALLELISM"


@contextlib.contextmanager
def tokenizer_threads(on: bool) -> Iterator[None]:
    """The tokenizer's own threads on or off for the block, then ``TOKENIZERS_PARALLELISM`` as it was: the
    tokenizers library reads the variable at each batch call (its Rust thread pool, one thread per core;
    ``RAYON_NUM_THREADS`` caps it). The worker process sets it to false with the offline switches (so that
    processes lm-eval forks later do not inherit a used thread pool); a source tokenized in-process turns it
    on around each batch instead, and leaves the caller's environment unchanged (measured:
    benchmarks/tokenizer_parallelism.py)."""
    saved = os.environ.get(_PARALLELISM)
    os.environ[_PARALLELISM] = "true" if on else "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_PARALLELISM, None)
        else:
            os.environ[_PARALLELISM] = saved


def _init_worker(tokenizer_dir: str, eos: int, dtype: str) -> None:
    os.environ[_PARALLELISM] = "false"  # this pool process only: one process per core already
    from transformers import AutoTokenizer

    global _worker_encoder
    _worker_encoder = _Encoder(AutoTokenizer.from_pretrained(tokenizer_dir), eos, np.dtype(dtype))


def _encode_task(texts: list[str], heldout: list[bool], last: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    assert _worker_encoder is not None, "_init_worker did not run"
    return _worker_encoder(texts, heldout, last)


def _encode_in_order(batches: Iterator[Batch], encoder: _Encoder, tokenizer_dir: Path, workers: int,
                     threads: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Encoded batches in input order; with ``workers`` > 1, by a pool of spawned processes with at most
    ``_IN_FLIGHT_PER_WORKER`` tasks each in flight (memory stays bounded however large the source); in this
    process, with the tokenizer's own threads if ``threads``."""
    if workers <= 1:
        for batch in batches:
            with tokenizer_threads(threads):
                encoded = encoder(*batch)
            yield encoded
        return
    # spawn, not fork: the parent may hold torch and tokenizers thread pools, which do not survive a fork.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(str(tokenizer_dir), encoder.eos, encoder.dtype.name))
    pending: deque[Future] = deque()
    try:
        for batch in batches:
            pending.append(pool.submit(_encode_task, *batch))
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
