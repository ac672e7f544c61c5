"""How a study's trials run: the demo base model, the proxy run's budget, the launcher and the search loop."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from autotune.config.base import (
    MAX_SECONDS,
    MAX_TOKENS,
    Bool,
    Float,
    Int,
    Seed,
    Spec,
    parse_bytes,
    whole_tokens,
)
from autotune.config.identity import HOW, RUN, RUN_UNLESS_DEFAULT, STUDY

SAMPLERS = ("tpe", "random", "qmc", "cmaes", "gp")


class DemoBase(Spec):
    """The demo's base model: a tiny Llama that autotune pre-trains on prose + code on first use (cached)."""

    # pre-trained on this machine's CPU on first use: the bounds keep it a demo
    hidden_size: Int = Field(128, ge=8, le=4096)
    num_layers: Int = Field(4, ge=1, le=64)
    num_heads: Int = Field(4, ge=1, le=256)
    intermediate_size: Int = Field(384, ge=8, le=16384)
    vocab_size: Int = Field(2048, ge=300, le=65535)
    pretrain_tokens: Int = Field(1_000_000, ge=1000, le=10**10)
    seq_len: Int = Field(256, ge=16, le=8192)
    batch_tokens: Int = Field(4096, ge=16, le=10**7)
    peak_lr: Float = Field(3e-3, gt=0)
    seed: Seed = 0

    @model_validator(mode="after")
    def _check(self) -> DemoBase:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.batch_tokens < self.seq_len or self.pretrain_tokens < self.batch_tokens:
            raise ValueError(f"need seq_len <= batch_tokens <= pretrain_tokens (got {self.seq_len}, {self.batch_tokens}, "
                             f"{self.pretrain_tokens})")
        return self


class GgufBase(Spec):
    """A pretrained base shipped as a GGUF file (``autotune/train/gguf.py``): made into a plain HF folder
    under ``$AUTOTUNE_HOME/bases/`` on first use. ``gguf``: a path (relative to the space file) or
    ``PACKAGE/FILE.gguf`` inside an installed Python package."""

    gguf: str = Field(min_length=1)


class HubBase(Spec):
    """A base model named by its Hugging Face Hub id, read from the local HF cache (nothing is downloaded:
    ``autotune/train/model.py``'s ``resolve_hub_base``): ``{hf: ORG/NAME, revision: main}``, or the string
    ``hf:ORG/NAME@REVISION``. ``revision``: a branch, tag or commit; the commit it resolves to in the cache
    is part of the base's identity (another revision is another base)."""

    hf: str = Field(description="the model's Hub id, ORG/NAME")
    revision: str = Field("main", description="branch, tag or commit sha")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        if isinstance(v, str) and v.startswith("hf:"):  # hf:ORG/NAME[@REVISION]
            repo, at, revision = v.removeprefix("hf:").partition("@")
            return {"hf": repo, **({"revision": revision} if at else {})}
        return v

    @field_validator("hf")
    @classmethod
    def _repo_id(cls, v: str) -> str:
        if not (len(v) <= 96 and re.fullmatch(r"([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*", v)) or ".." in v or "--" in v:
            raise ValueError("a Hub model id is ORG/NAME: letters, digits, '-', '_', '.'")
        return v

    @field_validator("revision")
    @classmethod
    def _revision(cls, v: str) -> str:
        if not re.fullmatch(r"[^\s@]+", v):
            raise ValueError("a revision is a branch, tag or commit sha, without spaces or '@'")
        return v


class Proxy(Spec):
    """The proxy run's budget: ``tokens`` trained per trial, in steps of ``batch_tokens``. Each field says
    whether it keys a run, the study, or only how runs are computed (``autotune/config/identity.py``)."""

    tokens: Annotated[Int, RUN] = Field(ge=1, le=MAX_TOKENS)
    seq_len: Annotated[Int, RUN] = Field(256, ge=8)
    batch_tokens: Annotated[Int, RUN] = Field(4096, ge=8)
    seed: Annotated[Seed, STUDY] = 0  # each proposal carries its own seed
    replicates: Annotated[Int, STUDY] = Field(1, ge=1, le=100, description="runs of the prior mixture with seeds seed, seed+1, ...: the noise floor")
    threads: Annotated[Int | None, HOW] = Field(None, ge=1, le=4096, description="torch threads in the worker (default: all cores)")
    micro_batch_seqs: Annotated[Int | None, HOW] = Field(None, ge=1, description=(
        "sequences per forward/backward on each process; a step of batch_tokens accumulates gradients over "
        "micro-batches (default: the whole step at once). Lower it when a trial ends with status oom"))
    precision: Annotated[Literal["auto", "fp32", "bf16"], RUN_UNLESS_DEFAULT] = Field("auto", description="bf16 autocast on GPU (auto), fp32 on CPU")
    compile: Annotated[Literal["auto"] | Bool, HOW] = Field("auto", description="torch.compile the model: on GPU by default, off on CPU")
    max_epochs: Annotated[Float, STUDY] = Field(4.0, gt=0, description=(
        "warn when a proxy run draws a domain more than this many times over (repeated data inflates gains)"))
    save_state_every_s: Annotated[Float, HOW] = Field(300.0, ge=0, le=MAX_SECONDS, description=(
        "save a resumable training state this often (seconds; 0: never): a crashed or interrupted trial "
        "resumes mid-run, drawing the same batches"))
    rungs: Annotated[list[Float] | None, STUDY] = Field(None, description="fractions of tokens with a cheap held-out bits-per-byte "
                                      "evaluation reported to Optuna (multi-fidelity), e.g. [0.25, 0.5, 1.0]")

    @field_validator("tokens", "batch_tokens", mode="before")
    @classmethod
    def _int_from_float(cls, v: Any) -> Any:
        return whole_tokens(v)

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


class LauncherSpec(Spec):
    """Where trials run: ``local`` (a subprocess here), ``accelerate`` (``accelerate launch`` with
    ``num_processes`` data-parallel processes per trial) or ``slurm`` (a Slurm job per trial through submitit;
    ``cluster: local`` runs submitit's local executor; other keys go to submitit's ``update_parameters``).
    ``sharding`` (accelerate): ``ddp`` keeps a whole model per process; ``fsdp`` shards weights, gradients and
    optimizer state over the processes (FSDP2), for models whose training state does not fit one device.
    Both train the same batches, so it is not part of a run's identity. ``memory_limit`` (local, accelerate)
    caps each worker process's CPU memory (heap and private mappings, ``RLIMIT_DATA``), e.g. ``8GiB``: a
    trial that needs more fails as ``oom`` instead of taking the machine (and the other trials) down."""

    model_config = ConfigDict(frozen=True, extra="allow")
    kind: Annotated[Literal["local", "accelerate", "slurm"], HOW] = "local"
    cluster: Annotated[str | None, HOW] = None
    num_processes: Annotated[Int, HOW] = Field(1, ge=1, le=4096)
    mixed_precision: Annotated[Literal["no", "bf16", "fp16"], STUDY] = Field("no", description=(
        "accelerate's autocast around DDP's forward (accelerate launch --mixed_precision); usually leave it "
        "'no' and set proxy.precision, which every launcher and sharding honours"))
    sharding: Annotated[Literal["ddp", "fsdp"], HOW] = "ddp"
    memory_limit: Annotated[Int | None, HOW] = Field(None, gt=0, description="bytes per worker process, or 8GiB, 512MiB, 8e9")

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        return parse_bytes(v)

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


TRACKERS = ("mlflow", "wandb", "tensorboard", "trackio")  # accelerate's trackers (autotune/search/tracking.py)


class Tracking(Spec):
    """An experiment tracker (``search.tracking``; ``autotune/search/tracking.py``, through accelerate's
    trackers): one tracker run per trial (training curves, rung values, final metrics; the trial's shares and
    schedule as its config) and one study-level run (per trial: shares, schedule, scores). It logs runs, it
    computes nothing: no key depends on it, and it may change between sessions of one study."""

    kind: Literal["mlflow", "wandb", "tensorboard", "trackio"]
    project: str | None = Field(None, min_length=1, description=(
        "the MLflow experiment, the wandb / trackio project (default: the study's name)"))
    uri: str | None = Field(None, min_length=1, description=(
        "mlflow: the tracking URI, e.g. http://host:5000, sqlite:///PATH/mlflow.db, file:///PATH/mlruns "
        "(default: $MLFLOW_TRACKING_URI, else sqlite:///<study folder>/mlflow.db)"))
    dir: str | None = Field(None, min_length=1, description=(
        "tensorboard: the log folder (default: <study folder>/tensorboard); wandb: where it keeps its files"))
    every_steps: Int = Field(1, ge=1, le=10**9, description="log the training curves every N optimizer steps")
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "more keyword arguments for the tracker: wandb.init's (entity, tags, mode: offline), trackio.init's, "
        "TensorBoard's SummaryWriter's"))

    @model_validator(mode="after")
    def _check(self) -> Tracking:
        if self.uri is not None and self.kind != "mlflow":
            raise ValueError(f"uri is MLflow's tracking URI (kind: mlflow); kind {self.kind} takes dir or options")
        if self.dir is not None and self.kind not in ("tensorboard", "wandb"):
            raise ValueError(f"dir is for kind tensorboard or wandb; kind {self.kind} " +
                             ("takes uri" if self.kind == "mlflow" else "takes options"))
        return self


class Search(Spec):
    sampler: Literal["tpe", "random", "qmc", "cmaes", "gp"] = "tpe"
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    launcher: LauncherSpec = Field(default_factory=LauncherSpec)
    trials: Int = Field(16, ge=1)
    storage: str = Field("sqlite", description="sqlite (runs/<study>/study.db), an RDB URL, or journal:PATH")
    seed: Seed = 0
    runs_dir: str = "runs"
    trial_timeout_s: Float | None = Field(None, gt=0, le=MAX_SECONDS, description="stop a trial's worker after this long: a failed trial 'timeout'")
    heartbeat_s: Int = Field(10, ge=1, le=3600, description="a running trial's heartbeat interval (RDB storages)")
    grace_s: Int = Field(60, ge=2, le=MAX_SECONDS, description="a trial silent this long is lost: failed and retried once")
    # how runs are logged, not what they compute: left out of the study's identity (search.study.space_identity)
    tracking: Annotated[Tracking | None, HOW] = Field(None, description=(
        "an experiment tracker: {kind: mlflow | wandb | tensorboard | trackio, project, uri, dir, options}, or "
        "just the kind (off by default)"))

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_kind(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> Search:
        if self.grace_s <= self.heartbeat_s:
            raise ValueError(f"grace_s {self.grace_s} must exceed heartbeat_s {self.heartbeat_s}")
        return self
