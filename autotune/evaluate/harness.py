"""The evaluator: a model + a suite -> scores, standard errors, per-sample logs and a reproducibility record.

``run_suite`` is the one entry point (the worker, ``autotune eval`` and the gate call it)::

    result = run_suite(Checkpoint(path), load_suite("evals/demo.yaml"), out_dir=folder)
    result.metrics   # {"demo_math_mc/acc": 0.31, "bpb/math": 1.92, ...}

1. Every task entry is resolved and checked (pure: ``taskdefs``) and keyed for the cache by everything its
   scores depend on (``cache``): backend, model hash, batch size, few-shot count, template hash,
   lm-eval version, limit, seeds. Entries that share a run (one task, two metrics) share it.
2. Cached runs are read back; if all are cached nothing heavy is imported and no model is loaded.
3. Held-out bits-per-byte runs on the HF model; the remaining tasks run through the suite's backend
   (``backends``), opened once: one model load / one server for all tasks. lm-eval's ``simple_evaluate``
   runs once per group of tasks with the same ``limit`` (lm-eval's limit is global), with lm-eval's own
   seeds (its CLI's defaults), ``log_samples`` on and ``EvalOptions.bootstrap_iters`` (its CLI's 100000;
   a study's trials 1000): standard errors are lm-eval's (closed form for mean metrics, its bootstrap, drawn
   exactly but vectorised, for perplexity and the like, no process pool: ``lm_eval_format``). A cached run
   keeps the standard errors of the run that computed it, and its recorded ``bootstrap_iters``. Continuous metrics and chance levels come from the per-sample
   log-likelihoods (``continuous``).
4. Per-sample logs go to ``out_dir/samples/<task>.jsonl`` (bits-per-byte: one line per scored window in
   ``samples/bpb/<domain>.jsonl``, which the gate's paired bootstrap resamples), lm-eval's own results file
   (and, with ``EvalOptions.lm_eval_samples``, its samples files) to ``out_dir/lm_eval/<model>/``
   (``lm_eval_format``; the same from the cache; a rerun replaces the earlier ones); the record of what was
   run to ``meta``.

Everything stays offline (``set_offline``) unless the user set the switches.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotune.config.suite import BpbEntry, Suite, TaskEntry
from autotune.errors import UserError
from autotune.evaluate.backends import (
    Checkpoint,
    InMemoryModel,
    ModelRef,
    free_accelerator_memory,
    make_backend,
)
from autotune.evaluate.cache import Cache, NullCache, ResultCache, cache_key
from autotune.evaluate.continuous import chance_corrected, derived_metrics, sample_stderr
from autotune.evaluate.lm_eval_format import BOOTSTRAP_ITERS
from autotune.evaluate.metrics import CONTINUOUS_METRICS
from autotune.evaluate.suite import require_code_permission
from autotune.evaluate.taskdata import data_files
from autotune.evaluate.taskdefs import (
    TaskDef,
    check_entry,
    lm_eval_config,
    lm_eval_version,
    load_error,
    template_hash,
)
from autotune.hashing import checkpoint_hash, state_dict_hash

# autotune's defaults for the environment of an evaluation: no hub access, no telemetry, no tokenizer threads
# forked into lm-eval's bootstrap pool. A variable the user set is theirs: offline_env() and set_offline() keep it.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
_FOLLOW_HUB = ("HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")  # default to the user's own HF_HUB_OFFLINE


def offline_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``OFFLINE_ENV`` under the user's own settings: a variable set in ``environ`` (default ``os.environ``)
    keeps its value, and an explicit ``HF_HUB_OFFLINE`` (``0`` too) is also the default of the datasets and
    transformers switches, so ``HF_HUB_OFFLINE=0`` means online for all three."""
    env = os.environ if environ is None else environ
    out = {k: env.get(k, v) for k, v in OFFLINE_ENV.items()}
    if "HF_HUB_OFFLINE" in env:
        out.update({k: env.get(k, env["HF_HUB_OFFLINE"]) for k in _FOLLOW_HUB})
    return out


def set_offline() -> None:
    """Nothing may reach a hub unless the user said so: set each switch the user has not set
    (``offline_env``), and tell the Hugging Face libraries already imported, which read the environment
    once at import (``huggingface_hub.constants``, which transformers asks; ``datasets.config``): a notebook
    that imported them first is offline too. Modules not yet imported are not imported."""
    os.environ.update(offline_env())
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = _is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))
        hub.HF_HUB_DISABLE_TELEMETRY = hub.HF_HUB_DISABLE_TELEMETRY or _is_true(os.environ.get("HF_HUB_DISABLE_TELEMETRY"))
    ds = sys.modules.get("datasets.config")
    if ds is not None:
        flag = os.environ.get("HF_DATASETS_OFFLINE")
        ds.HF_HUB_OFFLINE = _is_true(flag) if flag is not None else bool(getattr(hub, "HF_HUB_OFFLINE", False))
        ds.HF_DATASETS_OFFLINE = ds.HF_HUB_OFFLINE


def _is_true(value: str | None) -> bool:
    """The Hugging Face libraries' reading of a boolean variable (``1``, ``ON``, ``YES``, ``TRUE``)."""
    return value is not None and value.upper() in ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class HeldoutTokens:
    """A domain's held-out tokens for bits-per-byte; ``fingerprint`` identifies them (source + tokenizer)."""

    tokens: Any  # 1-D numpy array of token ids
    seq_len: int
    fingerprint: str


@dataclass(frozen=True)
class EvalOptions:
    """How to run a suite (what a run's scores depend on is in the suite; these change only where and how)."""

    backend: str | None = None  # overrides the suite's backend
    use_cache: bool = True
    cache_dir: Path | None = None  # default: $AUTOTUNE_HOME/eval-cache
    allow_code_execution: bool = False  # anything that runs code beyond lm-eval's own: suite.code_uses
    model_hash: str | None = None  # the target's hash when the caller knows it (skips hashing)
    # lm-eval's bootstrap draws for the stderr of a fresh run (HOW: never in a cache key; a cached run keeps
    # its own): its CLI's default for eval and gate, STUDY_BOOTSTRAP_ITERS for a study's trials
    bootstrap_iters: int = BOOTSTRAP_ITERS
    lm_eval_samples: bool = True  # lm-eval's samples_<task>_<date>.jsonl too (trial folders: samples/ only)


class _NullProgress:
    def start(self, phase: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass(frozen=True)
class SuiteResult:
    """Scores per suite entry key, their standard errors, one row per entry and the reproducibility record."""

    metrics: dict[str, float]
    stderr: dict[str, float]
    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _TaskRun:
    entry: TaskEntry
    tdef: TaskDef
    where: str
    template: str
    key: str = ""
    record: dict[str, Any] | None = None
    cached: bool = False
    samples: list[dict] | None = None  # fresh samples (NullCache)
    entries: list[TaskEntry] = field(default_factory=list)


def run_suite(target: ModelRef, suite: Suite, *, heldout: dict[str, HeldoutTokens] | None = None,
              out_dir: Path | None = None, options: EvalOptions = EvalOptions(), progress: Any = None) -> SuiteResult:
    """Evaluate ``target`` on every entry of ``suite``; see the module docstring for the steps."""
    set_offline()
    t0 = time.perf_counter()
    progress = progress or _NullProgress()
    require_code_permission(suite, options.allow_code_execution, options.backend)  # before lm-eval imports any
    backend = make_backend(options.backend or suite.backend, suite)
    cache: Cache = NullCache() if not options.use_cache else ResultCache(options.cache_dir) if options.cache_dir \
        else ResultCache.default()
    runs = _plan(suite, options)
    version = lm_eval_version()
    model_hash = options.model_hash or _model_hash(target)
    fp = backend.fingerprint(target)
    for run in runs:
        run.key = cache_key({"kind": "task", "backend": fp, "model": model_hash, "num_fewshot": run.entry.num_fewshot,
                             "template": run.template, "lm_eval": version, "limit": run.entry.limit,
                             "seeds": suite.seed.model_dump()})
        run.record = cache.get(run.key)
        if run.record is not None and out_dir is not None and "lm_eval" not in run.record:
            run.record = None  # cached before lm-eval's own sections were kept: run again for its results file
        run.cached = run.record is not None
    bpb = _bpb_plan(suite, heldout, target, model_hash)
    for b in bpb:
        b["record"] = cache.get(b["key"])
        if b["record"] is not None and "windows" not in b["record"]:
            b["record"] = None  # cached before per-window losses were kept: score again (same value)
        b["cached"] = b["record"] is not None
    todo_bpb = [b for b in bpb if not b["cached"]]
    todo = [r for r in runs if not r.cached]
    progress.start("eval", len(todo_bpb) + len(todo))
    if todo_bpb:
        _run_bpb(target, suite, todo_bpb, cache, progress)
    if todo:
        _run_tasks(target, suite, backend, todo, cache, out_dir, options, progress)
    return _assemble(suite, runs, bpb, cache, out_dir, model=_model_name(target), lm_eval_samples=options.lm_eval_samples, meta={
        "backend": backend.name, "backend_fingerprint": fp, "model_hash": model_hash, "lm_eval_version": version,
        "batch_size": suite.batch_size, "seeds": suite.seed.model_dump(), "suite": suite.name,
        "suite_digest": suite.digest(), "seconds": None, "t0": t0})


# ----------------------------------------------------------------------------------------------- planning
def _plan(suite: Suite, options: EvalOptions) -> list[_TaskRun]:
    runs: dict[str, _TaskRun] = {}
    file = suite.source_file
    for entry in suite.tasks:
        where = suite.where(entry)
        ident = json.dumps(entry.run_identity(), sort_keys=True)
        if ident in runs:
            runs[ident].entries.append(entry)
            continue
        tdef = check_entry(entry, suite, file=file, where=where)
        if tdef is None:
            raise UserError("lm-eval is not installed: pip install lm-eval", file=file, field=f"{where}.task",
                            value=entry.task)
        runs[ident] = _TaskRun(entry, tdef, where, template_hash(tdef, entry, suite), entries=[entry])
    return list(runs.values())


def _model_name(target: ModelRef) -> str:
    """The model as lm-eval's results name it (its ``pretrained=`` argument): the path as given."""
    path = target.path
    return str(path) if path is not None else "in-memory"


def _model_hash(target: ModelRef) -> str:
    if isinstance(target, Checkpoint):
        if not (Path(target.path) / "config.json").exists():
            raise UserError("not a Hugging Face checkpoint folder (no config.json)", field="checkpoint",
                            value=str(target.path))
        return checkpoint_hash(target.path)
    return state_dict_hash(target.model)


def _bpb_plan(suite: Suite, heldout: dict[str, HeldoutTokens] | None, target: ModelRef, model_hash: str) -> list[dict]:
    out = []
    for entry in suite.bpb_entries:
        h = (heldout or {}).get(entry.bpb)
        if h is None:
            raise UserError(f"no held-out tokens for domain {entry.bpb!r}: evaluate within a study, pass --space, "
                            "or give the entry a source", file=suite.source_file, field=f"{suite.where(entry)}.bpb",
                            value=entry.bpb)
        seq_len = suite.bpb_seq_len or h.seq_len
        hf = {"dtype": suite.hf.dtype, "device": suite.hf.device} if isinstance(target, Checkpoint) else \
            {"dtype": str(target.model.dtype), "device": target.model.device.type}
        key = cache_key({"kind": "bpb", "model": model_hash, "heldout": h.fingerprint, "seq_len": seq_len,
                         "tokens": suite.bpb_tokens, "hf": hf})
        out.append({"entry": entry, "heldout": h, "seq_len": seq_len, "key": key})
    return out


# ----------------------------------------------------------------------------------------------- running
def _run_bpb(target: ModelRef, suite: Suite, todo: list[dict], cache: Cache, progress) -> None:
    import torch

    from autotune.evaluate.bpb import bits_per_byte

    if isinstance(target, InMemoryModel):
        model, tokenizer, loaded = target.model, target.tokenizer, False
    else:
        model, tokenizer = _load_hf(target.path, suite)
        loaded = True
    try:
        with torch.no_grad():
            for b in todo:
                t = time.perf_counter()
                r = bits_per_byte(model, tokenizer, b["heldout"].tokens, seq_len=b["seq_len"], max_tokens=suite.bpb_tokens,
                                  windows=True)
                b["record"] = {"bpb": r["bpb"], "tokens": r["tokens"], "bytes": r["bytes"], "seq_len": b["seq_len"],
                               "seconds": round(time.perf_counter() - t, 3), "windows": r["windows"]}
                cache.put(b["key"], b["record"])
                progress.advance()
    finally:
        if loaded:
            del model
            free_accelerator_memory()


def _load_hf(path: Path, suite: Suite):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = suite.hf.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = suite.hf.dtype if suite.hf.dtype != "auto" else "auto"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def _calls(runs: list[_TaskRun]) -> list[list[_TaskRun]]:
    """Runs grouped into ``simple_evaluate`` calls: one ``limit`` per call, a task name at most once per call."""
    calls: list[list[_TaskRun]] = []
    for run in runs:
        for call in calls:
            if call[0].entry.limit == run.entry.limit and all(r.entry.task != run.entry.task for r in call):
                call.append(run)
                break
        else:
            calls.append([run])
    return calls


def _run_tasks(target: ModelRef, suite: Suite, backend, todo: list[_TaskRun], cache: Cache, out_dir: Path | None,
               options: EvalOptions, progress) -> None:
    import lm_eval

    from autotune.evaluate.lm_eval_format import lm_eval_bootstrap, short_env_info

    if options.allow_code_execution:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    calls = _calls(todo)
    specs = {id(r): lm_eval_config(r.tdef, r.entry, data_files(r.entry.data, suite, where=r.where) if r.entry.data else None)
             for r in todo}
    s = suite.seed
    if backend.name != "hf" and isinstance(target, InMemoryModel):
        target.model.to("cpu")  # the accelerator's memory goes to vLLM, which loads the saved copy
        free_accelerator_memory()
    with backend.open(target, log_dir=out_dir) as lm, _quiet_git_hash(), short_env_info():
        for call in calls:
            tm, objs = _build_tasks(call, specs, suite)
            t = time.perf_counter()
            with lm_eval_bootstrap():
                out = lm_eval.simple_evaluate(
                    model=lm, tasks=objs, task_manager=tm, limit=call[0].entry.limit, log_samples=True,
                    bootstrap_iters=options.bootstrap_iters,
                    random_seed=s.python, numpy_random_seed=s.numpy, torch_random_seed=s.torch,
                    fewshot_random_seed=s.fewshot, confirm_run_unsafe_code=options.allow_code_execution)
            seconds = time.perf_counter() - t
            for run in call:
                run.record, samples = _record(run, out, seconds / len(call))
                cache.put(run.key, run.record, samples)
                run.samples = samples
                progress.advance()


@contextlib.contextmanager
def _quiet_git_hash():
    """lm-eval's results record ``git describe --always`` of the working directory, run with the terminal's
    stderr: outside a git checkout every evaluation printed "fatal: not a git repository". lm-eval offers no
    switch, so for the call its one lookup (``lm_eval.evaluator.get_git_commit_hash``) runs the same command
    with git's stderr discarded; restored afterwards. Nothing else of lm-eval's changes."""
    import subprocess

    from lm_eval import evaluator

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:  # another lm-eval: leave it as it is
        yield
        return

    def git_hash() -> str | None:
        try:
            out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)  # noqa: S607
        except OSError:
            return None
        return (out.stdout.strip() or None) if out.returncode == 0 else None

    evaluator.get_git_commit_hash = git_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def _build_tasks(call: list[_TaskRun], specs: dict[int, Any], suite: Suite):
    """A TaskManager that indexes only what the call needs, and the built lm-eval tasks, metrics checked.

    Indexing all of lm-eval's ~14K YAML files costs 7-13 s per process; tasks passed as full configs need no
    index at all, and a stock group or tag only its own family's folder.
    """
    from lm_eval.tasks import TaskManager

    paths: list[str] = [str(p) for p in suite.task_paths]
    defaults = False
    for run in call:
        if isinstance(specs[id(run)], str):
            if run.tdef.stock and run.tdef.folder is not None:
                paths.append(str(run.tdef.folder))
            elif run.tdef.stock:
                defaults = True  # a tag: its tasks may live anywhere in lm-eval
    tm = TaskManager(include_path=sorted(set(paths)) or None, include_defaults=defaults)
    if not hasattr(tm, "load"):  # lm-eval < 0.4.10: let simple_evaluate build them
        return tm, [specs[id(r)] for r in call]
    objs = []
    for run in call:
        try:
            built = tm.load([specs[id(run)]])
        except UserError:
            raise
        except Exception as e:
            raise load_error(run.tdef, e) from e
        if run.entry.task in built.get("groups", {}):
            objs.append(built["groups"][run.entry.task])
        else:
            objs.extend(built["tasks"].values())
        for name, task in built["tasks"].items():
            for metric, fn in (getattr(task, "_metric_fn_list", None) or {}).items():
                if fn is None and getattr(task.config, "process_results", None) is None:
                    raise UserError(
                        f"task {name}: metric {metric!r} is not one lm-eval provides and Hugging Face `evaluate` could "
                        f"not load it (offline, not cached, or `evaluate` missing); lm-eval would fail later with "
                        f"\"'NoneType' object is not callable\". Cache it with network access "
                        f"(python -c \"import evaluate; evaluate.load('{metric}')\") or choose another metric",
                        file=suite.source_file, field=f"{run.where}.task", value=run.entry.task)
    return tm, objs


def _record(run: _TaskRun, out: dict[str, Any], seconds: float) -> tuple[dict[str, Any], list[dict]]:
    """A task run's cache record from ``simple_evaluate``'s output: autotune's view (results, stderr, derived
    metrics, counts) and lm-eval's own sections for its results file (``lm_eval_format``)."""
    from autotune.evaluate.lm_eval_format import run_info, task_sections

    name = run.entry.task
    res = out["results"].get(name, {})
    samples = list(out.get("samples", {}).get(name, []))
    results = {k: float(v) for k, v in res.items() if "," in k and isinstance(v, int | float) and "_stderr" not in k}
    stderr = {}
    for k, v in res.items():
        if "_stderr," in k and isinstance(v, int | float):
            stderr[k.replace("_stderr,", ",")] = float(v)
    for k, v in results.items():
        if k not in stderr:
            metric, filt = k.split(",", 1)
            se = sample_stderr(samples, metric, filt, v)
            if se is not None:
                stderr[k] = se
    record = {"task": name, "results": results, "stderr": stderr,
              "derived": derived_metrics(run.tdef.output_type, samples),
              "output_type": run.tdef.output_type, "n_samples": out.get("n-samples", {}).get(name),
              "n_shot": out.get("n-shot", {}).get(name), "version": out.get("versions", {}).get(name),
              "limit": run.entry.limit, "num_fewshot": run.entry.num_fewshot, "template_hash": run.template,
              "task_file": str(run.tdef.path) if run.tdef.path else None, "seconds": round(seconds, 3),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "lm_eval": task_sections(out, name),
              "lm_eval_run": run_info(out)}
    return record, samples


# ----------------------------------------------------------------------------------------------- results
def entry_value(entry: TaskEntry, record: dict[str, Any], *, file: str | None, where: str) -> tuple[float, float | None, float]:
    """(value, stderr, raw value) of an entry read from its run's record (normalised when asked)."""
    if entry.metric in CONTINUOUS_METRICS:
        derived = record.get("derived", {})
        if entry.metric not in derived:
            raise UserError(f"{entry.task} gave no per-sample log-likelihoods for {entry.metric}", file=file,
                            field=f"{where}.metric", value=entry.metric)
        value, se = derived[entry.metric], derived.get(f"{entry.metric}_stderr")
    else:
        k = f"{entry.metric},{entry.filter}"
        if k not in record["results"]:
            have = sorted(record["results"])
            raise UserError(f"task {entry.task} reports no metric {k!r}; it reports {have}", file=file,
                            field=f"{where}.metric", value=entry.metric)
        value, se = record["results"][k], record["stderr"].get(k)
    raw = value
    if entry.normalize == "chance":
        chance = record["derived"]["chance"]
        value = chance_corrected(value, chance)
        se = se / (1 - chance) if se is not None else None
    return value, se, raw


def _assemble(suite: Suite, runs: list[_TaskRun], bpb: list[dict], cache: Cache, out_dir: Path | None,
              meta: dict[str, Any], model: str = "in-memory", lm_eval_samples: bool = True) -> SuiteResult:
    metrics: dict[str, float] = {}
    stderr: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    group_of = {id(e): g for g in ("target", "general", "report") for e in getattr(suite, g)}
    by_entry = {id(e): r for r in runs for e in r.entries}
    bpb_by_entry = {id(b["entry"]): b for b in bpb}
    task_meta: dict[str, Any] = {}
    samples_written: dict[str, str] = {}
    for r in runs:
        rec = r.record or {}
        fname = None
        if out_dir is not None:
            fname = r.entry.task if r.entry.task not in samples_written.values() else f"{r.entry.task}@{r.key[:8]}"
            samples_written[r.key] = fname
            _write_samples(out_dir / "samples" / f"{fname}.jsonl", r, cache)
        task_meta[r.key] = {"task": r.entry.task, "entries": [e.key for e in r.entries], "cached": r.cached,
                            "template_hash": r.template, "num_fewshot": r.entry.num_fewshot, "n_shot": rec.get("n_shot"),
                            "limit": r.entry.limit, "n_samples": rec.get("n_samples"), "version": rec.get("version"),
                            "data": r.entry.data.model_dump(mode="json") if r.entry.data else None,
                            "task_file": rec.get("task_file"), "seconds": rec.get("seconds"),
                            "bootstrap_iters": (rec.get("lm_eval_run") or {}).get("config", {}).get("bootstrap_iters"),
                            "samples": f"samples/{fname}.jsonl" if fname else None}
    for entry in suite.entries:
        where = suite.where(entry)
        group = group_of[id(entry)]
        if isinstance(entry, BpbEntry):
            b = bpb_by_entry[id(entry)]
            value = b["record"]["bpb"]
            metrics[entry.key] = value
            rows.append({"key": entry.key, "group": group, "task": f"bpb:{entry.bpb}", "metric": "bpb", "value": value,
                         "stderr": None, "raw": value, "n": b["record"]["tokens"], "cached": b["cached"],
                         "weight": entry.weight, "higher_is_better": False})
            continue
        run = by_entry[id(entry)]
        value, se, raw = entry_value(entry, run.record or {}, file=suite.source_file, where=where)
        metrics[entry.key] = value
        if se is not None:
            stderr[entry.key] = se
        n = (run.record or {}).get("n_samples") or {}
        rows.append({"key": entry.key, "group": group, "task": entry.task, "metric": entry.metric, "filter": entry.filter,
                     "value": value, "stderr": se, "raw": raw, "n": n.get("effective") if isinstance(n, dict) else n,
                     "cached": run.cached, "weight": entry.weight, "higher_is_better": entry.higher_is_better,
                     "normalize": entry.normalize, "num_fewshot": (run.record or {}).get("n_shot")})
    t0 = meta.pop("t0")
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    meta["tasks"] = task_meta
    meta["bpb"] = {}
    for b in bpb:
        domain = b["entry"].bpb
        meta["bpb"][domain] = {**{k: v for k, v in b["record"].items() if k not in ("bpb", "windows")},
                               "cached": b["cached"], "heldout": b["heldout"].fingerprint,
                               "samples": f"samples/bpb/{domain}.jsonl" if out_dir is not None else None}
        if out_dir is not None:
            _write_bpb_windows(out_dir / "samples" / "bpb" / f"{domain}.jsonl", b["record"])
    meta["cached"] = all(r.cached for r in runs) and all(b["cached"] for b in bpb)
    meta["lm_eval_results"] = None
    if out_dir is not None and runs:
        from autotune.evaluate.lm_eval_format import SUBFOLDER, write_results

        written = write_results(
            out_dir / SUBFOLDER, model, meta["backend"],
            [{"name": samples_written[r.key], "record": r.record, "samples": out_dir / "samples" / f"{samples_written[r.key]}.jsonl"}
             for r in runs], samples_files=lm_eval_samples,
            extra={"suite": meta["suite"], "suite_digest": meta["suite_digest"], "model_hash": meta["model_hash"]})
        meta["lm_eval_results"] = str(written.relative_to(out_dir)) if written else None
    return SuiteResult(metrics=metrics, stderr=stderr, rows=rows, meta=meta)


def _write_bpb_windows(path: Path, record: dict[str, Any]) -> None:
    """One line per scored window: its index, summed loss (nats) and bytes (see ``bpb.bits_per_byte``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = record["windows"]
    with open(path, "w", encoding="utf-8") as f:
        for i, (nll, n_bytes) in enumerate(zip(w["nll"], w["bytes"], strict=True)):
            f.write(json.dumps({"window": i, "nll": nll, "bytes": n_bytes, "tokens": record["seq_len"]}) + "\n")


def _write_samples(path: Path, run: _TaskRun, cache: Cache) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    src = cache.samples_path(run.key)
    if src is not None:
        shutil.copyfile(src, path)
        return
    samples = run.samples if run.samples is not None else []
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, default=str, ensure_ascii=False) + "\n")
