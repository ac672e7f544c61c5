"""The search space: YAML -> validated, frozen ``SearchSpace``.

Every searchable field is either fixed (a plain value) or searched:

* a float range ``{low: 1e-4, high: 3e-3, log: true}``,
* a choice ``[wsd, cosine, linear]``.

The sections that are not searched live next door: data sources and domains in ``config.sources``, the
base model, proxy budget, launcher and search loop in ``config.run``. Errors name the file, the field
(dotted path) and the bad value; ``load_space`` raises ``UserError``. This module imports neither torch nor
optuna: ``autotune validate`` runs on it alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from autotune.config.base import MAX_TOKENS, Bool, Float, Int, Spec, whole_tokens
from autotune.config.load import ErrorStyle, apply_overrides, read_yaml, validation_error_to_user_error
from autotune.config.run import SAMPLERS, DemoBase, GgufBase, HubBase, LauncherSpec, Proxy, Search  # noqa: F401 (re-exported)
from autotune.config.sources import HF_FILE_BUILDERS, Domain, HFSource, PathSource  # noqa: F401 (re-exported)
from autotune.errors import UserError

ROLES = ("target", "general")
SCHEDULE_KINDS = ("wsd", "cosine", "linear", "constant")
# Tolerance for sums of shares: YAML floats like 0.1 + 0.2 are not exact.
_EPS = 1e-9


class FloatRange(Spec):
    """A searched float: uniform on [low, high], or log-uniform when ``log`` is true."""

    low: Float
    high: Float
    log: Bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low must be below high (low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (low={self.low})")
        return self


SearchFloat = Float | FloatRange
DecayShape = Literal["linear", "cosine", "1-sqrt"]


def _in_unit(name: str, value: SearchFloat, *, high_open: bool = False) -> None:
    lo, hi = (value.low, value.high) if isinstance(value, FloatRange) else (value, value)
    if lo < 0 or hi > 1 or (high_open and hi >= 1):
        raise ValueError(f"{name} must lie in [0, 1{')' if high_open else ']'} (got {value})")


# ----------------------------------------------------------------------------------------------- mixture
class Bounds(Spec):
    min: Float = Field(0.0, ge=0, le=1)
    max: Float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> Bounds:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Phase(Spec):
    """A fixed mixture for the steps before ``until`` (a fraction of the run, after the previous phase)."""

    until: Float = Field(gt=0, lt=1)
    shares: dict[str, Float]

    @field_validator("shares")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in v.values()) or not math.isclose(sum(v.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"shares must be >= 0 and sum to 1 (got {v})")
        return v


class Mixture(Spec):
    """Shares of the proxy's training tokens per domain: a point on the simplex within bounds.

    YAML: one key per domain with ``{min, max}``; ``floors: {general: 0.2}`` puts a floor under the sum of
    a role's domains; ``prior: {domain: share}`` is the mixture run first (default: the simplex map of the unit cube's centre,
    see ``autotune/search/simplex.py``).
    """

    bounds: dict[str, Bounds] = Field(default_factory=dict)
    floors: dict[Literal["target", "general"], Float] = Field(default_factory=dict)
    prior: dict[str, Float] | None = None
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
class Schedule(Spec):
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
    start_lr: Float | Literal["base"] | None = Field(None, description=(
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
class Context(Spec):
    """Long-context extension knobs, searched like the schedule (a list is a choice, {low, high} a range).

    ``seq_len``: training sequence length of the proxy (``proxy.batch_tokens`` stays fixed, so every
    choice trains the same tokens in the same steps; held-out bits-per-byte is measured at ``proxy.seq_len``,
    so set that to the context you care about). ``rope_theta``: the RoPE base the proxy trains with (raising
    it is the usual first step of a long-context stage: Code Llama, Llama 3).
    """

    seq_len: Int | list[Int] | None = None
    rope_theta: SearchFloat | list[Float] | None = None

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


# ----------------------------------------------------------------------------------------------- objective
_CONSTRAINT = re.compile(r"^\s*general\s*>=\s*(base\s*(?P<sign>[-+])\s*)?(?P<num>[0-9.eE+-]+)\s*$|^\s*general\s*>=\s*base\s*$")


class Objective(Spec):
    """What the study optimises over the suite's group scores (each relative to the base model).

    Either ``maximize: target`` with ``subject_to: "general >= base - 0.01"`` (a general-retention
    constraint, fed to Optuna as a constraint), or ``pareto: [target, general]``.
    """

    maximize: Literal["target", "general"] | None = None
    subject_to: str | None = None
    pareto: list[Literal["target", "general"]] | None = None
    beyond_noise: Float | None = Field(None, gt=0, le=100, description="feasible only if the target gain over the base "
                                       "exceeds k * sqrt(2) * its seed std (from proxy.replicates >= 2 of the prior)")

    @model_validator(mode="after")
    def _check(self) -> Objective:
        if (self.maximize is None) == (self.pareto is None):
            raise ValueError("give exactly one of 'maximize' or 'pareto'")
        if self.pareto is not None and sorted(self.pareto) != ["general", "target"]:
            raise ValueError(f"pareto must be [target, general] (got {self.pareto})")
        return self

    @field_validator("subject_to")
    @classmethod
    def _constraint(cls, v: str | None) -> str | None:
        if v is not None:
            _general_floor(v)  # parses, raising on a bad expression
        return v

    @property
    def general_floor(self) -> float | None:
        """The constraint as a floor on the general score relative to base (base = 0), or None."""
        return None if self.subject_to is None else _general_floor(self.subject_to)


def _general_floor(subject_to: str) -> float:
    """``general >= base - X`` -> -X; ``general >= X`` -> X; ``general >= base`` -> 0."""
    m = _CONSTRAINT.match(subject_to)
    if not m:
        raise ValueError(
            f"subject_to must read 'general >= base - X' or 'general >= X' (got {subject_to!r})"
        )
    if m.group("num") is None:
        return 0.0
    try:
        num = float(m.group("num"))
    except ValueError as e:
        raise ValueError(f"subject_to: {m.group('num')!r} is not a number") from e
    if not math.isfinite(num):
        raise ValueError(f"subject_to: {m.group('num')!r} is not a finite number")
    # relative to base: the group scores are deltas against the base model, so "base" is 0
    return -num if m.group("sign") == "-" else num


# ----------------------------------------------------------------------------------------------- scale
class Ladder(Spec):
    """Scale transfer (``autotune ladder SPACE``): the prior mixture and the ``top_k`` best other trials of
    the study are re-run as complete proxy runs (a whole schedule each, not a mid-run rung) at each budget in
    ``tokens``; the search's own ``proxy.tokens`` is one more rung, for free. ``autotune extrapolate`` then
    fits a power law in tokens per mixture and warns in recipe.yaml when the rungs rank the mixtures
    differently (Kendall tau below ``min_kendall``, or another best mixture)."""

    tokens: list[Int] = Field(min_length=1, description="proxy token budgets of the rungs, increasing, e.g. [1e5, 1e6]")
    top_k: Int = Field(4, ge=2, description="best trials (besides the prior) re-run at every rung")
    min_kendall: Float = Field(0.6, ge=-1, le=1, description="Kendall tau between two rungs below this: a warning")

    @field_validator("tokens", mode="before")
    @classmethod
    def _whole(cls, v: Any) -> Any:
        return [whole_tokens(x) for x in v] if isinstance(v, list) else v

    @field_validator("tokens")
    @classmethod
    def _increasing(cls, t: list[int]) -> list[int]:
        if any(x <= 0 for x in t) or any(a >= b for a, b in zip(t, t[1:], strict=False)):
            raise ValueError("token budgets must be positive and increasing")
        if t[-1] > MAX_TOKENS:
            raise ValueError(f"token budgets must be at most {MAX_TOKENS:.0e} (got {t[-1]})")
        return t


class Extrapolate(Spec):
    """The full-scale run ``autotune search`` (and ``autotune ladder``) write ``runs/<study>/recipe.yaml``
    for when they finish, as ``autotune extrapolate runs/<study> --tokens ... --available DOMAIN=N`` does."""

    tokens: Float = Field(gt=0, le=MAX_TOKENS, description="training tokens of the full mid-training run, e.g. 2e10")
    available_tokens: dict[str, Float] = Field(default_factory=dict, description="unique tokens per domain (any subset)")
    max_epochs: Float = Field(4.0, gt=0, description="warn above this many epochs of a domain (refused above 16)")
    batch_tokens: Int | None = Field(None, ge=1, description="tokens per step of the full run (default: the proxy's)")

    @field_validator("batch_tokens", mode="before")
    @classmethod
    def _int_from_float(cls, v: Any) -> Any:
        return whole_tokens(v)

    @field_validator("available_tokens")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        for name, n in v.items():
            if not (math.isfinite(n) and n > 0):
                raise ValueError(f"available_tokens.{name} must be a positive number (got {n})")
        return v


BASELINES = ("prior", "best_trial", "uniform", "natural", "target_only")


class Verify(Spec):
    """Closed-loop verification (``autotune verify SPACE``): recipe.yaml's recommended mixture and schedule,
    and baselines, each trained as complete proxy runs at ``tokens_factor`` x ``proxy.tokens`` with ``seeds``
    seeds, then compared by a paired test over the seeds. Baselines: ``prior`` (the prior trial: its mixture
    and schedule), ``best_trial`` (the best feasible trial's), and, with the recommended schedule, ``uniform``
    (equal shares), ``natural`` (``natural`` below, else shares proportional to ``extrapolate.available_tokens``
    when that names every domain) and ``target_only`` (the general role at its floor, the target domains
    sharing the rest equally)."""

    tokens_factor: Float = Field(4.0, gt=0, le=1000, description="verification runs train this many times proxy.tokens")
    seeds: Int = Field(2, ge=2, le=32, description="seeds per mixture (proxy.seed, proxy.seed + 1, ...)")
    baselines: list[Literal["prior", "best_trial", "uniform", "natural", "target_only"]] = Field(
        default_factory=lambda: list(BASELINES), min_length=1,
        description="which baselines to run besides the recommendation")
    natural: dict[str, Float] | None = Field(None, description="the natural mixture (e.g. the corpus's own "
                                                               "proportions); default: from extrapolate.available_tokens")
    alpha: Float = Field(0.05, gt=0, lt=0.5, description="one-sided level of the paired test over seeds")

    @field_validator("natural")
    @classmethod
    def _natural(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and (any(w < 0 for w in v.values()) or not math.isclose(sum(v.values()), 1.0, abs_tol=1e-6)):
            raise ValueError(f"natural: shares must be >= 0 and sum to 1 (got {v})")
        return v


def _base_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "GgufBase" if "gguf" in v else "HubBase" if "hf" in v else "DemoBase"
    if isinstance(v, str) and v.startswith("hf:"):
        return "HubBase"
    return type(v).__name__ if isinstance(v, DemoBase | GgufBase | HubBase) else "str"


# YAML: a checkpoint folder or ``demo:tiny-base``, ``{gguf: ...}``, a Hub model in the local HF cache
# (``{hf: ORG/NAME, revision: ...}`` or ``hf:ORG/NAME@REVISION``), or the demo's ``{hidden_size: ...}``: the
# keys pick the kind, so an error is reported against the kind the user meant.
BaseModelSpec = Annotated[Annotated[str, Tag("str")] | Annotated[DemoBase, Tag("DemoBase")]
                          | Annotated[GgufBase, Tag("GgufBase")] | Annotated[HubBase, Tag("HubBase")],
                          Discriminator(_base_kind)]


class SearchSpace(Spec):
    """A whole search space, as run. ``source_file`` is where it was read from (paths resolve against it)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base_model: BaseModelSpec = "demo:tiny-base"
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
    verify: Verify | None = None
    source_file: str | None = Field(None, exclude=True)

    @field_validator("base_model")
    @classmethod
    def _base(cls, v: str | DemoBase | GgufBase | HubBase) -> str | DemoBase | GgufBase | HubBase:
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
            batch = self.extrapolate.batch_tokens or self.proxy.batch_tokens
            if self.extrapolate.tokens < batch:  # the recipe would be refused after the whole search
                raise ValueError(f"extrapolate.tokens: {self.extrapolate.tokens:g} is below one batch of {batch} tokens "
                                 f"(extrapolate.batch_tokens, else proxy.batch_tokens)")
            for name in self.extrapolate.available_tokens:
                if name not in self.domains:
                    raise ValueError(f"extrapolate.available_tokens.{name}: not a domain of this space "
                                     f"(domains: {list(self.domains)})")
        if self.verify is not None and self.verify.natural is not None:
            if set(self.verify.natural) != set(self.domains):
                raise ValueError(f"verify.natural: needs a share for each domain {list(self.domains)} "
                                 f"(got {sorted(self.verify.natural)})")
        if self.verify is not None:  # as autotune verify rounds it (search.verify.verify_tokens)
            tokens = int(round(self.proxy.tokens * self.verify.tokens_factor))
            if tokens < self.proxy.batch_tokens:
                raise ValueError(f"verify.tokens_factor: {self.verify.tokens_factor:g} x proxy.tokens is below one "
                                 f"batch of proxy.batch_tokens {self.proxy.batch_tokens}")
            if tokens > MAX_TOKENS:
                raise ValueError(f"verify.tokens_factor: {self.verify.tokens_factor:g} x proxy.tokens is above "
                                 f"{MAX_TOKENS:.0e} tokens")
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
# Named presets a field may hold instead of a mapping (``base_model: demo:tiny-base``).
_PRESETS: dict[Any, dict[str, Any]] = {"demo:tiny-base": {}}
# Union-branch tags in pydantic's error locations (``float | FloatRange``, ``str | PathSource | HFSource``,
# ``str | DemoBase``): not levels of the YAML.
_BRANCH_TAGS = frozenset({"str", "float", "int", "PathSource", "HFSource", "DemoBase", "GgufBase", "HubBase",
                          "FloatRange"})
ERRORS = ErrorStyle(branch_tags=_BRANCH_TAGS, top_level="(top level)",
                    skip_level=lambda loc, i: i == 1 and loc[0] == "mixture" and loc[1] == "bounds")  # no 'bounds' level in the YAML


def recorded_source_file(study_root: Path, source: str | None) -> Path | None:
    """The space file a study was started from (``space.json``'s ``source_file``), when it still exists.

    Newer studies record it absolute. Older ones recorded it relative to the directory ``autotune search``
    ran in, which is not recorded: it is looked for above the study folder (with the default ``runs_dir``
    the search ran in the folder above ``runs/``), then in the working directory."""
    if not source:
        return None
    path = Path(source).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    for base in [*Path(study_root).resolve().parents, Path.cwd()]:
        if (base / path).is_file():
            return base / path
    return None


def load_space(path: str | Path, overrides: list[str] | None = None) -> SearchSpace:
    """Load and validate a search space; raises UserError naming file, field and value."""
    path = Path(path)
    data = apply_overrides(read_yaml(path, "search space"), overrides or [], path, presets=_PRESETS)
    try:
        space = SearchSpace.model_validate({**data, "source_file": str(path)})
    except ValidationError as e:
        raise validation_error_to_user_error(e, path, data, ERRORS) from None
    if not space.suite_path.exists():
        raise UserError("suite file not found", file=path, field="evals", value=str(space.suite_path))
    if isinstance(space.base_model, GgufBase):
        from autotune.train.gguf import resolve_gguf

        try:
            resolve_gguf(space.base_model.gguf, space.root)
        except UserError as e:
            raise UserError(e.problem, file=path, field=e.field, value=e.value) from None
    return space


def dump_space(space: SearchSpace) -> str:
    """The resolved space as YAML (defaults filled in), as ``validate`` prints it and ``space.yaml`` keeps it:
    for people and shared folders, so a storage URL's password is redacted (the study connects with the
    space file's or ``--storage``'s own URL)."""
    from autotune.redact import redact_data

    return yaml.safe_dump(redact_data(space.model_dump(mode="json", exclude_none=True)), sort_keys=False)
