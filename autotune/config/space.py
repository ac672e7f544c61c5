"""The search space: YAML -> validated, frozen ``SearchSpace``.

Every searchable field is either fixed (a plain value) or searched:

* a float range ``{low: 1e-4, high: 3e-3, log: true}``,
* a choice ``[wsd, cosine, linear]``.

Errors name the file, the field (dotted path) and the bad value; ``load_space`` raises ``UserError``.
This module imports neither torch nor optuna: ``autotune validate`` runs on it alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from autotune.errors import UserError

ROLES = ("target", "general")
SCHEDULE_KINDS = ("wsd", "cosine", "linear", "constant")
SAMPLERS = ("tpe", "random", "qmc", "cmaes", "gp")
# Tolerance for sums of shares: YAML floats like 0.1 + 0.2 are not exact.
_EPS = 1e-9


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FloatRange(_Frozen):
    """A searched float: uniform on [low, high], or log-uniform when ``log`` is true."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low must be below high (low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (low={self.low})")
        return self


SearchFloat = float | FloatRange
DecayShape = Literal["linear", "cosine", "1-sqrt"]


def _in_unit(name: str, value: SearchFloat, *, high_open: bool = False) -> None:
    lo, hi = (value.low, value.high) if isinstance(value, FloatRange) else (value, value)
    if lo < 0 or hi > 1 or (high_open and hi >= 1):
        raise ValueError(f"{name} must lie in [0, 1{')' if high_open else ']'} (got {value})")


# ----------------------------------------------------------------------------------------------- domains
# Builders of HF `datasets` that read local files: with ``hf: json`` etc., ``data_files`` are local paths.
HF_FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")


def _text_fields(v: str | list[str]) -> str | list[str]:
    if isinstance(v, list) and (not v or len(set(v)) != len(v)):
        raise ValueError(f"text_field: a field name or a list of distinct field names (got {v})")
    if any(not f for f in ([v] if isinstance(v, str) else v)):
        raise ValueError("text_field: an empty field name")
    return v


class _TextOptions(_Frozen):
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
    * ``file``: each file is one document (any extension; e.g. ``{path: src/**/*.py, format: file}``).

    ``text_field`` may list several fields (``[question, answer]``), joined with ``join`` (default: a
    newline). A document goes
    to the held-out split when the hash of its text falls in the first ``heldout_fraction``.
    """

    path: str
    format: Literal["auto", "jsonl", "json", "parquet", "text", "file"] = "auto"

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


class Domain(_Frozen):
    """A data domain: where its text comes from, and whether it is a target or a general (replay) ability."""

    source: DomainSource
    role: Literal["target", "general"]

    @field_validator("source")
    @classmethod
    def _source(cls, v: str | PathSource | HFSource) -> str | PathSource | HFSource:
        if isinstance(v, str) and not v.startswith("demo:"):
            raise ValueError(f"a source string must be 'demo:<math|code|prose>'; use {{path: ...}} for files "
                             f"or {{hf: ...}} for HF datasets (got {v!r})")
        if isinstance(v, str):
            from autotune.demo.corpus import DEMO_SOURCES

            if v.removeprefix("demo:") not in DEMO_SOURCES:
                raise ValueError(f"unknown demo source {v!r}; choose from {['demo:' + s for s in DEMO_SOURCES]}")
        return v


# ----------------------------------------------------------------------------------------------- mixture
class Bounds(_Frozen):
    min: float = Field(0.0, ge=0, le=1)
    max: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> Bounds:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Phase(_Frozen):
    """A fixed mixture for the steps before ``until`` (a fraction of the run, after the previous phase)."""

    until: float = Field(gt=0, lt=1)
    shares: dict[str, float]

    @field_validator("shares")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in v.values()) or not math.isclose(sum(v.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"shares must be >= 0 and sum to 1 (got {v})")
        return v


class Mixture(_Frozen):
    """Shares of the proxy's training tokens per domain: a point on the simplex within bounds.

    YAML: one key per domain with ``{min, max}``; ``floors: {general: 0.2}`` puts a floor under the sum of
    a role's domains; ``prior: {domain: share}`` is the mixture run first (default: the simplex map of the unit cube's centre,
    see ``autotune/simplex.py``).
    """

    bounds: dict[str, Bounds] = Field(default_factory=dict)
    floors: dict[Literal["target", "general"], float] = Field(default_factory=dict)
    prior: dict[str, float] | None = None
    phases: list[Phase] = Field(default_factory=list, description=(
        "fixed mixtures trained before the searched one (multi-phase mid-training, as OLMo 2 and Marin): "
        "[{until: 0.5, shares: {general: 1.0}}] trains only general data for the first half of the steps; "
        "the searched mixture runs from the last phase's `until` to the end"))

    @model_validator(mode="before")
    @classmethod
    def _split_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        reserved = {k: data.pop(k) for k in ("floors", "prior", "phases") if k in data}
        bounds = data.pop("bounds", {}) or {}
        bounds.update({k: ({} if v is None else v) for k, v in data.items()})
        return {"bounds": bounds, **reserved}

    @field_validator("floors")
    @classmethod
    def _floors(cls, v: dict[str, float]) -> dict[str, float]:
        for role, floor in v.items():
            if not 0 <= floor <= 1:
                raise ValueError(f"floor of {role!r} must lie in [0, 1] (got {floor})")
        return v


# ----------------------------------------------------------------------------------------------- schedule
class Schedule(_Frozen):
    """The proxy run's learning-rate schedule; each field fixed or searched.

    ``wsd``: warmup, stable at ``peak_lr``, then a linear decay over the last ``decay_fraction`` of the
    steps to ``final_lr_ratio * peak_lr``. ``cosine`` / ``linear``: warmup, then decay over all remaining
    steps. ``constant``: warmup, then ``peak_lr``.
    """

    kind: Literal["wsd", "cosine", "linear", "constant"] | list[Literal["wsd", "cosine", "linear", "constant"]] = "wsd"
    peak_lr: SearchFloat = 1e-3
    warmup_fraction: SearchFloat = 0.02
    decay_fraction: SearchFloat = 0.2
    final_lr_ratio: SearchFloat = 0.0
    decay_shape: DecayShape | list[DecayShape] = Field("linear", description=(
        "shape of the WSD decay: linear, cosine or 1-sqrt (Hägele et al. 2024); a list is searched"))
    start_lr: float | Literal["base"] | None = Field(None, description=(
        "first LR of the warmup: a number, `base` (the base run's final LR, read from its trainer_state.json "
        "or pretrain_log.jsonl: re-warm from where pre-training ended), or unset (peak_lr / warmup steps)"))

    @model_validator(mode="after")
    def _check(self) -> Schedule:
        if isinstance(self.kind, list) and not self.kind:
            raise ValueError("kind: an empty list of choices")
        lo = self.peak_lr.low if isinstance(self.peak_lr, FloatRange) else self.peak_lr
        if lo <= 0:
            raise ValueError(f"peak_lr must be positive (got {self.peak_lr})")
        _in_unit("warmup_fraction", self.warmup_fraction, high_open=True)
        _in_unit("decay_fraction", self.decay_fraction)
        _in_unit("final_lr_ratio", self.final_lr_ratio)
        if isinstance(self.decay_shape, list) and not self.decay_shape:
            raise ValueError("decay_shape: an empty list of choices")
        if isinstance(self.start_lr, float) and self.start_lr < 0:
            raise ValueError(f"start_lr must be >= 0 (got {self.start_lr})")
        return self


# ----------------------------------------------------------------------------------------------- context
class Context(_Frozen):
    """Long-context extension knobs, searched like the schedule (a list is a choice, {low, high} a range).

    ``seq_len``: training sequence length of the proxy (``proxy.batch_tokens`` stays fixed, so every
    choice trains the same tokens in the same steps; held-out bits-per-byte is measured at ``proxy.seq_len``,
    so set that to the context you care about). ``rope_theta``: the RoPE base the proxy trains with (raising
    it is the usual first step of a long-context stage: Code Llama, Llama 3).
    """

    seq_len: int | list[int] | None = None
    rope_theta: SearchFloat | list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> Context:
        lens = self.seq_len if isinstance(self.seq_len, list) else [self.seq_len] if self.seq_len else []
        if isinstance(self.seq_len, list) and not self.seq_len:
            raise ValueError("seq_len: an empty list of choices")
        if any(n < 8 for n in lens):
            raise ValueError(f"seq_len must be >= 8 (got {self.seq_len})")
        thetas = self.rope_theta if isinstance(self.rope_theta, list) else \
            [self.rope_theta.low] if isinstance(self.rope_theta, FloatRange) else [self.rope_theta] if self.rope_theta else []
        if any(t <= 0 for t in thetas):
            raise ValueError(f"rope_theta must be positive (got {self.rope_theta})")
        return self


# ----------------------------------------------------------------------------------------------- the rest
class DemoBase(_Frozen):
    """The demo's base model: a tiny Llama that autotune pre-trains on prose + code on first use (cached)."""

    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(384, ge=8)
    vocab_size: int = Field(2048, ge=300, le=65535)
    pretrain_tokens: int = Field(1_000_000, ge=1000)
    seq_len: int = Field(256, ge=16)
    batch_tokens: int = Field(4096, ge=16)
    peak_lr: float = Field(3e-3, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DemoBase:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


def _whole_tokens(v: Any) -> Any:
    """YAML reads 1e5 as a string and 1.0e5 as a float; token counts are whole numbers."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _parse_bytes(v: Any) -> Any:
    """``8GiB``, ``512 MiB``, ``8e9``, ``8GB`` -> bytes (int); anything else is left for the field to refuse."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", v)
        if not m or m.group(2).lower() not in _BYTE_UNITS:
            raise ValueError(f"{v!r} is not a size: write bytes or a number with KiB, MiB, GiB, TiB, KB, MB, GB, TB")
        return int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])
    return _whole_tokens(v)


class Proxy(_Frozen):
    """The proxy run's budget: ``tokens`` trained per trial, in steps of ``batch_tokens``."""

    tokens: int = Field(ge=1)
    seq_len: int = Field(256, ge=8)
    batch_tokens: int = Field(4096, ge=8)
    seed: int = 0
    replicates: int = Field(1, ge=1, description="runs of the prior mixture with seeds seed, seed+1, ...: the noise floor")
    threads: int | None = Field(None, ge=1, description="torch threads in the worker (default: all cores)")
    micro_batch_seqs: int | None = Field(None, ge=1, description=(
        "sequences per forward/backward on each process; a step of batch_tokens accumulates gradients over "
        "micro-batches (default: the whole step at once). Lower it when a trial ends with status oom"))
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16 autocast on GPU (auto), fp32 on CPU")
    compile: Literal["auto"] | bool = Field("auto", description="torch.compile the model: on GPU by default, off on CPU")
    max_epochs: float = Field(4.0, gt=0, description=(
        "warn when a proxy run draws a domain more than this many times over (repeated data inflates gains)"))
    save_state_every_s: float = Field(300.0, ge=0, description=(
        "save a resumable training state this often (seconds; 0: never): a crashed or interrupted trial "
        "resumes mid-run, drawing the same batches"))
    rungs: list[float] | None = Field(None, description="fractions of tokens with a cheap held-out bits-per-byte "
                                      "evaluation reported to Optuna (multi-fidelity), e.g. [0.25, 0.5, 1.0]")

    @field_validator("tokens", "batch_tokens", mode="before")
    @classmethod
    def _int_from_float(cls, v: Any) -> Any:
        return _whole_tokens(v)

    @model_validator(mode="after")
    def _check(self) -> Proxy:
        if self.rungs is not None:
            r = self.rungs
            if not r or any(not 0 < x <= 1 for x in r) or any(a >= b for a, b in zip(r, r[1:], strict=False)) or r[-1] != 1.0:
                raise ValueError(f"rungs must increase within (0, 1] and end at 1.0 (got {r})")
        if self.batch_tokens < self.seq_len:
            raise ValueError(f"batch_tokens {self.batch_tokens} is below seq_len {self.seq_len}")
        if self.tokens < self.batch_tokens:
            raise ValueError(f"tokens {self.tokens} is below one batch ({self.batch_tokens} batch_tokens)")
        return self

    @property
    def seqs_per_step(self) -> int:
        return self.batch_tokens // self.seq_len

    @property
    def steps(self) -> int:
        return self.tokens // (self.seqs_per_step * self.seq_len)

    @property
    def rung_steps(self) -> list[int]:
        """Steps after which a rung is evaluated (the last rung is the full run's own evaluation)."""
        return sorted({max(1, round(f * self.steps)) for f in (self.rungs or [])[:-1]} - {self.steps})


_CONSTRAINT = re.compile(r"^\s*general\s*>=\s*(base\s*(?P<sign>[-+])\s*)?(?P<num>[0-9.eE+-]+)\s*$|^\s*general\s*>=\s*base\s*$")


class Objective(_Frozen):
    """What the study optimises over the suite's group scores (each relative to the base model).

    Either ``maximize: target`` with ``subject_to: "general >= base - 0.01"`` (a general-retention
    constraint, fed to Optuna as a constraint), or ``pareto: [target, general]``.
    """

    maximize: Literal["target", "general"] | None = None
    subject_to: str | None = None
    pareto: list[Literal["target", "general"]] | None = None
    beyond_noise: float | None = Field(None, gt=0, description="feasible only if the target gain over the base "
                                       "exceeds k * sqrt(2) * its seed std (from proxy.replicates >= 2 of the prior)")

    @model_validator(mode="after")
    def _check(self) -> Objective:
        if (self.maximize is None) == (self.pareto is None):
            raise ValueError("give exactly one of 'maximize' or 'pareto'")
        if self.pareto is not None and sorted(self.pareto) != ["general", "target"]:
            raise ValueError(f"pareto must be [target, general] (got {self.pareto})")
        if self.subject_to is not None:
            self.general_floor  # noqa: B018  (parses, raising on a bad expression)
        return self

    @property
    def general_floor(self) -> float | None:
        """The constraint as a floor on the general score relative to base (base = 0), or None."""
        if self.subject_to is None:
            return None
        m = _CONSTRAINT.match(self.subject_to)
        if not m:
            raise ValueError(
                f"subject_to must read 'general >= base - X' or 'general >= X' (got {self.subject_to!r})"
            )
        if m.group("num") is None:
            return 0.0
        try:
            num = float(m.group("num"))
        except ValueError as e:
            raise ValueError(f"subject_to: {m.group('num')!r} is not a number") from e
        # relative to base: the group scores are deltas against the base model, so "base" is 0
        return -num if m.group("sign") == "-" else num


class LauncherSpec(_Frozen):
    """Where trials run: ``local`` (a subprocess here), ``accelerate`` (``accelerate launch`` with
    ``num_processes`` data-parallel processes per trial) or ``slurm`` (a Slurm job per trial through submitit;
    ``cluster: local`` runs submitit's local executor; other keys go to submitit's ``update_parameters``).
    ``sharding`` (accelerate): ``ddp`` keeps a whole model per process; ``fsdp`` shards weights, gradients and
    optimizer state over the processes (FSDP2), for models whose training state does not fit one device.
    Both train the same batches, so it is not part of a run's identity. ``memory_limit`` (local, accelerate)
    caps each worker process's CPU memory (heap and private mappings, ``RLIMIT_DATA``), e.g. ``8GiB``: a
    trial that needs more fails as ``oom`` instead of taking the machine (and the other trials) down."""

    model_config = ConfigDict(frozen=True, extra="allow")
    kind: Literal["local", "accelerate", "slurm"] = "local"
    cluster: str | None = None
    num_processes: int = Field(1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description=(
        "accelerate's autocast around DDP's forward (accelerate launch --mixed_precision); usually leave it "
        "'no' and set proxy.precision, which every launcher and sharding honours"))
    sharding: Literal["ddp", "fsdp"] = "ddp"
    memory_limit: int | None = Field(None, gt=0, description="bytes per worker process, or 8GiB, 512MiB, 8e9")

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        return _parse_bytes(v)

    @model_validator(mode="after")
    def _check(self) -> LauncherSpec:
        if self.kind != "slurm" and self.model_extra:
            raise ValueError(f"unknown launcher fields {sorted(self.model_extra)} (only kind: slurm takes extra keys)")
        if self.memory_limit is not None and self.kind == "slurm":
            raise ValueError("memory_limit is for kind local and accelerate; give Slurm its own (e.g. mem_gb: 64)")
        if self.sharding == "fsdp" and self.mixed_precision != "no":
            raise ValueError(f"mixed_precision: {self.mixed_precision} is accelerate's DDP autocast; with sharding: fsdp "
                             "set proxy.precision: bf16 instead")
        if self.sharding == "fsdp" and (self.kind != "accelerate" or self.num_processes < 2):
            raise ValueError(f"sharding: fsdp shards over several processes: it needs kind: accelerate and "
                             f"num_processes >= 2 (got kind: {self.kind}, num_processes: {self.num_processes})")
        return self


class Search(_Frozen):
    sampler: Literal["tpe", "random", "qmc", "cmaes", "gp"] = "tpe"
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    launcher: LauncherSpec = Field(default_factory=LauncherSpec)
    trials: int = Field(16, ge=1)
    storage: str = Field("sqlite", description="sqlite (runs/<study>/study.db), an RDB URL, or journal:PATH")
    seed: int = 0
    runs_dir: str = "runs"
    trial_timeout_s: float | None = Field(None, gt=0, description="stop a trial's worker after this long: a failed trial 'timeout'")
    heartbeat_s: int = Field(10, ge=1, description="a running trial's heartbeat interval (RDB storages)")
    grace_s: int = Field(60, ge=2, description="a trial silent this long is lost: failed and retried once")

    @model_validator(mode="after")
    def _check(self) -> Search:
        if self.grace_s <= self.heartbeat_s:
            raise ValueError(f"grace_s {self.grace_s} must exceed heartbeat_s {self.heartbeat_s}")
        return self


# ----------------------------------------------------------------------------------------------- scale
class Ladder(_Frozen):
    """Scale transfer (``autotune ladder SPACE``): the prior mixture and the ``top_k`` best other trials of
    the study are re-run as complete proxy runs (a whole schedule each, not a mid-run rung) at each budget in
    ``tokens``; the search's own ``proxy.tokens`` is one more rung, for free. ``autotune extrapolate`` then
    fits a power law in tokens per mixture and warns in recipe.yaml when the rungs rank the mixtures
    differently (Kendall tau below ``min_kendall``, or another best mixture)."""

    tokens: list[int] = Field(min_length=1, description="proxy token budgets of the rungs, increasing, e.g. [1e5, 1e6]")
    top_k: int = Field(4, ge=2, description="best trials (besides the prior) re-run at every rung")
    min_kendall: float = Field(0.6, ge=-1, le=1, description="Kendall tau between two rungs below this: a warning")

    @field_validator("tokens", mode="before")
    @classmethod
    def _whole(cls, v: Any) -> Any:
        return [_whole_tokens(x) for x in v] if isinstance(v, list) else v

    @field_validator("tokens")
    @classmethod
    def _increasing(cls, t: list[int]) -> list[int]:
        if any(x <= 0 for x in t) or any(a >= b for a, b in zip(t, t[1:], strict=False)):
            raise ValueError("token budgets must be positive and increasing")
        return t


class Extrapolate(_Frozen):
    """The full-scale run ``autotune search`` (and ``autotune ladder``) write ``runs/<study>/recipe.yaml``
    for when they finish, as ``autotune extrapolate runs/<study> --tokens ... --available DOMAIN=N`` does."""

    tokens: float = Field(gt=0, description="training tokens of the full mid-training run, e.g. 2e10")
    available_tokens: dict[str, float] = Field(default_factory=dict, description="unique tokens per domain (any subset)")
    max_epochs: float = Field(4.0, gt=0, description="warn above this many epochs of a domain (refused above 16)")
    batch_tokens: int | None = Field(None, ge=1, description="tokens per step of the full run (default: the proxy's)")

    @field_validator("available_tokens")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        for name, n in v.items():
            if not (math.isfinite(n) and n > 0):
                raise ValueError(f"available_tokens.{name} must be a positive number (got {n})")
        return v


class SearchSpace(_Frozen):
    """A whole search space, as run. ``source_file`` is where it was read from (paths resolve against it)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base_model: str | DemoBase = "demo:tiny-base"
    domains: dict[str, Domain]
    mixture: Mixture = Field(default_factory=Mixture)
    schedule: Schedule = Field(default_factory=Schedule)
    proxy: Proxy
    context: Context = Field(default_factory=Context)
    evals: str
    objective: Objective = Field(default_factory=lambda: Objective(maximize="target", subject_to="general >= base - 0.01"))
    search: Search = Field(default_factory=Search)
    ladder: Ladder | None = None
    extrapolate: Extrapolate | None = None
    source_file: str | None = Field(None, exclude=True)

    @field_validator("base_model")
    @classmethod
    def _base(cls, v: str | DemoBase) -> str | DemoBase:
        if v == "demo:tiny-base":
            return DemoBase()
        if isinstance(v, str) and v.startswith("demo:"):
            raise ValueError(f"unknown demo model {v!r}; the demo base is 'demo:tiny-base' or a {{hidden_size: ...}} mapping")
        return v

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: dict[str, Domain]) -> dict[str, Domain]:
        if len(v) < 2:
            raise ValueError(f"a mixture needs at least 2 domains (got {list(v)})")
        for name in v:
            if not re.match(r"^[A-Za-z0-9_]+$", name):
                raise ValueError(f"domain names are letters, digits and '_' (got {name!r})")
            if name in ("floors", "prior", "bounds"):
                raise ValueError(f"{name!r} is reserved in the mixture section; rename the domain")
        return v

    @model_validator(mode="after")
    def _mixture_feasible(self) -> SearchSpace:
        names = list(self.domains)
        for name in self.mixture.bounds:
            if name not in self.domains:
                raise ValueError(f"mixture.{name}: not a domain of this space (domains: {names})")
        for role in self.mixture.floors:
            if not any(d.role == role for d in self.domains.values()):
                raise ValueError(f"mixture.floors.{role}: no domain has role {role!r}")
        lo = {n: self.bounds(n).min for n in names}
        hi = {n: self.bounds(n).max for n in names}
        if sum(lo.values()) > 1 + _EPS:
            raise ValueError(f"mixture: the minimum shares sum to {sum(lo.values()):.4g} > 1, so no mixture fits")
        if sum(hi.values()) < 1 - _EPS:
            raise ValueError(f"mixture: the maximum shares sum to {sum(hi.values()):.4g} < 1, so no mixture fits")
        for role, floor in self.mixture.floors.items():
            cap = sum(hi[n] for n, d in self.domains.items() if d.role == role)
            if cap < floor - _EPS:
                raise ValueError(f"mixture.floors.{role}: floor {floor} is above the {role} domains' maximum {cap:.4g}")
        need = sum(max(self.mixture.floors.get(r, 0.0), sum(lo[n] for n, d in self.domains.items() if d.role == r))
                   for r in ROLES)
        if need > 1 + _EPS:
            raise ValueError(f"mixture: floors and minimums need {need:.4g} > 1 of the tokens")
        if self.mixture.prior is not None:
            self.check_mixture(self.mixture.prior, "mixture.prior")
        for n in (self.context.seq_len if isinstance(self.context.seq_len, list) else [self.context.seq_len]):
            if n and self.proxy.batch_tokens % n:
                raise ValueError(f"context.seq_len {n} does not divide proxy.batch_tokens {self.proxy.batch_tokens}: "
                                 "every choice must train the same tokens per step")
        untils = [ph.until for ph in self.mixture.phases]
        if any(b <= a for a, b in zip(untils, untils[1:], strict=False)):
            raise ValueError(f"mixture.phases: `until` must increase from phase to phase (got {untils})")
        for i, ph in enumerate(self.mixture.phases):
            unknown = sorted(set(ph.shares) - set(names))
            if unknown:
                raise ValueError(f"mixture.phases[{i}].shares: {unknown} are not domains of this space (domains: {names})")
        if self.objective.beyond_noise is not None and self.proxy.replicates < 2:
            raise ValueError("objective.beyond_noise needs proxy.replicates >= 2 to measure the seed noise")
        if self.search.pruner != "none" and len(self.proxy.rungs or []) < 2:
            raise ValueError(f"search.pruner {self.search.pruner!r} needs proxy.rungs with at least 2 rungs, e.g. [0.25, 0.5, 1.0]")
        if self.search.pruner != "none" and self.objective.pareto:
            raise ValueError("search.pruner: Optuna cannot prune a multi-objective (pareto) study; use pruner: none")
        return self

    @model_validator(mode="after")
    def _scale_sections(self) -> SearchSpace:
        if self.ladder is not None:
            steps = [t // self.proxy.batch_tokens for t in self.ladder.tokens]
            if steps[0] < 1:
                raise ValueError(f"ladder.tokens: {self.ladder.tokens[0]} is below one batch of proxy.batch_tokens "
                                 f"{self.proxy.batch_tokens}")
            if len(set(steps)) < len(steps):
                raise ValueError(f"ladder.tokens {self.ladder.tokens} round to the same number of steps of "
                                 f"{self.proxy.batch_tokens} tokens; space the rungs further apart")
        if self.extrapolate is not None:
            for name in self.extrapolate.available_tokens:
                if name not in self.domains:
                    raise ValueError(f"extrapolate.available_tokens.{name}: not a domain of this space "
                                     f"(domains: {list(self.domains)})")
        return self

    def bounds(self, domain: str) -> Bounds:
        return self.mixture.bounds.get(domain, Bounds())

    def check_mixture(self, weights: dict[str, float], where: str) -> None:
        """Raise ValueError unless ``weights`` is a mixture inside this space's bounds and floors."""
        if set(weights) != set(self.domains):
            raise ValueError(f"{where}: needs a share for each domain {list(self.domains)} (got {sorted(weights)})")
        total = sum(weights.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"{where}: shares sum to {total:.6g}, not 1")
        for n, w in weights.items():
            b = self.bounds(n)
            if not b.min - 1e-6 <= w <= b.max + 1e-6:
                raise ValueError(f"{where}.{n}: {w} is outside [{b.min}, {b.max}]")
        for role, floor in self.mixture.floors.items():
            got = sum(w for n, w in weights.items() if self.domains[n].role == role)
            if got < floor - 1e-6:
                raise ValueError(f"{where}: {role} domains get {got:.4g}, below the floor {floor}")

    @property
    def root(self) -> Path:
        """The folder relative paths in this space resolve against: the space file's folder."""
        return Path(self.source_file).resolve().parent if self.source_file else Path.cwd()

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.root / p).resolve()

    @property
    def suite_path(self) -> Path:
        return self.resolve(self.evals)

    def digest(self) -> str:
        """A hash of everything that determines the study (not where the file lives)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- loading
def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("bounds",) and parts and parts[-1] == "mixture":
            continue  # the YAML has no 'bounds' level
        elif item in ("str", "float", "int", "list[...]", "function-after[_check(), FloatRange]"):
            continue
        elif isinstance(item, str) and (item.startswith(("function-", "literal[", "list[")) or item in ("PathSource", "HFSource", "DemoBase", "FloatRange")):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    cur = data
    for item in loc:
        if isinstance(cur, dict) and item in cur:
            cur = cur[item]
        elif isinstance(cur, list) and isinstance(item, int) and item < len(cur):
            cur = cur[item]
        elif item == "bounds":
            continue
        else:
            return None
    return cur


def validation_error_to_user_error(err: ValidationError, file: Path, data: Any) -> UserError:
    """The first pydantic error, as one line naming the file, the field and the value."""
    # Unions (float | FloatRange, str | PathSource) report one error per branch: prefer our own checks,
    # then unknown / missing fields, over "not a number" from the branch the user did not mean.
    rank = {"value_error": 0, "extra_forbidden": 1, "missing": 1, "literal_error": 1}
    errors = err.errors()
    first = min(errors, key=lambda e: rank.get(e["type"], 2))
    loc = tuple(first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    field = _field_path(loc)
    if first["type"] == "extra_forbidden":
        return UserError("unknown field (a typo?)", file=file, field=field)
    if first["type"] == "missing":
        return UserError("required field is missing", file=file, field=field)
    if not loc:  # a check across fields: its message names them
        return UserError(msg, file=file)
    value = first.get("input", _lookup(data, loc))
    if isinstance(value, dict) and len(repr(value)) > 120:
        return UserError(msg, file=file, field=field)
    return UserError(msg, file=file, field=field, value=value)


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, a parse error or a non-mapping is a UserError naming the file."""
    if not path.exists():
        raise UserError(f"{what} file not found", file=path)
    if path.is_dir():
        raise UserError(f"{what} is a folder, not a YAML file", file=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"invalid YAML{where}: {problem}", file=path) from None
    if not isinstance(data, dict):
        raise UserError(f"a {what} must be a YAML mapping", file=path, value=type(data).__name__ if data is not None else None)
    return data


# Named presets a field may hold instead of a mapping (``base_model: demo:tiny-base``).
_PRESETS: dict[Any, dict[str, Any]] = {"demo:tiny-base": {}}


def apply_overrides(data: dict[str, Any], overrides: list[str], file: Path) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a loaded mapping."""
    for item in overrides:
        if "=" not in item:
            raise UserError("an override must read key.sub=value", field="--set", value=item)
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        cur = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = cur.get(part)
            if nxt is None or (isinstance(nxt, str) and nxt in _PRESETS):  # a preset name expands to its mapping, to set a field inside
                nxt = cur[part] = dict(_PRESETS.get(nxt, {}))
            if not isinstance(nxt, dict):
                raise UserError(f"cannot set a field inside a {type(nxt).__name__}", file=file, field=key, value=nxt)
            cur = nxt
        cur[parts[-1]] = value
    return data


def load_space(path: str | Path, overrides: list[str] | None = None) -> SearchSpace:
    """Load and validate a search space; raises UserError naming file, field and value."""
    path = Path(path)
    data = apply_overrides(read_yaml(path, "search space"), overrides or [], path)
    try:
        space = SearchSpace.model_validate({**data, "source_file": str(path)})
    except ValidationError as e:
        raise validation_error_to_user_error(e, path, data) from None
    if not space.suite_path.exists():
        raise UserError("suite file not found", file=path, field="evals", value=str(space.suite_path))
    return space


def dump_space(space: SearchSpace) -> str:
    """The resolved space as YAML (defaults filled in), as ``validate`` prints it."""
    return yaml.safe_dump(space.model_dump(mode="json", exclude_none=True), sort_keys=False)

