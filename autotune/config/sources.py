"""Where a domain's text comes from: local files (``PathSource``), a Hugging Face dataset (``HFSource``) or
the embedded demo corpus (``demo:<name>``); ``Domain`` pairs a source with its role."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from autotune.config.base import Float, Int, Spec
from autotune.config.identity import RUN_UNLESS_DEFAULT
from autotune.demo.corpus import DEMO_SOURCES

# Builders of HF `datasets` that read local files: with ``hf: json`` etc., ``data_files`` are local paths.
HF_FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")

# Memory bounds of reading and tokenizing (issue 15 #9: one 20 MB document took ~4 GB). A fast tokenizer holds
# ~200 bytes per byte of text while it encodes (measured on a byte-level BPE: 1 MB -> ~220 MB), so a
# document is tokenized in pieces of ``piece_bytes``, 16 to a 1 MiB batch (one 1 MiB text a batch ran at half
# the speed of many short ones: the tokenizer parallelises across a batch's texts); a record that must be
# parsed whole (a JSON line, a JSON array file) is refused above ``max_record_bytes`` (json.loads holds
# ~3-4x a line's size).
PIECE_BYTES = 64 << 10
MAX_RECORD_BYTES = 64 << 20
MIN_BOUND_BYTES = 1 << 10


def _text_fields(v: str | list[str]) -> str | list[str]:
    if isinstance(v, list) and (not v or len(set(v)) != len(v)):
        raise ValueError(f"text_field: a field name or a list of distinct field names (got {v})")
    if any(not f for f in ([v] if isinstance(v, str) else v)):
        raise ValueError("text_field: an empty field name")
    return v


class _TextOptions(Spec):
    """What both file and HF sources take: the text field(s), how to join them, the held-out share, and
    ``piece_bytes``: a document longer than this is read and tokenized in pieces of about this size, cut
    before a whitespace character where there is one. It stays one document (one EOS at its end, one split,
    decided by its first piece), and a byte-level BPE gives the same tokens as for the whole text; the bound
    only keeps memory flat (a tokenization batch holds 1 MiB of text, ~220 MB while tokenizing)."""

    text_field: str | list[str] = "text"
    join: str | None = Field(None, description="between the fields of a text_field list (default: a newline)")
    heldout_fraction: Float = Field(0.05, gt=0, lt=0.5)
    # RUN_UNLESS_DEFAULT: a suite digest (run keys) is the same as before the field existed while it is default
    piece_bytes: Annotated[Int, RUN_UNLESS_DEFAULT] = Field(PIECE_BYTES, ge=MIN_BOUND_BYTES,
                                                            description="tokenize longer documents in pieces")

    @field_validator("text_field")
    @classmethod
    def _fields(cls, v: str | list[str]) -> str | list[str]:
        return _text_fields(v)


class PathSource(_TextOptions):
    """Local files. ``path`` is a file, a folder (every file under it but names starting with ``.`` or
    ``_``, such as ``_SUCCESS``) or a glob (``data/**/*.jsonl``), relative to the space file; files are read
    in sorted path order. The format comes from the extension
    (a ``.gz`` suffix is decompressed), or from ``format`` for every file:

    * ``jsonl`` (``.jsonl``, ``.ndjson``): one JSON object a line, the text under ``text_field``;
    * ``json`` (``.json``): an array of such objects (or JSON lines);
    * ``parquet`` (``.parquet``, ``.pq``): the ``text_field`` column(s), read in row batches;
    * ``text`` (``.txt``, ``.md``, ``.text``): documents separated by two or more blank lines;
    * ``lines``: each non-blank line is one document (e.g. LAMBADA's plain-text passages);
    * ``file``: each file is one document (any extension; e.g. ``{path: src/**/*.py, format: file}``).

    ``text_field`` may list several fields (``[question, answer]``), joined with ``join`` (default: a
    newline). A document goes
    to the held-out split when the hash of its text falls in the first ``heldout_fraction``.

    Memory stays bounded whatever the files hold: text, lines and whole files are streamed, and a document
    longer than ``piece_bytes`` is tokenized in pieces (see above); what must be parsed whole, a JSON line or a
    JSON array file, is refused above ``max_record_bytes`` (default 64 MiB) as it is read.
    """

    path: str
    format: Literal["auto", "jsonl", "json", "parquet", "text", "lines", "file"] = "auto"
    max_record_bytes: Annotated[Int, RUN_UNLESS_DEFAULT] = Field(MAX_RECORD_BYTES, ge=MIN_BOUND_BYTES,
                                  description="the longest JSON line (or JSON array file) read")

    def resolved(self, root: Path) -> PathSource:
        """This source with ``path`` made absolute against ``root`` (the space file's folder)."""
        p = Path(self.path).expanduser()
        return self.model_copy(update={"path": str(p if p.is_absolute() else root / p)})


class HFSource(_TextOptions):
    """A Hugging Face ``datasets`` dataset (needs the ``datasets`` package):

    * ``{hf: openai/gsm8k, name: main, split: train, text_field: question}``: ``load_dataset`` of a hub
      dataset from the HF cache (study workers run offline: load it once beforehand, e.g.
      ``python -c "import datasets; datasets.load_dataset('openai/gsm8k', 'main')"``); ``revision`` pins a commit;
    * ``{hf: data/gsm8k_repo, split: train}``: a local folder ``load_dataset`` reads (a dataset repo's
      data files, with or without its README config); ``data_files`` are relative to that folder;
    * ``{hf: json, data_files: [data/a.jsonl, data/b.jsonl]}``: a file builder (json, csv, parquet, text,
      arrow, pandas) over local files, relative to the space file;
    * ``{from_disk: data/saved, split: train}``: ``load_from_disk`` of a folder written by ``save_to_disk``
      (a ``DatasetDict``: ``split`` picks one; a ``Dataset``: ``split`` is not used).

    ``split`` takes ``load_dataset`` slices (``train[:10%]``). ``text_field``, ``join`` and
    ``heldout_fraction`` as for ``{path: ...}``.
    """

    hf: str | None = None
    from_disk: str | None = None
    name: str | None = None
    split: str = "train"
    data_files: str | list[str] | None = None
    revision: str | None = None

    @model_validator(mode="after")
    def _check(self) -> HFSource:
        if (self.hf is None) == (self.from_disk is None):
            raise ValueError("give exactly one of 'hf' (load_dataset) or 'from_disk' (load_from_disk)")
        if self.from_disk is not None and (self.name or self.data_files or self.revision):
            raise ValueError("name, data_files and revision go with 'hf', not with 'from_disk'")
        if self.hf in HF_FILE_BUILDERS and not self.data_files:
            raise ValueError(f"hf: {self.hf} reads local files: give data_files")
        return self

    def resolved(self, root: Path) -> HFSource:
        """This source with local paths made absolute against ``root``; a hub name is left as it is."""
        def local(p: str) -> str:
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else root / q)

        if self.from_disk is not None:
            return self.model_copy(update={"from_disk": local(self.from_disk)})
        if self.hf in HF_FILE_BUILDERS:
            files = [self.data_files] if isinstance(self.data_files, str) else list(self.data_files or [])
            resolved = [local(f) for f in files]
            return self.model_copy(update={"data_files": resolved[0] if isinstance(self.data_files, str) else resolved})
        if Path(local(self.hf)).is_dir():  # a local dataset folder; else a hub name
            return self.model_copy(update={"hf": local(self.hf)})
        return self


def _source_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "HFSource" if "hf" in v or "from_disk" in v else "PathSource"
    return type(v).__name__ if isinstance(v, PathSource | HFSource) else "str"


# YAML: ``demo:<name>``, ``{path: ...}`` or ``{hf: ...}`` / ``{from_disk: ...}``; the keys pick the kind,
# so a typo is reported against the kind the user meant.
DomainSource = Annotated[Annotated[str, Tag("str")] | Annotated[PathSource, Tag("PathSource")]
                         | Annotated[HFSource, Tag("HFSource")], Discriminator(_source_kind)]


class Domain(Spec):
    """A data domain: where its text comes from, and whether it is a target or a general (replay) ability."""

    source: DomainSource
    role: Literal["target", "general"]

    @field_validator("source")
    @classmethod
    def _source(cls, v: str | PathSource | HFSource) -> str | PathSource | HFSource:
        if isinstance(v, str) and not v.startswith("demo:"):
            raise ValueError(f"a source string must be 'demo:<math|code|prose>'; use {{path: ...}} for files "
                             f"or {{hf: ...}} for HF datasets (got {v!r})")
        if isinstance(v, str) and v.removeprefix("demo:") not in DEMO_SOURCES:
            raise ValueError(f"unknown demo source {v!r}; choose from {['demo:' + s for s in DEMO_SOURCES]}")
        return v

