"""Evaluation suites: which benchmarks score target and general abilities, and how they combine.

A suite file (``evals/*.yaml``) has the groups ``target`` and ``general`` (scored) and ``report``
(measured and recorded, not scored). Each entry is either an lm-eval task (a stock name, or a custom YAML
under one of ``task_dirs``) with the metric to read, or held-out bits-per-byte on a domain::

    backend: hf                        # hf | vllm | vllm-server (or: autotune eval --backend ...)
    batch_size: 32
    data_root: ../../shared/data/benchmarks   # where relative `data.files` live (default: this folder)
    target:
      - {task: demo_math_mc, metric: acc, normalize: chance}
      - {task: gsm8k, metric: exact_match, filter: flexible-extract, num_fewshot: 5, limit: 50,
         data: {files: {train: gsm8k/train.jsonl, test: gsm8k/test.jsonl}}}
      - {bpb: math, weight: 2}
    general:
      - {bpb: general}
    report:
      - {task: demo_math_mc, metric: gold_logprob}   # continuous: log-probability of the gold choice

Metrics are lm-eval's (``acc`` reads ``acc,none``) or one of the continuous ones computed from lm-eval's
per-sample log-likelihoods (``CONTINUOUS_METRICS``). ``normalize: chance`` rescales a multiple-choice
score so that chance is 0 and perfect is 1. Scores relative to the base model are the objective's job.

``data`` runs an unmodified lm-eval task on local files instead of its hub dataset: ``files`` names a
file per split, ``fields`` maps the file's records onto the field layout the task expects (see
``TaskData``). This module is pure (no torch, no lm_eval import): ``autotune validate`` uses it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from autotune.config.space import PathSource, read_yaml
from autotune.errors import UserError

# lm-eval metrics where lower is better; everything else (acc, acc_norm, exact_match, ...) is higher-better.
LOWER_IS_BETTER = frozenset({"bits_per_byte", "byte_perplexity", "word_perplexity", "perplexity", "bpb", "gold_bpb"})

# Continuous metrics computed from lm-eval's per-sample log-likelihoods (autotune/evaluate/continuous.py).
# At proxy scale accuracy is mostly noise (Marin: signal-to-noise 1-2 for accuracy, 8-22 for bits-per-byte;
# DataDecide: continuous likelihood metrics predict large-scale rankings best).
CONTINUOUS_METRICS = {
    "gold_logprob": ("multiple_choice",),  # mean log of the gold choice's probability mass among the choices
    "gold_prob": ("multiple_choice",),  # mean probability mass of the gold choice among the choices
    "gold_bpb": ("multiple_choice", "loglikelihood"),  # bits per UTF-8 byte of the gold continuation
}
# Metrics that chance-correction applies to: a score in [0, 1] whose chance level is 1 / number of choices.
CHANCE_METRICS = frozenset({"acc", "acc_norm", "gold_prob"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ----------------------------------------------------------------------------------------------- task data
class FieldMap(_Frozen):
    """A field built from a record: one ``path``, or a list from several ``paths``; ``map`` translates values.

    A path is dotted (``question.stem``); ``[*]`` maps over a list (``question.choices[*].text``);
    ``[2]`` takes one element. ``{path: col5, map: {A: 0, B: 1, C: 2, D: 3}}`` turns a letter into an index.
    """

    path: str | None = None
    paths: list[str] | None = None
    map: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> FieldMap:
        if (self.path is None) == (self.paths is None):
            raise ValueError("give exactly one of 'path' or 'paths'")
        return self


class TaskData(_Frozen):
    """Run a task on local files instead of its hub dataset (``dataset_path`` / ``dataset_name``).

    ``files`` names one file per split the task uses (its ``test_split`` / ``validation_split``, and the
    few-shot split when ``num_fewshot`` > 0), relative to the suite's ``data_root``. Formats: ``.jsonl``,
    ``.json`` (a list of records), ``.csv`` (``columns`` names them when the file has no header row),
    ``.txt`` (one record ``{"text": line}`` a line); each may be gzipped. Without ``fields`` the records must
    already have the task's field layout; with ``fields`` each output field (dotted names nest:
    ``choices.text``) is read from the record (a path string, or a ``FieldMap``).
    """

    files: dict[str, str] = Field(min_length=1)
    format: Literal["auto", "jsonl", "json", "csv", "text"] = "auto"
    columns: list[str] | None = None
    fields: dict[str, str | FieldMap] | None = None


# ----------------------------------------------------------------------------------------------- entries
class TaskEntry(_Frozen):
    """One lm-eval task run and the metric read from it (``acc`` reads ``acc,none``)."""

    task: str
    metric: str = "acc"
    filter: str = "none"
    weight: float = Field(1.0, gt=0)
    num_fewshot: int | None = Field(None, ge=0, description="None: the task's own default")
    limit: int | None = Field(None, ge=1, description="first N documents (lm-eval --limit)")
    normalize: Literal["none", "chance"] = "none"
    data: TaskData | None = None
    label: str | None = Field(None, description="names the entry instead of the task (one task, two settings)")

    @model_validator(mode="after")
    def _check(self) -> TaskEntry:
        if self.metric in CONTINUOUS_METRICS and self.filter != "none":
            raise ValueError(f"metric {self.metric} is computed from the unfiltered log-likelihoods: leave filter 'none'")
        if self.normalize == "chance" and self.metric not in CHANCE_METRICS:
            raise ValueError(f"normalize: chance applies to {sorted(CHANCE_METRICS)} (got metric {self.metric!r})")
        return self

    @property
    def key(self) -> str:
        return f"{self.label or self.task}/{self.metric}" + (":chance" if self.normalize == "chance" else "")

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    def run_identity(self) -> dict[str, Any]:
        """What determines the lm-eval run behind this entry: entries that share it share one run."""
        return {"task": self.task, "num_fewshot": self.num_fewshot, "limit": self.limit,
                "data": self.data.model_dump(mode="json") if self.data else None}


class BpbEntry(_Frozen):
    """Bits-per-byte of the model on a domain's held-out split (lower is better; continuous, low-noise).

    ``source`` (``demo:<name>`` or ``{path: ...}``) makes the suite self-contained for ``autotune eval``;
    in a study the domain's source from the search space is used.
    """

    bpb: str
    weight: float = Field(1.0, gt=0)
    source: str | PathSource | None = None

    @model_validator(mode="after")
    def _check(self) -> BpbEntry:
        if isinstance(self.source, str) and not self.source.startswith("demo:"):
            raise ValueError(f"a source string must be 'demo:<math|code|prose>'; use {{path: ...}} for files "
                             f"(got {self.source!r})")
        return self

    @property
    def key(self) -> str:
        return f"bpb/{self.bpb}"

    @property
    def higher_is_better(self) -> bool:
        return False


def _entry_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "bpb" if "bpb" in v else "task"
    return "bpb" if isinstance(v, BpbEntry) else "task"


Entry = Annotated[Annotated[TaskEntry, Tag("task")] | Annotated[BpbEntry, Tag("bpb")], Discriminator(_entry_kind)]


# ----------------------------------------------------------------------------------------------- backends
class HfOptions(_Frozen):
    """The ``hf`` backend (lm-eval's HFLM): a checkpoint folder, or the model already in memory."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = Field(None, description="cuda, cuda:1, cpu; default: cuda when there is one")


class VllmOptions(_Frozen):
    """The ``vllm`` (in-process ``vllm.LLM``) and ``vllm-server`` (``vllm serve`` + local-completions) backends."""

    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1, description="vllm backend only; > 1 needs ray")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=16)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    serve_command: list[str] = Field(default_factory=lambda: ["vllm", "serve"], min_length=1,
                                     description="what starts the server; the checkpoint and the flags follow")
    extra_args: list[str] = Field(default_factory=list, description="more `vllm serve` flags")
    startup_timeout_s: float = Field(900, gt=0)
    shutdown_timeout_s: float = Field(30, gt=0)
    num_concurrent: int = Field(1, ge=1, description="concurrent HTTP requests to the server")
    max_retries: int = Field(3, ge=1)
    request_timeout_s: float = Field(600, gt=0)


class Seeds(_Frozen):
    """lm-eval's four seeds; the defaults are its CLI's (``--seed 0,1234,1234,1234``)."""

    python: int | None = 0
    numpy: int | None = 1234
    torch: int | None = 1234
    fewshot: int | None = 1234


BACKENDS = ("hf", "vllm", "vllm-server")


class Suite(_Frozen):
    name: str
    backend: Literal["hf", "vllm", "vllm-server"] = "hf"
    batch_size: int = Field(32, ge=1, description="scores move with the batch size: it is part of the cache key")
    task_dirs: list[str] = Field(default_factory=list)
    data_root: str = Field(".", description="folder that relative data.files paths resolve against")
    bpb_tokens: int = Field(16384, ge=64, description="held-out tokens scored per domain for bits-per-byte")
    bpb_seq_len: int | None = Field(None, ge=8, description="window; default: the proxy seq_len (study), 1024 (autotune eval)")
    hf: HfOptions = HfOptions()
    vllm: VllmOptions = VllmOptions()
    seed: Seeds = Seeds()
    target: list[Entry]
    general: list[Entry]
    report: list[Entry] = Field(default_factory=list, description="measured and recorded, not scored")
    source_file: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _check(self) -> Suite:
        if not self.target or not self.general:
            raise ValueError("a suite needs at least one entry in both 'target' and 'general'")
        keys = [e.key for e in self.entries]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"entries appear twice: {sorted(dup)} (give one of them a 'label')")
        return self

    @property
    def entries(self) -> list[TaskEntry | BpbEntry]:
        return [*self.target, *self.general, *self.report]

    @property
    def tasks(self) -> list[TaskEntry]:
        return [e for e in self.entries if isinstance(e, TaskEntry)]

    @property
    def bpb_entries(self) -> list[BpbEntry]:
        return [e for e in self.entries if isinstance(e, BpbEntry)]

    @property
    def bpb_domains(self) -> list[str]:
        return [e.bpb for e in self.bpb_entries]

    @property
    def root(self) -> Path:
        return Path(self.source_file).resolve().parent if self.source_file else Path.cwd()

    @property
    def task_paths(self) -> list[Path]:
        return [(self.root / d).resolve() for d in self.task_dirs]

    @property
    def data_dir(self) -> Path:
        return (self.root / Path(self.data_root).expanduser()).resolve()

    def data_file(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.data_dir / p).resolve()

    def where(self, entry: TaskEntry | BpbEntry) -> str:
        """The entry's field path in the suite file (``target[1]``), for error messages."""
        for group in ("target", "general", "report"):
            for i, e in enumerate(getattr(self, group)):
                if e is entry:
                    return f"{group}[{i}]"
        return entry.key

    def digest(self) -> str:
        """Hash of the suite and of the custom task files it can load (so editing a task YAML re-evaluates)."""
        h = hashlib.sha256(self.model_dump_json().encode())
        for d in self.task_paths:
            for f in sorted(d.rglob("*")):
                if f.is_file() and f.suffix in (".yaml", ".yml", ".jsonl", ".json", ".py"):
                    h.update(f.name.encode())
                    h.update(f.read_bytes())
        return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- loading
def find_task_yaml(task: str, dirs: list[Path]) -> Path | None:
    """The custom task YAML that defines ``task`` (by its ``task:`` key) under ``dirs``, or None."""
    from autotune.evaluate.taskdefs import find_custom_task

    return find_custom_task(task, dirs)


def load_suite(path: str | Path, domains: list[str] | None = None) -> Suite:
    """Load and check a suite file; ``domains`` (from the space) checks its bits-per-byte entries.

    Checks, without importing lm_eval: task folders exist, every task is a custom or stock lm-eval task,
    data overrides name existing files and the splits the task reads, metrics fit the task's output type,
    bits-per-byte entries name domains of the space.
    """
    from autotune.evaluate.taskdefs import check_entry

    path = Path(path)
    data = read_yaml(path, "suite")
    try:
        suite = Suite.model_validate({**data, "source_file": str(path)})
    except ValidationError as e:
        raise _suite_error(e, path, data) from None
    for i, d in enumerate(suite.task_dirs):
        if not suite.task_paths[i].is_dir():
            raise UserError("task folder not found", file=path, field=f"task_dirs[{i}]", value=d)
    if any(isinstance(e, TaskEntry) and e.data for e in suite.entries) and not suite.data_dir.is_dir():
        raise UserError("data folder not found", file=path, field="data_root", value=suite.data_root)
    for group in ("target", "general", "report"):
        for i, entry in enumerate(getattr(suite, group)):
            where = f"{group}[{i}]"
            if isinstance(entry, BpbEntry) and domains is not None and entry.bpb not in domains and entry.source is None:
                raise UserError(f"not a domain of the search space (domains: {domains})",
                                file=path, field=f"{where}.bpb", value=entry.bpb)
            if isinstance(entry, TaskEntry):
                check_entry(entry, suite, file=path, where=where)
    return suite


def _suite_error(err: ValidationError, file: Path, data: Any) -> UserError:
    """The first pydantic error as one line naming file, field and value (union branch tags left out)."""
    rank = {"value_error": 0, "extra_forbidden": 1, "missing": 1, "literal_error": 1}
    first = min(err.errors(), key=lambda e: rank.get(e["type"], 2))
    branch_tags = {"str", "FieldMap", "PathSource", "int", "float", "none"}
    loc = first["loc"]
    parts: list[str] = []
    for i, item in enumerate(loc):
        # union branch tags are not levels of the YAML: the entry kind after target[i], class names elsewhere
        entry_tag = i == 2 and loc[0] in ("target", "general", "report") and isinstance(loc[1], int)
        if entry_tag or (isinstance(item, str) and (item in branch_tags or item.startswith(("function-", "literal[", "list[")))):
            continue
        parts.append(f"[{item}]" if isinstance(item, int) else ("." if parts else "") + str(item))
    field = "".join(parts) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return UserError("unknown field (a typo?)", file=file, field=field)
    if first["type"] == "missing":
        return UserError("required field is missing", file=file, field=field)
    value = first.get("input")
    if field is None or (isinstance(value, dict) and len(repr(value)) > 120):
        return UserError(msg, file=file, field=field)
    return UserError(msg, file=file, field=field, value=value)
