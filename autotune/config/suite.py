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
per-sample log-likelihoods (``autotune.evaluate.metrics``). ``normalize: chance`` rescales a multiple-choice
score so that chance is 0 and perfect is 1. Scores relative to the base model are the objective's job.

``data`` runs an unmodified lm-eval task on local files instead of its hub dataset: ``files`` names a
file per split, ``fields`` maps the file's records onto the field layout the task expects (see
``TaskData``). This module is the schema only, pure (no torch, no lm_eval import): ``load_suite``
(``autotune.evaluate.suite``) reads a file and checks its tasks against lm-eval's definitions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from autotune.config.base import MAX_SECONDS, MAX_WEIGHT, Bool, Float, Int, Seed, Spec, parse_bytes
from autotune.config.identity import RUN, STUDY, omitted_defaults, run_key
from autotune.config.sources import PathSource
from autotune.evaluate.metrics import CHANCE_METRICS, CONTINUOUS_METRICS, higher_is_better

GROUPS = ("target", "general", "report")  # scored, scored, recorded only


# ----------------------------------------------------------------------------------------------- task data
class FieldMap(Spec):
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


class TaskData(Spec):
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
class TaskEntry(Spec):
    """One lm-eval task run and the metric read from it (``acc`` reads ``acc,none``)."""

    # RUN: what the lm-eval run behind the entry computes (entries that share it share one run); STUDY: what
    # is read from that run and how it is scored
    task: Annotated[str, RUN]
    metric: Annotated[str, STUDY] = "acc"
    filter: Annotated[str, STUDY] = "none"
    weight: Annotated[Float, STUDY] = Field(1.0, gt=0, le=MAX_WEIGHT)
    num_fewshot: Annotated[Int | None, RUN] = Field(None, ge=0, description="None: the task's own default")
    limit: Annotated[Int | None, RUN] = Field(None, ge=1, description="first N documents (lm-eval --limit)")
    normalize: Annotated[Literal["none", "chance"], STUDY] = "none"
    data: Annotated[TaskData | None, RUN] = None
    label: Annotated[str | None, STUDY] = Field(None, description="names the entry instead of the task (one task, two settings)")

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
        return higher_is_better(self.metric)

    def run_identity(self) -> dict[str, Any]:
        """What determines the lm-eval run behind this entry (its RUN fields): entries that share it share one run."""
        return run_key(self)


class BpbEntry(Spec):
    """Bits-per-byte of the model on a domain's held-out split (lower is better; continuous, low-noise).

    ``source`` (``demo:<name>`` or ``{path: ...}``) makes the suite self-contained for ``autotune eval``;
    in a study the domain's source from the search space is used.
    """

    bpb: str
    weight: Float = Field(1.0, gt=0, le=MAX_WEIGHT)
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
        return higher_is_better("bpb")


def _entry_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "bpb" if "bpb" in v else "task"
    return "bpb" if isinstance(v, BpbEntry) else "task"


Entry = Annotated[Annotated[TaskEntry, Tag("task")] | Annotated[BpbEntry, Tag("bpb")], Discriminator(_entry_kind)]


# ----------------------------------------------------------------------------------------------- backends
class HfOptions(Spec):
    """The ``hf`` backend (lm-eval's HFLM): a checkpoint folder, or the model already in memory."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = Field(None, description="cuda, cuda:1, cpu; default: cuda when there is one")


class VllmOptions(Spec):
    """The ``vllm`` (in-process ``vllm.LLM``) and ``vllm-server`` (vLLM's OpenAI server + local-completions) backends."""

    python: str | None = Field(None, description="a Python with vLLM (a separate environment: vLLM pins its own torch "
                               "and transformers); default $AUTOTUNE_VLLM_PYTHON, else this Python. vllm-server starts "
                               "the server with it; the in-process vllm backend needs vLLM in this Python")
    tensor_parallel_size: Int = Field(1, ge=1)
    data_parallel_size: Int = Field(1, ge=1, description="vllm backend only; > 1 needs ray")
    gpu_memory_utilization: Float = Field(0.9, gt=0, le=1)
    kv_cache_memory: Int | None = Field(None, ge=1, description="KV-cache size (e.g. 1GiB) instead of "
                                        "gpu_memory_utilization; default on a machine without a GPU: 1GiB (vLLM's CPU "
                                        "build otherwise reserves gpu_memory_utilization of the machine's memory)")
    enforce_eager: Bool | None = Field(None, description="no CUDA graphs / torch.compile; default: true without a GPU")
    max_model_len: Int | None = Field(None, ge=16)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    serve_command: list[str] | None = Field(None, min_length=1, description="what starts the server, the checkpoint "
                                            "and the flags following it; default: PYTHON -m "
                                            "vllm.entrypoints.openai.api_server --model")
    extra_args: list[str] = Field(default_factory=list, description="more server flags")
    warm: Bool = Field(True, description="in a study, one vllm-server engine per controller scores every trial, each "
                       "trial's weights loaded into it in place (a trial whose model config differs starts its own)")
    startup_timeout_s: Float = Field(900, gt=0, le=MAX_SECONDS)
    shutdown_timeout_s: Float = Field(30, gt=0, le=MAX_SECONDS)
    num_concurrent: Int = Field(1, ge=1, description="concurrent HTTP requests to the server")
    max_retries: Int = Field(3, ge=1)
    request_timeout_s: Float = Field(600, gt=0, le=MAX_SECONDS)

    @field_validator("kv_cache_memory", mode="before")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        return parse_bytes(v)


class Seeds(Spec):
    """lm-eval's four seeds; the defaults are its CLI's (``--seed 0,1234,1234,1234``)."""

    python: Seed | None = 0
    numpy: Seed | None = 1234
    torch: Seed | None = 1234
    fewshot: Seed | None = 1234


BACKENDS = ("hf", "vllm", "vllm-server")


class Suite(Spec):
    name: str
    backend: Literal["hf", "vllm", "vllm-server"] = "hf"
    batch_size: Int = Field(32, ge=1, description="scores move with the batch size: it is part of the cache key")
    task_dirs: list[str] = Field(default_factory=list)
    data_root: str = Field(".", description="folder that relative data.files paths resolve against")
    bpb_tokens: Int = Field(16384, ge=64, description="held-out tokens scored per domain for bits-per-byte")
    bpb_seq_len: Int | None = Field(None, ge=8, description="window; default: the proxy seq_len (study), 1024 (autotune eval)")
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
        for group in GROUPS:
            for i, e in enumerate(getattr(self, group)):
                if e is entry:
                    return f"{group}[{i}]"
        return entry.key

    def digest(self) -> str:
        """Hash of the suite and of the custom task files it can load (so editing a task YAML re-evaluates)."""
        h = hashlib.sha256(self.model_dump_json(exclude=omitted_defaults(self)).encode())  # fields added later
        for d in self.task_paths:
            for f in sorted(d.rglob("*")):
                if f.is_file() and f.suffix in (".yaml", ".yml", ".jsonl", ".json", ".py"):
                    h.update(f.name.encode())
                    h.update(f.read_bytes())
        return h.hexdigest()[:16]


