"""lm-eval task definitions, read without importing lm_eval: find, check and fingerprint a suite's tasks.

A task is either custom (a YAML under one of the suite's ``task_dirs``) or stock (a YAML in lm-eval's
``lm_eval/tasks``). Both are read as YAML text: ``include:`` chains are followed, ``!function`` tags
are kept as references (``FunctionRef``), nothing is imported. That is enough to check an entry (its
output type, its splits, whether it runs generated code) and to hash its template for the result cache,
in milliseconds; the evaluator builds the real lm-eval config (``lm_eval_config``) only when it runs.

The stock index (task / group / tag name -> YAML file) scans lm-eval's ~14K YAML files as text once
(about 1 s) and is cached per lm-eval version under ``$AUTOTUNE_HOME/lm-eval-index/``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autotune.config.suite import Suite, TaskEntry
from autotune.errors import UserError
from autotune.evaluate.metrics import CONTINUOUS_METRICS
from autotune.paths import home
from autotune.records import write_json_atomic


class FunctionRef(str):
    """A ``!function module.name`` reference in a task YAML, resolved next to the YAML that holds it."""

    base_dir: Path

    def __new__(cls, spec: str, base_dir: Path) -> FunctionRef:
        obj = super().__new__(cls, spec)
        obj.base_dir = base_dir
        return obj

    @property
    def module_file(self) -> Path:
        module = self.rpartition(".")[0]
        return self.base_dir / (module.replace(".", "/") + ".py")


def _loader(base_dir: Path) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: FunctionRef(loader.construct_scalar(node), base_dir))
    return Loader


def read_task_yaml(path: Path, _seen: frozenset[Path] = frozenset()) -> tuple[dict[str, Any], list[Path]]:
    """A task YAML with its ``include:`` chain merged (local keys win), and the files it was read from."""
    path = path.resolve()
    if path in _seen:
        raise ValueError(f"include cycle at {path}")
    cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_loader(path.parent))  # noqa: S506 (SafeLoader)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    files = [path]
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg, files
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        inc_cfg, inc_files = read_task_yaml(inc_path, _seen | {path})
        inc_cfg.pop("task_list", None)
        merged.update(inc_cfg)
        files += inc_files
    merged.update(cfg)
    return merged, files


# ----------------------------------------------------------------------------------------------- indexes
def lm_eval_version() -> str | None:
    """The installed lm-eval's version, from its metadata (no import); None when it is not installed."""
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        return None


def stock_tasks_dir() -> Path | None:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "tasks"


# keys may be quoted: lm-eval's generated YAMLs (the 57 MMLU subjects, ...) write "task": "mmlu_anatomy"
_TASK = re.compile(r"^['\"]?task['\"]?\s*:\s*['\"]?([A-Za-z0-9_.\-:]+)['\"]?\s*(?:#.*)?$", re.M)
_GROUP = re.compile(r"^['\"]?group['\"]?\s*:\s*['\"]?([A-Za-z0-9_.\-:]+)['\"]?\s*(?:#.*)?$", re.M)
_TAG = re.compile(r"^['\"]?tag['\"]?\s*:\s*['\"]?([A-Za-z0-9_.\-:]+)['\"]?\s*(?:#.*)?$", re.M)
_TAG_LIST = re.compile(r"^['\"]?tag['\"]?\s*:\s*\n((?:[ \t]+-[^\n]*\n?)+)", re.M)


@functools.lru_cache(maxsize=4)
def stock_index() -> dict[str, dict[str, str | None]]:
    """lm-eval's stock names -> ``{"kind": task | group | tag, "path": YAML path relative to lm_eval/tasks}``.

    First definition wins, in lm-eval's own (sorted path) order. Read as text, cached per lm-eval version.
    """
    tasks_dir = stock_tasks_dir()
    if tasks_dir is None:
        return {}
    key = hashlib.sha256(f"v2|{lm_eval_version()}|{tasks_dir}".encode()).hexdigest()[:16]  # v2: quoted keys
    cached = home() / "lm-eval-index" / f"{key}.json"
    if cached.exists():
        try:
            return json.loads(cached.read_text())
        except ValueError:
            pass
    index: dict[str, dict[str, str | None]] = {}
    for f in sorted(tasks_dir.rglob("*.yaml"), key=lambda p: p.as_posix()):
        if "__pycache__" in f.parts:
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        rel = f.relative_to(tasks_dir).as_posix()
        for kind, pat in (("task", _TASK), ("group", _GROUP)):
            for name in pat.findall(text):
                index.setdefault(name, {"kind": kind, "path": rel})
        tags = list(_TAG.findall(text))
        for block in _TAG_LIST.findall(text):
            tags += [x.strip().lstrip("-").strip().strip("'\"") for x in block.splitlines() if x.strip()]
        for name in tags:
            index.setdefault(name, {"kind": "tag", "path": None})
    try:
        write_json_atomic(cached, index)
    except OSError:
        pass  # a read-only cache only costs the scan next time
    return index


@functools.lru_cache(maxsize=64)
def _custom_index(dirs: tuple[Path, ...], stamp: tuple) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for d in dirs:
        for f in sorted(d.rglob("*.yaml")):
            try:
                cfg, _ = read_task_yaml(f)
            except (yaml.YAMLError, UnicodeDecodeError, ValueError, OSError):
                continue
            name = cfg.get("task")
            if isinstance(name, str):
                index.setdefault(name, f)
            group = cfg.get("group")
            if isinstance(group, str):
                index.setdefault(group, f)
    return index


def find_custom_task(task: str, dirs: list[Path]) -> Path | None:
    """The YAML under ``dirs`` that defines ``task`` (by its ``task:`` or ``group:`` key), or None."""
    stamp = tuple((str(f), f.stat().st_mtime_ns) for d in dirs if d.is_dir() for f in sorted(d.rglob("*.yaml")))
    return _custom_index(tuple(dirs), stamp).get(task)


# ----------------------------------------------------------------------------------------------- definitions
@dataclass(frozen=True)
class TaskDef:
    """Where a task is defined and what its YAML says (``config`` is None for tags and Python tasks)."""

    name: str
    kind: str  # task | group | tag
    stock: bool
    path: Path | None
    config: dict[str, Any] | None = None
    files: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def output_type(self) -> str | None:
        return (self.config or {}).get("output_type")

    @property
    def unsafe_code(self) -> bool:
        return bool((self.config or {}).get("unsafe_code"))

    @property
    def is_yaml_task(self) -> bool:
        """A plain YAML task (not a group, a tag or a Python class task): its config can be edited."""
        return self.kind == "task" and self.config is not None and "class" not in self.config

    @property
    def folder(self) -> Path | None:
        """The stock task family's folder (``lm_eval/tasks/<family>``): all an lm-eval TaskManager needs to index."""
        if self.path is None:
            return None
        root = stock_tasks_dir()
        if self.stock and root is not None:
            return root / self.path.relative_to(root).parts[0]
        return self.path.parent

    def splits_needed(self, num_fewshot: int | None) -> list[str]:
        """The splits lm-eval reads: the evaluation split, and the few-shot source when shots are drawn."""
        cfg = self.config or {}
        out = [cfg.get("test_split") or cfg.get("validation_split")]
        shots = cfg.get("num_fewshot") if num_fewshot is None else num_fewshot
        if shots:
            out.append(cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split"))
        return [s for s in dict.fromkeys(out) if s]


def resolve_task(entry: TaskEntry, suite: Suite) -> TaskDef | None:
    """The definition of ``entry.task``: custom (suite's task_dirs) first, then stock; None if unknown."""
    custom = find_custom_task(entry.task, suite.task_paths)
    if custom is not None:
        cfg, files = read_task_yaml(custom)
        kind = "group" if cfg.get("group") == entry.task else "task"
        return TaskDef(entry.task, kind, False, custom, cfg if kind == "task" else None, tuple(files))
    hit = stock_index().get(entry.task)
    if hit is None:
        return None
    root = stock_tasks_dir()
    assert root is not None
    if hit["path"] is None:
        return TaskDef(entry.task, hit["kind"] or "tag", True, None)
    path = root / hit["path"]
    try:
        cfg, files = read_task_yaml(path)
    except (yaml.YAMLError, ValueError, OSError):
        cfg, files = None, [path]
    return TaskDef(entry.task, hit["kind"] or "task", True, path, cfg if hit["kind"] == "task" else None, tuple(files))


def check_entry(entry: TaskEntry, suite: Suite, *, file: Path | None, where: str) -> TaskDef | None:
    """Check a task entry against its definition; returns it (None when lm-eval is not installed)."""
    if stock_tasks_dir() is None and find_custom_task(entry.task, suite.task_paths) is None:
        return None  # lm-eval missing: the evaluator reports it where it is used
    tdef = resolve_task(entry, suite)
    if tdef is None:
        raise UserError("unknown lm-eval task: not in the suite's task_dirs nor among lm-eval's tasks",
                        file=file, field=f"{where}.task", value=entry.task)
    needs_task = entry.data is not None or entry.metric in CONTINUOUS_METRICS or entry.normalize == "chance"
    if needs_task and not tdef.is_yaml_task:
        raise UserError(f"is a {'Python ' if tdef.kind == 'task' else ''}{tdef.kind}: data overrides, continuous "
                        "metrics and chance normalisation need a single YAML task (name one of its tasks)",
                        file=file, field=f"{where}.task", value=entry.task)
    out = tdef.output_type
    if entry.metric in CONTINUOUS_METRICS and out not in CONTINUOUS_METRICS[entry.metric]:
        raise UserError(f"{entry.metric} needs a {' or '.join(CONTINUOUS_METRICS[entry.metric])} task; "
                        f"{entry.task} is {out}", file=file, field=f"{where}.metric", value=entry.metric)
    if tdef.is_yaml_task and entry.metric not in CONTINUOUS_METRICS:
        _check_reported(entry, tdef, file=file, where=where)
    if entry.normalize == "chance" and out != "multiple_choice":
        raise UserError(f"chance normalisation needs a multiple_choice task; {entry.task} is {out}",
                        file=file, field=f"{where}.normalize", value=entry.normalize)
    if entry.data is not None:
        for split, rel in entry.data.files.items():
            p = suite.data_file(rel)
            if not p.is_file():
                raise UserError(f"data file not found ({p})", file=file, field=f"{where}.data.files.{split}", value=rel)
        missing = [s for s in tdef.splits_needed(entry.num_fewshot) if s not in entry.data.files]
        if missing:
            raise UserError(f"{entry.task} reads the split(s) {missing}: name a file for each",
                            file=file, field=f"{where}.data.files", value=sorted(entry.data.files))
    return tdef


# lm-eval's metrics for a task without ``metric_list`` (``lm_eval.api.registry.DEFAULT_METRIC_REGISTRY``)
DEFAULT_METRICS = {"loglikelihood": ("perplexity", "acc"),
                   "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
                   "multiple_choice": ("acc", "acc_norm"), "generate_until": ("exact_match",)}


def reported(tdef: TaskDef) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """The metric and filter names a YAML task reports (None where the YAML cannot tell: a metric or filter
    given as code, or an output type lm-eval adds later)."""
    cfg = tdef.config or {}
    listed = cfg.get("metric_list")
    if listed is None:
        metrics = DEFAULT_METRICS.get(cfg.get("output_type") or "generate_until")
    elif isinstance(listed, list) and all(isinstance(m, dict) and _plain(m.get("metric")) for m in listed):
        metrics = tuple(m["metric"] for m in listed)
    else:
        metrics = None
    flist = cfg.get("filter_list")
    if flist is None:
        filters: tuple[str, ...] | None = ("none",)
    elif isinstance(flist, list) and all(isinstance(f, dict) and _plain(f.get("name")) for f in flist):
        filters = tuple(f["name"] for f in flist)
    else:
        filters = None
    return metrics, filters


def _plain(name: Any) -> bool:
    """A name written in the YAML (not a ``!function`` reference, whose reported name lm-eval decides)."""
    return isinstance(name, str) and not isinstance(name, FunctionRef)


def _check_reported(entry: TaskEntry, tdef: TaskDef, *, file: Path | None, where: str) -> None:
    """A metric or filter the task never reports would only fail after the whole evaluation: refuse it now."""
    metrics, filters = reported(tdef)
    if metrics is not None and entry.metric not in metrics:
        raise UserError(f"{entry.task} reports the metrics {list(metrics)} (and autotune's continuous "
                        f"{sorted(CONTINUOUS_METRICS)})", file=file, field=f"{where}.metric", value=entry.metric)
    if filters is not None and entry.filter not in filters:
        raise UserError(f"{entry.task} reports the filters {list(filters)}", file=file, field=f"{where}.filter",
                        value=entry.filter)


# ----------------------------------------------------------------------------------------------- user code
def is_library_file(path: Path) -> bool:
    """A file (or folder) inside the installed lm-eval's ``lm_eval/tasks``: the library's own code, not the suite's."""
    root = stock_tasks_dir()
    return root is not None and Path(path).resolve().is_relative_to(root.resolve())


@functools.lru_cache(maxsize=1)
def builtin_metrics() -> frozenset[str]:
    """lm-eval's registered metric names, read from its ``api/metrics.py`` as text (no import). lm-eval hands
    any other metric name to Hugging Face ``evaluate.load``, which runs a metric script (a local file too)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        return frozenset()
    try:
        text = (Path(spec.origin).parent / "api" / "metrics.py").read_text(encoding="utf-8")
    except OSError:
        return frozenset()
    return frozenset(re.findall(r"register_metric\(\s*metric\s*=\s*[\"']([^\"']+)[\"']", text))


def user_code(tdef: TaskDef, suite: Suite) -> list[str]:
    """What of a task would run Python from the user's files, as ``key: value`` lines; [] when nothing does.

    Counted: ``!function`` references resolved next to a YAML outside lm-eval's own tasks folder (the task's
    ``include:`` chain merged), ``class:`` Python tasks among them, and metrics lm-eval would hand to HF
    ``evaluate`` (``hf_evaluate: true`` or a name lm-eval does not register). lm-eval's stock tasks (its
    ``utils.py`` functions) are the library's code: not counted. A group or tag is resolved by lm-eval over
    the whole include path, so for one every YAML under the suite's ``task_dirs`` counts.
    """
    files: list[Path] = []
    if not tdef.stock and tdef.path is not None:
        files.append(tdef.path)
    if not tdef.is_yaml_task:
        files += [f for d in suite.task_paths if d.is_dir() for f in sorted(d.rglob("*.yaml"))]
    found: list[str] = []
    for f in dict.fromkeys(files):
        try:
            cfg, _ = read_task_yaml(f)
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, OSError):
            continue  # lm-eval skips what it cannot read too
        found += [line for line in _code_in(cfg, "") if line not in found]
    return found


def _code_in(obj: Any, key: str):
    if isinstance(obj, FunctionRef):
        if not is_library_file(obj.base_dir):  # the folder of the YAML that holds it
            yield f"{key}: !function {obj} ({obj.module_file})"
    elif isinstance(obj, dict):
        metrics = obj.get("metric_list")
        for m in metrics if isinstance(metrics, list) else []:
            name = m.get("metric") if isinstance(m, dict) else None
            if isinstance(name, str) and not isinstance(name, FunctionRef) and (
                    m.get("hf_evaluate") is True or name not in builtin_metrics()):
                yield (f"metric_list.metric: {name} (a code-executing metric: lm-eval hands it to Hugging Face "
                       "evaluate, which runs its metric script)")
        for k, v in obj.items():
            yield from _code_in(v, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _code_in(v, f"{key}[{i}]")


# ----------------------------------------------------------------------------------------------- hashing
@functools.lru_cache(maxsize=1024)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_sha(path: Path) -> str:
    """sha256 of a file's bytes, memoised by (path, size, mtime) within the process."""
    st = path.stat()
    return _file_sha(str(path), st.st_size, st.st_mtime_ns)


def template_hash(tdef: TaskDef, entry: TaskEntry, suite: Suite) -> str:
    """What determines the prompts a task produces: its YAML chain and function modules, its data, its shots.

    A stock task's files are hashed too (the lm-eval version is a separate part of the cache key), so an
    edited installation is caught; a tag or Python task is identified by its name and the lm-eval version.
    """
    h = hashlib.sha256(f"{tdef.name}|{tdef.kind}|{entry.num_fewshot}".encode())
    for f in tdef.files:
        h.update(f.name.encode())
        h.update(file_sha(f).encode())
    modules = sorted({v.module_file for v in _walk_values(tdef.config) if isinstance(v, FunctionRef)})
    for m in modules:
        if m.is_file():
            h.update(m.name.encode())
            h.update(file_sha(m).encode())
    data_files = _custom_data_files(tdef)
    if entry.data is not None:
        h.update(entry.data.model_dump_json().encode())
        data_files = {s: suite.data_file(p) for s, p in entry.data.files.items()}
    for split, p in sorted(data_files.items()):
        h.update(split.encode())
        h.update(file_sha(p).encode() if p.is_file() else b"missing")
    return h.hexdigest()[:16]


def _custom_data_files(tdef: TaskDef) -> dict[str, Path]:
    """A custom task's own local ``dataset_kwargs.data_files`` (resolved against its YAML's folder)."""
    if tdef.stock or tdef.config is None or tdef.path is None:
        return {}
    files = (tdef.config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, str):
        files = {"data": files}
    if not isinstance(files, dict):
        return {}
    out = {}
    for split, v in files.items():
        for i, item in enumerate(v if isinstance(v, list) else [v]):
            out[f"{split}{i or ''}"] = (tdef.path.parent / item).resolve()
    return out


def _walk_values(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk_values(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_values(v)
    else:
        yield obj


# ----------------------------------------------------------------------------------------------- lm-eval config
def lm_eval_config(tdef: TaskDef, entry: TaskEntry, data_files: dict[str, str] | None) -> str | dict[str, Any]:
    """The task as lm-eval gets it: a full config dict (functions resolved) for a YAML task, else its name.

    lm-eval 0.4.13 reads a ``{"task": name, ...}`` dict as a new inline task, not as overrides of the
    registered one, so a task is passed whole: its YAML (includes merged), relative ``data_files`` made
    absolute (lm-eval would resolve them against the working directory), the suite's data override
    (``dataset_path: json`` on local files) and few-shot count applied. Imports lm_eval.
    """
    if not tdef.is_yaml_task:
        return entry.task
    assert tdef.path is not None
    try:
        from lm_eval.tasks._yaml_loader import load_yaml

        cfg = load_yaml(tdef.path, resolve_func=True)
    except ImportError:  # lm-eval < 0.4.10
        from lm_eval.utils import load_yaml_config

        cfg = load_yaml_config(yaml_path=str(tdef.path), mode="full")
    except Exception as e:
        raise load_error(tdef, e) from e
    cfg = dict(cfg)
    for k in ("tag", "group"):
        cfg.pop(k, None)
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if not tdef.stock and isinstance(files, dict):
        kwargs["data_files"] = {k: str((tdef.path.parent / v).resolve()) for k, v in files.items()}
    elif not tdef.stock and isinstance(files, str):
        kwargs["data_files"] = str((tdef.path.parent / files).resolve())
    if data_files is not None:
        cfg["dataset_path"] = "json"
        cfg["dataset_name"] = None
        kwargs = {"data_files": dict(data_files)}
    if kwargs:
        cfg["dataset_kwargs"] = kwargs
    if entry.num_fewshot is not None:
        cfg["num_fewshot"] = entry.num_fewshot
    return cfg


def load_error(tdef: TaskDef, e: Exception) -> UserError:
    """A task whose YAML cannot be loaded, with the likely cause named (HF `evaluate` metrics offline)."""
    text = f"{type(e).__name__}: {e}"
    hint = ""
    if "code_eval" in text or ("evaluate" in text.lower() and tdef.unsafe_code):
        hint = (" - its metric is Hugging Face `evaluate`'s code_eval, which must be cached to run offline: run "
                "once with network access: python -c \"import evaluate; evaluate.load('code_eval')\"")
    return UserError(f"loading lm-eval task {tdef.name!r} failed: {text.splitlines()[0][:300]}{hint}",
                     file=tdef.path)
