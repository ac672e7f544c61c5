"""Evaluation suites: which benchmarks score target and general abilities, and how they combine.

A suite file (``evals/*.yaml``) has two groups, ``target`` and ``general``; each entry is either an
lm-eval task (stock name, or a custom YAML under one of ``task_dirs``) with the metric to read, or a
held-out bits-per-byte measurement on one of the search space's domains::

    target:
      - {task: demo_math_mc, metric: acc, weight: 1}
      - {bpb: math, weight: 2}
    general:
      - {bpb: general}

A group's score is the weighted mean of its entries' improvements over the base model, each oriented so
that higher is better (accuracy gained, bits-per-byte saved): the base model scores 0 in both groups.
This module is pure (no torch, no lm_eval): ``autotune validate`` uses it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autotune.errors import UserError
from autotune.spec import read_yaml, validation_error_to_user_error

# lm-eval metrics where lower is better; everything else (acc, acc_norm, exact_match, ...) is higher-better.
LOWER_IS_BETTER = frozenset({"bits_per_byte", "byte_perplexity", "word_perplexity", "perplexity", "bpb"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskEntry(_Frozen):
    """One lm-eval task and the metric read from its results (``acc`` reads ``acc,none``)."""

    task: str
    metric: str = "acc"
    filter: str = "none"
    weight: float = Field(1.0, gt=0)
    num_fewshot: int = Field(0, ge=0)
    limit: int | None = Field(None, ge=1)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER


class BpbEntry(_Frozen):
    """Bits-per-byte of the model on a domain's held-out split (lower is better; continuous, low-noise)."""

    bpb: str
    weight: float = Field(1.0, gt=0)

    @property
    def key(self) -> str:
        return f"bpb/{self.bpb}"

    @property
    def higher_is_better(self) -> bool:
        return False


Entry = TaskEntry | BpbEntry


class Suite(_Frozen):
    name: str
    backend: Literal["hf"] = "hf"
    batch_size: int = Field(32, ge=1)
    task_dirs: list[str] = Field(default_factory=list)
    bpb_tokens: int = Field(16384, ge=64, description="held-out tokens scored per domain for bits-per-byte")
    target: list[Entry]
    general: list[Entry]
    source_file: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _check(self) -> Suite:
        if not self.target or not self.general:
            raise ValueError("a suite needs at least one entry in both 'target' and 'general'")
        keys = [e.key for e in self.entries]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"entries appear twice: {sorted(dup)}")
        return self

    @property
    def entries(self) -> list[Entry]:
        return [*self.target, *self.general]

    @property
    def tasks(self) -> list[TaskEntry]:
        return [e for e in self.entries if isinstance(e, TaskEntry)]

    @property
    def bpb_domains(self) -> list[str]:
        return [e.bpb for e in self.entries if isinstance(e, BpbEntry)]

    @property
    def root(self) -> Path:
        return Path(self.source_file).resolve().parent if self.source_file else Path.cwd()

    @property
    def task_paths(self) -> list[Path]:
        return [(self.root / d).resolve() for d in self.task_dirs]

    def digest(self) -> str:
        """Hash of the suite and of the custom task files it can load (so editing a task YAML re-evaluates)."""
        h = hashlib.sha256(self.model_dump_json().encode())
        for d in self.task_paths:
            for f in sorted(d.rglob("*")):
                if f.is_file() and f.suffix in (".yaml", ".yml", ".jsonl", ".json", ".py"):
                    h.update(f.name.encode())
                    h.update(f.read_bytes())
        return h.hexdigest()[:16]


def find_task_yaml(task: str, dirs: list[Path]) -> Path | None:
    """The custom task YAML that defines ``task`` (by its ``task:`` key) under ``dirs``, or None."""
    import yaml

    for d in dirs:
        for f in sorted(d.rglob("*.yaml")):
            try:
                cfg = yaml.safe_load(f.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                continue  # lm-eval YAMLs may use !function tags; only plain task files are indexed here
            if isinstance(cfg, dict) and cfg.get("task") == task:
                return f
    return None


def load_suite(path: str | Path, domains: list[str] | None = None) -> Suite:
    """Load and check a suite file; ``domains`` (from the space) checks its bits-per-byte entries."""
    path = Path(path)
    data = read_yaml(path, "suite")
    try:
        suite = Suite.model_validate({**data, "source_file": str(path)})
    except ValidationError as e:
        raise validation_error_to_user_error(e, path, data) from None
    for i, d in enumerate(suite.task_dirs):
        if not suite.task_paths[i].is_dir():
            raise UserError("task folder not found", file=path, field=f"task_dirs[{i}]", value=d)
    for group in ("target", "general"):
        for i, entry in enumerate(getattr(suite, group)):
            if isinstance(entry, BpbEntry) and domains is not None and entry.bpb not in domains:
                raise UserError(f"not a domain of the search space (domains: {domains})",
                                file=path, field=f"{group}[{i}].bpb", value=entry.bpb)
            if isinstance(entry, TaskEntry) and find_task_yaml(entry.task, suite.task_paths) is None:
                _check_stock_task(entry.task, path, f"{group}[{i}].task")
    return suite


def _check_stock_task(task: str, file: Path, field: str) -> None:
    """A task that is not in the suite's task_dirs must be one of lm-eval's stock tasks (looked up by file)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        return  # lm-eval missing: the evaluator reports it where it is used
    stock_dir = Path(spec.origin).parent / "tasks"
    if not _stock_task_names(stock_dir).__contains__(task):
        raise UserError("unknown lm-eval task: not in the suite's task_dirs nor among lm-eval's tasks",
                        file=file, field=field, value=task)


def _stock_task_names(stock_dir: Path) -> set[str]:
    """Names of lm-eval's stock tasks, groups and tags, read from its YAML files as text (no lm_eval import)."""
    import re

    names: set[str] = set()
    pat = re.compile(r"^(?:task|group|tag)\s*:\s*['\"]?([A-Za-z0-9_.\-:]+)", re.M)
    list_item = re.compile(r"^tag\s*:\s*\n((?:\s+-\s*[^\n]+\n)+)", re.M)
    for f in stock_dir.rglob("*.yaml"):
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        names.update(pat.findall(text))
        for block in list_item.findall(text):
            names.update(x.strip().lstrip("-").strip().strip("'\"") for x in block.splitlines() if x.strip())
    return names
