"""Where a domain's text comes from: local files (``PathSource``), a Hugging Face dataset (``HFSource``) or
the embedded demo corpus (``demo:<name>``); ``Domain`` pairs a source with its role."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from autotune.config.base import Frozen
from autotune.demo.corpus import DEMO_SOURCES

# Builders of HF `datasets` that read local files: with ``hf: json`` etc., ``data_files`` are local paths.
HF_FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")


def _text_fields(v: str | list[str]) -> str | list[str]:
    if isinstance(v, list) and (not v or len(set(v)) != len(v)):
        raise ValueError(f"text_field: a field name or a list of distinct field names (got {v})")
    if any(not f for f in ([v] if isinstance(v, str) else v)):
        raise ValueError("text_field: an empty field name")
    return v


class _TextOptions(Frozen):
    """What both file and HF sources take: the text field(s), how to join them, the held-out share."""

    text_field: str | list[str] = "text"
    join: str | None = Field(None, description="between the fields of a text_field list (default: a newline)")
    heldout_fraction: float = Field(0.05, gt=0, lt=0.5)

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
    """

    path: str
    format: Literal["auto", "jsonl", "json", "parquet", "text", "lines", "file"] = "auto"

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


class Domain(Frozen):
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

