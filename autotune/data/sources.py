"""Domain sources: where a domain's documents come from, read once, in a fixed order.

Three kinds behind one small interface (``DocumentSource``), built by ``open_source`` from a domain's
``source`` in the search space:

* ``demo:<name>``: the offline demo corpora (``autotune/demo/corpus.py``), already split;
* ``{path: ...}`` (``PathSource``): local files, one reader per format (jsonl, json, parquet, text, file);
* ``{hf: ...}`` / ``{from_disk: ...}`` (``HFSource``): HF ``datasets`` (``load_dataset`` / ``load_from_disk``).

File and HF sources assign each document to the held-out split by the hash of its text (so duplicates share
a split) and skip blank documents. Every problem with the user's data (no such file, an unknown format, a
missing field, a file that is not what its name says) is a ``UserError`` naming the file, the field
(``domains.math.source.text_field``) and the value.

Cache keys are content-addressed: a file enters a key by its size and sha256, not by its name or mtime, so
copying or touching the data reuses the packed tokens and editing it does not (``file_sha256``, in
``fingerprints.py``, remembers the hashes).
"""

from __future__ import annotations

import functools
import glob
import gzip
import hashlib
import itertools
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from autotune.config.sources import MAX_RECORD_BYTES, PIECE_BYTES
from autotune.data.fingerprints import file_sha256
from autotune.errors import UserError

# Bump when the demo corpus, what a document is (reading rules, the split rule) or the packing format
# changes: it is part of every source's cache key. (Tokenizing long documents in pieces did not bump it: the
# documents, their splits and their tokens are those of whole documents, see ``_cut`` and ``_assign``.)
DATA_VERSION = 1
# A streamed document (plain text, lines, a whole file) is held until its last piece, so that the whole
# text's hash decides its split as for a document read whole; up to this many bytes in memory, the rest
# in an unlinked temporary file under the cache folder.
HOLD_BYTES = 16 << 20

# Extension -> format; a trailing ``.gz`` is decompressed first (not for parquet, which compresses inside).
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
              ".txt": "text", ".md": "text", ".text": "text"}
_ROWS_PER_BATCH = 1024


class DocumentSource(Protocol):
    """A domain's text. Life cycle: ``open_source`` checks what is cheap to check (files exist, formats are
    known) -> ``key()`` identifies the content for the token cache (hashes files the first time) ->
    ``pieces()`` streams ``(heldout, text, last)`` triples, once per packing, always in the same order: a
    document longer than the source's ``piece_bytes`` comes in several pieces, ``last`` true on its final one,
    so that no document is ever held whole (``documents()`` joins them, for small sources)."""

    field: str  # the dotted spec field that names the data, for errors ("domains.math.source.path")

    def key(self) -> dict[str, Any]:
        """What determines the documents and their split: equal keys give byte-identical packed tokens."""

    def files(self) -> list[dict[str, Any]]:
        """The files read, for the manifest: ``{file, format, bytes, sha256}`` each (empty for the demo)."""

    def size_bytes(self) -> int:
        """About how many bytes ``documents()`` reads: chooses in-process or parallel tokenization."""

    def pieces(self) -> Iterator[tuple[bool, str, bool]]:
        """``(is_heldout, text, last)`` for every piece of every document, in a fixed order."""

    def documents(self) -> Iterator[tuple[bool, str]]:
        """``(is_heldout, text)`` for every document, whole (``whole_documents(self.pieces())``)."""


def whole_documents(pieces: Iterator[tuple[bool, str, bool]]) -> Iterator[tuple[bool, str]]:
    """Pieces joined into documents: holds each document whole, so for small sources (the demo) only."""
    parts: list[str] = []
    for held, text, last in pieces:
        parts.append(text)
        if last:
            yield held, "".join(parts)
            parts = []


def _assign(pieces: Iterator[Piece], fraction: float, spill: Path) -> Iterator[tuple[bool, str, bool]]:
    """A reader's pieces -> ``(heldout, text, last)``, by the rule of whole documents (``is_heldout`` of the
    whole text; blank documents dropped): a document the reader held whole comes with its text's sha256; a
    streamed one is hashed as it comes and held (``_Held``, in ``spill`` beyond ``HOLD_BYTES``) until its last
    piece decides."""
    held: bool | None = None  # the split of the document being passed through
    doc: _Held | None = None
    try:
        for text, last, sha in pieces:
            if held is None and doc is None and sha is not None:
                held = _below(sha, fraction)
            if held is not None:
                yield held, text, last
                held = None if last else held
            elif doc is None and last:  # a document in one piece: the common case
                if text.strip():
                    yield is_heldout(text, fraction), text, True
            else:
                doc = doc or _Held(spill)
                doc.add(text)
                if last:
                    yield from doc.release(fraction)
                    doc = None
    finally:
        if doc is not None:
            doc.close()


class _Held:
    """A streamed document's pieces until its last: hashed as added, kept in memory up to ``HOLD_BYTES``, then
    in an unlinked temporary file (gone with the process whatever kills it)."""

    def __init__(self, spill: Path) -> None:
        self.spill = spill
        self.sha = hashlib.sha256()
        self.texts: list[str] = []
        self.size = 0
        self.count = 0
        self.blank = True
        self.file = None

    def add(self, text: str) -> None:
        raw = text.encode("utf-8", "surrogatepass")
        self.sha.update(raw)
        self.blank = self.blank and not text.strip()
        self.count += 1
        self.size += len(raw)
        if self.file is None and self.size > HOLD_BYTES:
            self.file = tempfile.TemporaryFile(dir=_mkdir(self.spill), prefix=".pieces-")
            for t in self.texts:
                self._write(t.encode("utf-8", "surrogatepass"))
            self.texts = []
        if self.file is None:
            self.texts.append(text)
        else:
            self._write(raw)

    def _write(self, raw: bytes) -> None:
        self.file.write(struct.pack("<Q", len(raw)))
        self.file.write(raw)

    def _read(self) -> Iterator[str]:
        self.file.seek(0)
        for _ in range(self.count):
            (n,) = struct.unpack("<Q", self.file.read(8))
            yield self.file.read(n).decode("utf-8", "surrogatepass")

    def release(self, fraction: float) -> Iterator[tuple[bool, str, bool]]:
        """The pieces, split by the whole text's hash (none for a blank document)."""
        try:
            if self.blank:
                return
            held = _below(self.sha.digest(), fraction)
            for i, text in enumerate(self.texts if self.file is None else self._read(), 1):
                yield held, text, i == self.count
        finally:
            self.close()

    def close(self) -> None:
        self.texts = []
        if self.file is not None:
            self.file.close()
            self.file = None


def _bounds(spec) -> Bounds:
    return Bounds(spec.piece_bytes, getattr(spec, "max_record_bytes", MAX_RECORD_BYTES))


def _bounds_key(spec) -> dict[str, Any]:
    """``piece_bytes`` in a cache key only when set: at the default the key is the one from before pieces
    (the documents, splits and tokens are the same), so existing token caches are reused. A set value stays
    in the key, as a run without whitespace or pre-token boundary is cut where its tokens may differ
    (``_cut``). ``max_record_bytes`` only refuses input, so it is never in the key."""
    return {} if spec.piece_bytes == PIECE_BYTES else {"piece_bytes": spec.piece_bytes}


def open_source(source, *, where: str, cache: Path) -> DocumentSource:
    """The reader of a domain source (``demo:<name>``, ``PathSource`` or ``HFSource``); ``where`` is the
    spec path of the domain (``domains.math``) for errors; ``cache`` holds file hashes (and temporary
    ``datasets`` caches)."""
    from autotune.config.sources import HFSource, PathSource

    if isinstance(source, str):
        return DemoSource(source)
    if isinstance(source, PathSource):
        return FileSource(source, where=where, cache=cache)
    if isinstance(source, HFSource):
        return HFDatasetSource(source, where=where, cache=cache)
    raise TypeError(f"not a domain source: {source!r}")


def is_heldout(text: str, fraction: float) -> bool:
    """The split rule of file and HF sources: the first 8 bytes of the text's sha256, as a fraction of 2**64."""
    return _below(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest(), fraction)


def _below(sha: bytes, fraction: float) -> bool:
    return int.from_bytes(sha[:8], "big") < fraction * 2**64


# ----------------------------------------------------------------------------------------------- demo
class DemoSource:
    """``demo:<name>``: split by the demo's own keys (``autotune/demo/corpus.py``)."""

    def __init__(self, source: str) -> None:
        self.name = source.removeprefix("demo:")
        self.field = source

    def key(self) -> dict[str, Any]:
        # The stdlib-derived corpora depend on the Python version.
        return {"demo": f"demo:{self.name}", "python": sys.version_info[:2], "version": DATA_VERSION}

    def files(self) -> list[dict[str, Any]]:
        return []

    def size_bytes(self) -> int:
        return 12 << 20  # about 10 MB of text all told: in-process

    def pieces(self) -> Iterator[tuple[bool, str, bool]]:
        return ((held, d, True) for held, d in self.documents())

    def documents(self) -> Iterator[tuple[bool, str]]:
        from autotune.demo.corpus import demo_documents

        for split in ("train", "heldout"):
            for d in demo_documents(self.name, split):
                yield split == "heldout", d


# ----------------------------------------------------------------------------------------------- readers
# A reader turns one file into pieces of document text: (file, fields, join, where, bounds) -> (text, last,
# sha) triples, ``last`` closing a document, ``sha`` the whole document's sha256 where the reader held it
# whole (a parsed record: ``split_text``), else None. A document no longer than ``bounds.piece_bytes`` is one
# piece; a longer one is read (where the format allows) and yielded in pieces, so no reader holds a huge
# document whole.
Piece = tuple[str, bool, bytes | None]


@dataclass(frozen=True)
class Bounds:
    """A source's memory bounds (``config/sources.py``): pieces of ``piece_bytes``; a JSON line or JSON array
    file above ``max_record_bytes`` is refused as it is read."""

    piece_bytes: int = PIECE_BYTES
    max_record_bytes: int = MAX_RECORD_BYTES


Reader = Callable[[Path, list[str], str, str, Bounds], Iterator[Piece]]
_WHITESPACE = (b" ", b"\n", b"\t", b"\r")


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")  # noqa: SIM115


def _lines(path: Path, where: str, limit: int) -> Iterator[tuple[int, bytes, bool]]:
    """``(line number, part, ends)`` for each line of a file, read at most ``limit`` bytes at a time: a longer
    line comes in several parts, ``ends`` true on its last (a file without newlines is never read whole)."""
    try:
        with _open(path) as fh:
            lineno = 1
            while part := fh.readline(limit):
                ends = part.endswith(b"\n") or len(part) < limit  # shorter than asked: the end of the file
                yield lineno, part, ends
                lineno += ends
    except (gzip.BadGzipFile, EOFError) as e:
        raise UserError(f"not a readable gzip file ({e})", file=path, field=f"{where}.source.path") from None


def _decode(raw: bytes, path: Path, where: str, loc: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text ({e.reason} at byte {e.start} of {loc})", file=path,
                        field=f"{where}.source.path") from None


# Reversed, a pre-token boundary without whitespace: an ASCII letter before a digit or punctuation, a digit
# before a letter or punctuation (GPT-2, Llama 3 and Qwen pre-tokenizers all start a new pre-token there).
_PUNCT = rb"!-/:-@\[-`{-~"
_BOUNDARY_REVERSED = re.compile(rb"[0-9" + _PUNCT + rb"][A-Za-z]|[A-Za-z" + _PUNCT + rb"][0-9]")


def _cut(buf: bytes, limit: int) -> int:
    """Where to end a piece of ``buf`` (at most ``limit`` bytes): all of it when it fits; else at the start of
    the last whitespace run in its second half, so that a byte-level BPE's pre-tokens (`` word``, ``\\r\\n``)
    are those of the whole text; else (base64, minified code) at the last ASCII letter/digit/punctuation
    change; else (a run of CJK letters, one letter repeated) at the last UTF-8 character start, where a
    tokenizer that merges across that character boundary gives other tokens for a few bytes."""
    if len(buf) <= limit:
        return len(buf)
    lo = limit // 2
    at = max(buf.rfind(w, lo, limit + 1) for w in _WHITESPACE)  # buf[limit] exists: whitespace there is a cut
    if at > lo:
        while at > lo and buf[at - 1:at] in _WHITESPACE:
            at -= 1
        return at
    if m := _BOUNDARY_REVERSED.search(buf[lo:limit + 1][::-1]):
        return limit - m.start()  # buf[at - 1] is the letter or digit, buf[at] starts the next pre-token
    at = limit
    while at > lo and buf[at] & 0xC0 == 0x80:  # a UTF-8 continuation byte: not a character start
        at -= 1
    return at


class _Pieces:
    """One document's bytes, added in parts, out as decoded pieces of at most ``limit`` bytes (``_cut``)."""

    def __init__(self, limit: int, decode: Callable[[bytes], str]) -> None:
        self.limit, self.decode = limit, decode
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, part: bytes) -> Iterator[Piece]:
        self.parts.append(part)
        self.size += len(part)
        if self.size <= self.limit:
            return
        buf = b"".join(self.parts)
        while len(buf) > self.limit:  # a piece only where more follows: ``_cut`` may look one byte past it
            at = _cut(buf, self.limit)
            yield self.decode(buf[:at]), False, None
            buf = buf[at:]
        self.parts, self.size = [buf], len(buf)

    def finish(self, strip: bytes = b"") -> Iterator[Piece]:
        """The last piece (``strip``: trailing bytes to drop from the document)."""
        buf = b"".join(self.parts)
        self.parts, self.size = [], 0
        yield self.decode(buf.rstrip(strip) if strip else buf), True, None


def split_text(text: str, piece_bytes: int) -> Iterator[Piece]:
    """A document already in memory (a parsed record, a dataset row) as pieces for tokenization, each with
    the whole text's sha256 (its split, ``_assign``); a blank long document gives none (it is skipped)."""
    if len(text) * 4 <= piece_bytes:  # UTF-8 takes at most 4 bytes a character: one piece, no encoding
        yield text, True, None
        return
    raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate (JSON "\ud800") stays for _pack to replace
    if len(raw) <= piece_bytes:
        yield text, True, None
        return
    if text.isspace():
        return
    sha = hashlib.sha256(raw).digest()
    pieces = _Pieces(piece_bytes, lambda b: b.decode("utf-8", "surrogatepass"))
    for piece, last, _ in itertools.chain(pieces.add(raw), pieces.finish()):
        yield piece, last, sha


def _text_of(record: Any, fields: list[str], join: str, path: Path, where: str, loc: str) -> str:
    """The document of one record: its text fields, joined."""
    if not isinstance(record, dict):
        raise UserError(f"{loc} is not a JSON object (it is a {type(record).__name__})", file=path,
                        field=f"{where}.source.path")
    parts = []
    for f in fields:
        value = record.get(f)
        if not isinstance(value, str):
            held = "it is missing" if f not in record else f"it holds {type(value).__name__}"
            raise UserError(f"{loc} has no string field {f!r} ({held}; fields: {', '.join(map(str, record))})",
                            file=path, field=f"{where}.source.text_field", value=f)
        parts.append(value)
    return join.join(parts)


def _too_long(what: str, size: str, path: Path, where: str, bounds: Bounds) -> UserError:
    return UserError(f"{what} is longer than max_record_bytes ({size}; a JSON record is parsed whole, and "
                     f"holding it takes ~4x its size): raise max_record_bytes, or store the text as plain text "
                     f"(format: text or file), which is read in pieces", file=path,
                     field=f"{where}.source.max_record_bytes", value=bounds.max_record_bytes)


def docs_jsonl(path: Path, fields: list[str], join: str, where: str, bounds: Bounds) -> Iterator[Piece]:
    """One JSON object a line; blank lines are skipped; a line above ``max_record_bytes`` is refused when
    that many bytes of it have been read."""
    for lineno, raw, ends in _lines(path, where, bounds.max_record_bytes + 1):
        if not ends:
            raise _too_long(f"line {lineno}", f"{bounds.max_record_bytes} bytes", path, where, bounds)
        if not raw.strip():
            continue
        line = _decode(raw, path, where, f"line {lineno}")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"line {lineno} is not JSON ({e.msg})", file=path, field=f"{where}.source.path") from None
        del raw, line
        yield from split_text(_text_of(record, fields, join, path, where, f"line {lineno}"), bounds.piece_bytes)


def docs_json(path: Path, fields: list[str], join: str, where: str, bounds: Bounds) -> Iterator[Piece]:
    """A JSON array of objects (read whole, so refused above ``max_record_bytes``: use jsonl or parquet for
    large data), or JSON lines."""
    with _open(path) as fh:
        head = fh.read(4096).lstrip()
    if not head.startswith(b"["):
        yield from docs_jsonl(path, fields, join, where, bounds)
        return
    with _open(path) as fh:
        raw = fh.read(bounds.max_record_bytes + 1)
    if len(raw) > bounds.max_record_bytes:
        raise _too_long("this JSON array file", f"{bounds.max_record_bytes} bytes; JSON lines are read a line at "
                        "a time", path, where, bounds)
    text = _decode(raw, path, where, "the file")
    del raw
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"not JSON ({e.msg} at line {e.lineno})", file=path, field=f"{where}.source.path") from None
    for i, record in enumerate(records):
        yield from split_text(_text_of(record, fields, join, path, where, f"item {i}"), bounds.piece_bytes)


def docs_parquet(path: Path, fields: list[str], join: str, where: str, bounds: Bounds) -> Iterator[Piece]:
    """The ``fields`` columns (strings), streamed in row batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"not a Parquet file ({e})", file=path, field=f"{where}.source.path") from None
    schema = pf.schema_arrow
    for f in fields:
        if f not in schema.names:
            raise UserError(f"no column {f!r} (columns: {', '.join(schema.names)})", file=path,
                            field=f"{where}.source.text_field", value=f)
        t = schema.field(f).type
        t = t.value_type if pa.types.is_dictionary(t) else t
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
            raise UserError(f"column {f!r} holds {t}, not text", file=path, field=f"{where}.source.text_field", value=f)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=_rows_per_batch(pf, bounds), columns=fields):
            columns = [batch.column(f).to_pylist() for f in fields]
            for values in zip(*columns, strict=True):
                if any(v is None for v in values):
                    f = fields[[v is None for v in values].index(True)]
                    raise UserError(f"row {row} has no string field {f!r} (it is null)", file=path,
                                    field=f"{where}.source.text_field", value=f)
                yield from split_text(join.join(values), bounds.piece_bytes)
                row += 1
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"a damaged Parquet file ({e}) near row {row}", file=path, field=f"{where}.source.path") from None


def _rows_per_batch(pf, bounds: Bounds) -> int:
    """Rows per Parquet batch: ``_ROWS_PER_BATCH``, fewer where rows are large (by the file's own row-group
    sizes), so that a batch holds about ``max_record_bytes`` at most."""
    md = pf.metadata
    rows = sum(md.row_group(i).num_rows for i in range(md.num_row_groups))
    size = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    per_row = size / rows if rows else 0
    return max(1, min(_ROWS_PER_BATCH, int(bounds.max_record_bytes // per_row) if per_row else _ROWS_PER_BATCH))


def docs_text(path: Path, fields: list[str], join: str, where: str, bounds: Bounds) -> Iterator[Piece]:
    """Plain text: documents separated by two or more blank lines (a file without one is one document),
    streamed: a long document comes in pieces, a long line in parts."""
    limit = bounds.piece_bytes
    doc: _Pieces | None = None
    blank: bytes | None = None  # the first blank line since the last text line, and how many there were
    blanks = 0
    continued = False  # the last part read did not end its line
    for lineno, part, ends in _lines(path, where, limit):
        if not continued and ends and not _decode(part, path, where, f"line {lineno}").strip():  # str.strip: U+3000
            blank, blanks = blank if blanks else part, blanks + 1
            continue
        if not continued:  # a text line begins
            if doc is not None and blanks >= 2:
                yield from doc.finish(b"\r\n")
                doc = None
            elif doc is not None and blanks:
                yield from doc.add(blank)
            blank, blanks = None, 0
            if doc is None:
                doc = _Pieces(limit, functools.partial(_decode, path=path, where=where,
                                                       loc=f"the document at line {lineno}"))
        yield from doc.add(part)
        continued = not ends
    if doc is not None:
        yield from doc.finish(b"\r\n")


def docs_lines(path: Path, fields: list[str], join: str, where: str, bounds: Bounds) -> Iterator[Piece]:
    """One document a non-blank line (LAMBADA's plain-text passages, many sentence-per-line corpora); a line
    longer than ``piece_bytes`` comes in pieces."""
    doc: _Pieces | None = None
    for lineno, part, ends in _lines(path, where, bounds.piece_bytes):
        if doc is None:
            if ends:  # a whole line: the common case
                line = _decode(part, path, where, f"line {lineno}").rstrip("\r\n")
                if line.strip():
                    yield line, True, None
                continue
            doc = _Pieces(bounds.piece_bytes, functools.partial(_decode, path=path, where=where, loc=f"line {lineno}"))
        yield from doc.add(part)
        if ends:
            yield from doc.finish(b"\r\n")
            doc = None
    if doc is not None:
        yield from doc.finish(b"\r\n")


def docs_file(path: Path, fields: list[str], join: str, where: str, bounds: Bounds) -> Iterator[Piece]:
    """The whole file is one document (source code trees, one article a file), read in pieces."""
    doc = _Pieces(bounds.piece_bytes, functools.partial(_decode, path=path, where=where, loc="the file"))
    with _open(path) as fh:
        while block := fh.read(bounds.piece_bytes):
            yield from doc.add(block)
    yield from doc.finish()


READERS: dict[str, Reader] = {"jsonl": docs_jsonl, "json": docs_json, "parquet": docs_parquet, "text": docs_text,
                              "lines": docs_lines, "file": docs_file}


def _fields(text_field: str | list[str]) -> list[str]:
    return [text_field] if isinstance(text_field, str) else list(text_field)


# ----------------------------------------------------------------------------------------------- files
def _format_of(path: Path, fmt: str) -> str | None:
    if fmt != "auto":
        return fmt
    name = path.name.removesuffix(".gz") if not path.name.endswith(".parquet.gz") else path.name
    return EXTENSIONS.get(Path(name).suffix.lower())


class FileSource:
    """``{path: ...}``: local files in sorted path order, each read by its format's reader."""

    def __init__(self, spec, *, where: str, cache: Path) -> None:
        self.spec = spec
        self.where = where
        self.cache = cache
        self.field = f"{where}.source.path"
        self.fields = _fields(spec.text_field)
        self.join = "\n" if spec.join is None else spec.join
        pattern = os.path.expanduser(spec.path)
        if os.path.isdir(pattern):  # names starting with '.' or '_' are metadata (_SUCCESS, .crc), as for pyarrow
            root = Path(pattern)
            found = [p for p in root.rglob("*") if not any(s.startswith((".", "_")) for s in p.relative_to(root).parts)]
        else:
            found = [Path(p) for p in glob.glob(pattern, recursive=True)]
        paths = sorted(p for p in found if p.is_file())
        if not paths:
            raise UserError("no files match", field=self.field, value=spec.path)
        self.paths: list[tuple[Path, str]] = []
        for p in paths:
            fmt = _format_of(p, spec.format)
            if fmt is None:
                raise UserError(f"unknown file format {p.suffix or '(no extension)'!r}: name the file .jsonl, .json, "
                                ".parquet, .txt or .md (optionally .gz), or set format: jsonl|json|parquet|text|file",
                                file=p, field=self.field, value=spec.path)
            if p.stat().st_size == 0:
                raise UserError("empty file: no documents", file=p, field=self.field, value=spec.path)
            self.paths.append((p, fmt))
        self._hashes: list[str] | None = None

    def _sha(self) -> list[str]:
        if self._hashes is None:
            self._hashes = [file_sha256(p, self.cache) for p, _ in self.paths]
        return self._hashes

    def key(self) -> dict[str, Any]:
        files = [[fmt, p.stat().st_size, sha] for (p, fmt), sha in zip(self.paths, self._sha(), strict=True)]
        return {"files": files, "text_field": self.fields, "join": self.join,
                "heldout": self.spec.heldout_fraction, "version": DATA_VERSION, **_bounds_key(self.spec)}

    def files(self) -> list[dict[str, Any]]:
        return [{"file": str(p), "format": fmt, "bytes": p.stat().st_size, "sha256": sha}
                for (p, fmt), sha in zip(self.paths, self._sha(), strict=True)]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p, _ in self.paths)

    def pieces(self) -> Iterator[tuple[bool, str, bool]]:
        bounds = _bounds(self.spec)
        for p, fmt in self.paths:
            yield from _assign(READERS[fmt](p, self.fields, self.join, self.where, bounds), self.spec.heldout_fraction,
                               self.cache)

    def documents(self) -> Iterator[tuple[bool, str]]:
        return whole_documents(self.pieces())


# ----------------------------------------------------------------------------------------------- HF datasets
class HFDatasetSource:
    """``{hf: ...}`` / ``{from_disk: ...}``: a ``datasets.Dataset``, its text columns read in row batches.

    Local data (``from_disk``, a local folder, a file builder over local files) is keyed by the sha256 of
    its files; a hub dataset by the fingerprint ``datasets`` gives it (its repo, config, revision, split).
    Local data is converted in a temporary ``datasets`` cache that is removed after reading; hub data uses
    the user's HF cache.
    """

    def __init__(self, spec, *, where: str, cache: Path) -> None:
        from autotune.config.sources import HF_FILE_BUILDERS

        self.spec = spec
        self.where = where
        self.cache = cache
        self.fields = _fields(spec.text_field)
        self.join = "\n" if spec.join is None else spec.join
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise UserError("HF dataset sources need the 'datasets' package (pip install datasets)",
                            field=f"{where}.source", value=spec.hf or spec.from_disk) from None
        self._ds = None
        self.local_files: list[tuple[str, Path]] | None = None  # (name in the key, path) of local data
        if spec.from_disk is not None:
            self.field = f"{where}.source.from_disk"
            root = Path(spec.from_disk).expanduser()
            if not root.is_dir():
                raise UserError("folder not found", field=self.field, value=spec.from_disk)
            if not ((root / "state.json").exists() or (root / "dataset_dict.json").exists()):
                raise UserError("not a folder written by save_to_disk (no state.json or dataset_dict.json)",
                                field=self.field, value=spec.from_disk)
            self.local_files = _tree(root)
        elif spec.hf in HF_FILE_BUILDERS:
            self.field = f"{where}.source.data_files"
            patterns = [spec.data_files] if isinstance(spec.data_files, str) else list(spec.data_files)
            self.local_files = []
            for pattern in patterns:
                found = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
                if not found:
                    raise UserError("no files match", field=self.field, value=pattern)
                self.local_files += [(p.name, p) for p in found if p.is_file()]
        else:
            self.field = f"{where}.source.hf"
            if Path(spec.hf).expanduser().is_dir():
                self.local_files = _tree(Path(spec.hf).expanduser())
                if not self.local_files:
                    raise UserError("empty folder", field=self.field, value=spec.hf)

    def _datasets_version(self) -> str:
        import datasets

        return ".".join(datasets.__version__.split(".")[:2])

    def key(self) -> dict[str, Any]:
        from autotune.config.sources import HF_FILE_BUILDERS

        s = self.spec
        common = {"text_field": self.fields, "join": self.join, "heldout": s.heldout_fraction, "version": DATA_VERSION,
                  **_bounds_key(s)}
        if s.from_disk is not None:  # arrow files as saved: independent of the datasets version
            return {"from_disk": [[n, p.stat().st_size, file_sha256(p, self.cache)] for n, p in self.local_files],
                    "split": s.split, **common}
        what = {"hf": s.hf if self.local_files is None else None, "name": s.name, "split": s.split,
                "data_files": s.data_files if self.local_files is None else None, "revision": s.revision,
                "datasets": self._datasets_version()}  # builders parse files: their version matters
        if self.local_files is not None:  # a file builder's files count by content; a folder's by name too
            builder = s.hf in HF_FILE_BUILDERS
            what["files"] = [[None if builder else n, p.stat().st_size, file_sha256(p, self.cache)]
                             for n, p in self.local_files]
            what["builder"] = s.hf if builder else "folder"
        else:
            what["fingerprint"] = self._load(self.cache)._fingerprint
        return {**what, **common}

    def files(self) -> list[dict[str, Any]]:
        if self.local_files is None:
            return []
        return [{"file": str(p), "format": "hf", "bytes": p.stat().st_size, "sha256": file_sha256(p, self.cache)}
                for _, p in self.local_files]

    def size_bytes(self) -> int:
        if self.local_files is not None:
            return sum(p.stat().st_size for _, p in self.local_files)
        return int(self._load(self.cache).data.nbytes)

    def documents(self) -> Iterator[tuple[bool, str]]:
        return whole_documents(self.pieces())

    def pieces(self) -> Iterator[tuple[bool, str, bool]]:
        """Rows in batches of ``_ROWS_PER_BATCH``, each row's text in pieces of ``piece_bytes``."""
        return _assign(self._texts(), self.spec.heldout_fraction, self.cache)

    def _texts(self) -> Iterator[Piece]:
        hub = self.spec.hf is not None and self.local_files is None
        tmp = None if hub or self.spec.from_disk else Path(tempfile.mkdtemp(dir=_mkdir(self.cache), prefix=".hf-"))
        try:
            ds = self._load(tmp)
            row = 0
            for batch in ds.select_columns(self.fields).iter(batch_size=_ROWS_PER_BATCH):
                for values in zip(*(batch[f] for f in self.fields), strict=True):
                    if any(not isinstance(v, str) for v in values):
                        f = self.fields[[not isinstance(v, str) for v in values].index(True)]
                        raise UserError(f"row {row} has no string field {f!r}", field=f"{self.where}.source.text_field",
                                        value=f)
                    yield from split_text(self.join.join(values), self.spec.piece_bytes)
                    row += 1
        finally:
            self._ds = None
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _load(self, cache_dir: Path | None):
        """The dataset (one split), its text columns checked."""
        if self._ds is not None:
            return self._ds
        import datasets

        s = self.spec
        try:
            if s.from_disk is not None:
                ds = datasets.load_from_disk(str(Path(s.from_disk).expanduser()))
            else:
                kwargs = {"cache_dir": str(cache_dir)} if cache_dir and self.local_files is not None else {}
                ds = datasets.load_dataset(s.hf, s.name, split=s.split, data_files=s.data_files, revision=s.revision,
                                           **kwargs)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001  (datasets raises many kinds for a bad name, split, file or config)
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            hint = (" (study workers run offline: a hub dataset must be in the HF cache; load it once with "
                    "datasets.load_dataset first)") if isinstance(e, ConnectionError | FileNotFoundError) else ""
            field = f"{self.where}.source.split" if "split" in first.lower() and "Unknown split" in first else self.field
            raise UserError(f"datasets could not load it: {type(e).__name__}: {first}{hint}", field=field,
                            value=s.split if field.endswith(".split") else (s.hf or s.from_disk)) from None
        if isinstance(ds, datasets.DatasetDict):
            if s.split not in ds:
                raise UserError(f"no split {s.split!r} (splits: {', '.join(ds)})", field=f"{self.where}.source.split",
                                value=s.split)
            ds = ds[s.split]
        if not isinstance(ds, datasets.Dataset):
            raise UserError(f"not a Dataset ({type(ds).__name__})", field=self.field, value=s.hf or s.from_disk)
        for f in self.fields:
            if f not in ds.column_names:
                raise UserError(f"no column {f!r} (columns: {', '.join(ds.column_names)})",
                                field=f"{self.where}.source.text_field", value=f)
            feature = ds.features[f]
            if getattr(feature, "dtype", None) not in ("string", "large_string"):
                raise UserError(f"column {f!r} holds {feature}, not text", field=f"{self.where}.source.text_field",
                                value=f)
        if len(ds) == 0:
            raise UserError("the dataset has no rows", field=self.field, value=s.hf or s.from_disk)
        self._ds = ds
        return ds


def _tree(root: Path) -> list[tuple[str, Path]]:
    """Files under a folder (not hidden ones, not .git), by relative name."""
    out = [(p.relative_to(root).as_posix(), p) for p in root.rglob("*")
           if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)]
    return sorted(out)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p

