"""lm-eval's own output beside autotune's: its results layout, and standard errors by its definition.

An evaluation with an output folder (``autotune eval -o OUT``, every trial's evaluation in its trial folder)
also writes ``OUT/lm_eval/<model>/results_<date>.json`` and (``eval -o``, not trial folders, whose
``samples/<task>.jsonl`` hold the same rows) ``samples_<task>_<date>.jsonl``: what
``lm_eval --output_path OUT/lm_eval --log_samples`` writes, by lm-eval's own writers (``EvaluationTracker``:
``save_results_aggregated``, ``save_results_samples``), so lm-eval's readers (``lm_eval.utils``'s
``get_results_filenames``, ``get_latest_filename``, ...) and the tools built on its output read it.
``<model>`` is the checkpoint path as given, sanitised as lm-eval does (``pretrained=PATH``). A rerun into
the same folder replaces that model's earlier dated files (they would otherwise pile up, one set a run).

Cached and fresh evaluations write the same files (up to the date in the names and the tracker's clock):
a task run's cache record keeps lm-eval's sections for its task and the group's subtasks (``lm_eval``:
``results`` with the stderr keys, ``configs``, ``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``,
``groups``, ``group_subtasks``) and what its ``simple_evaluate`` call recorded (``lm_eval_run``: ``config``
with the ``bootstrap_iters`` that computed the stderr, ``date``, ``git_hash``, versions and tokenizer info;
``pretty_env_info`` is one short line, ``short_env_info``, not torch's 4 KB ``collect_env`` report, which
also cost ~4 s a call); the samples are the cached per-sample log. The files are assembled from those
records only, whether the run was fresh or not.

Standard errors (``<metric>_stderr,<filter>``) are lm-eval's at ``EvalOptions.bootstrap_iters``: its CLI's
default 100000 for ``autotune eval`` and ``gate``, ``STUDY_BOOTSTRAP_ITERS`` for a study's trials (with 0
lm-eval writes "N/A" for all): ``mean_stderr`` (closed form) for mean metrics, costing
nothing; a bootstrap over documents for the aggregations lm-eval bootstraps (perplexity, median, F1, MCC,
BLEU/chrF/TER at 100 draws, nanmean); "N/A" for the rest (e.g. word/byte perplexity of rolling
log-likelihood tasks). lm-eval's bootstrap runs its replicates in pure Python in a process pool
(``lm_eval.api.metrics.bootstrap_stderr``); for ``perplexity`` and ``median`` of finite values
``exact_bootstrap`` draws the very same replicates vectorised (numpy's legacy Mersenne Twister seeded
with the list ``[i]`` is Python's ``random.Random(i)``: same uniforms, same ``floor(u * n)`` indices), in
this process, for the duration of the call; the others run lm-eval's own function with its
``DISABLE_MULTIPROC`` set: one process (no pool in a worker that may hold the accelerator), its print to
the debug log.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# lm-eval's CLI default (``--bootstrap_iters``): the stderr keys mean what lm-eval's CLI output means
BOOTSTRAP_ITERS = 100_000
# a study's trial evaluations: the standard error of a bootstrap SD from B draws is about 1/sqrt(2B), ~2% at
# 1000 (0.2% at 100000), and lm-eval's fallback bootstrap (F1, MCC, ...) costs 100x less
STUDY_BOOTSTRAP_ITERS = 1000
SUBFOLDER = "lm_eval"  # OUT/lm_eval is what one would pass to lm-eval's --output_path
# per-task sections of lm-eval's results (``lm_eval.result_schema.EvalResults``), keyed by task or group name
TASK_SECTIONS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                 "n-samples")
# what lm-eval's evaluator writes per task but is not lm-eval's file
_NOT_RUN_INFO = (*TASK_SECTIONS, "samples")
# lm-eval's model names for autotune's backends (its ``--model``)
MODEL_SOURCE = {"hf": "hf", "vllm": "vllm", "vllm-server": "local-completions"}


# ----------------------------------------------------------------------------------------------- stderr
def _vectorised(f) -> Any:
    import numpy as np
    from lm_eval.api import metrics

    return {metrics.perplexity: lambda x: np.exp(-x.mean(axis=1)),
            metrics.median: lambda x: np.sort(x, axis=1)[:, x.shape[1] // 2]}.get(f)


def exact_bootstrap(f, xs, iters: int, original=None) -> float:
    """lm-eval's ``bootstrap_stderr(f, xs, iters)``: the sample standard deviation of ``f`` over
    ``iters // chunk * chunk`` resamples (chunks of ``min(1000, iters)``, chunk ``i`` drawn by
    ``random.Random(i).choices``). The same replicates, vectorised, for ``perplexity`` and ``median`` of
    finite numbers; any other statistic goes to lm-eval's own function (``original``)."""
    import numpy as np

    vec = _vectorised(f)
    x = None
    if vec is not None:
        try:
            x = np.asarray(xs, dtype=np.float64)
        except (TypeError, ValueError):
            x = None
    if x is None or x.ndim != 1 or len(x) < 2 or not np.isfinite(x).all():
        if original is None:
            from lm_eval.api.metrics import bootstrap_stderr as original
        with contextlib.redirect_stdout(io.StringIO()) as said:  # its "bootstrapping for stddev: f1_score"
            se = original(f, xs, iters)
        if said.getvalue().strip():
            log.debug("lm-eval: %s", said.getvalue().strip())
        return se
    n = len(x)
    chunk = min(1000, iters)
    rows = max(1, 2_000_000 // n)  # memory: at most ~2M draws (16 MB) at once
    reps = []
    for i in range(iters // chunk):
        rng = np.random.RandomState([i])  # a list seed: init_by_array, as Python's random.Random(i)
        for start in range(0, chunk, rows):
            m = min(rows, chunk - start)
            idx = np.floor(rng.random_sample(m * n) * n).astype(np.int64).reshape(m, n)
            reps.append(vec(x[idx]))
    r = np.concatenate(reps)
    return float(np.sqrt(((r - r.mean()) ** 2).sum() / (len(r) - 1)))


@contextlib.contextmanager
def lm_eval_bootstrap() -> Iterator[None]:
    """For one ``simple_evaluate`` call: lm-eval's bootstrap through ``exact_bootstrap`` (same values), and
    lm-eval's ``DISABLE_MULTIPROC`` set, so the statistics it leaves to lm-eval's own function run in this
    process too (no ``mp.Pool(cpu_count())``, no "bootstrapping for stddev" print); both as before afterwards."""
    from lm_eval.api import metrics

    before = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    original = getattr(metrics, "bootstrap_stderr", None)
    if original is not None:  # another lm-eval: leave its function as it is
        metrics.bootstrap_stderr = lambda f, xs, iters: exact_bootstrap(f, xs, iters, original)
    try:
        yield
    finally:
        if original is not None:
            metrics.bootstrap_stderr = original
        if before is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = before


@contextlib.contextmanager
def short_env_info() -> Iterator[None]:
    """For one ``simple_evaluate`` call: the ``pretty_env_info`` lm-eval records (``add_env_info``: torch's
    ``collect_env`` report, ~4 KB, ~4 s of subprocesses per call) becomes one line (torch, Python, platform);
    lm-eval's versions and git hashes as it records them. Restored afterwards."""
    import platform

    try:
        from torch.utils import collect_env
    except ImportError:  # lm-eval then records "N/A (torch not installed)" itself
        yield
        return
    import torch

    original = getattr(collect_env, "get_pretty_env_info", None)
    line = f"PyTorch version: {torch.__version__}; Python {platform.python_version()}; {platform.platform()}"
    collect_env.get_pretty_env_info = lambda: line
    try:
        yield
    finally:
        if original is not None:
            collect_env.get_pretty_env_info = original


# ----------------------------------------------------------------------------------------------- records
def run_names(out: dict[str, Any], name: str) -> list[str]:
    """``name`` and, for a group, every task and subgroup under it (lm-eval's ``group_subtasks``)."""
    subtasks = out.get("group_subtasks") or {}
    names, todo = [], [name]
    while todo:
        n = todo.pop(0)
        if n not in names:
            names.append(n)
            todo.extend(subtasks.get(n) or [])
    return names


def task_sections(out: dict[str, Any], name: str) -> dict[str, Any]:
    """lm-eval's per-task sections of ``simple_evaluate``'s output for the run of task (or group) ``name``,
    JSON-safe: what the cache keeps to write lm-eval's results file again."""
    names = run_names(out, name)
    parts = {s: {n: out[s][n] for n in names if n in (out.get(s) or {})} for s in TASK_SECTIONS}
    return _json_safe({s: v for s, v in parts.items() if v})


def run_info(out: dict[str, Any]) -> dict[str, Any]:
    """What the ``simple_evaluate`` call recorded beside the tasks (``config``, ``date``, ``git_hash``,
    environment and tokenizer info), and ``general``: the experiment arguments lm-eval's tracker records
    (autotune's call passes none of them: lm-eval's defaults)."""
    import inspect

    import lm_eval

    params = inspect.signature(lm_eval.simple_evaluate).parameters
    general = {k: params[k].default for k in ("system_instruction", "fewshot_as_multiturn") if k in params}
    info = {k: v for k, v in out.items() if k not in _NOT_RUN_INFO}
    return _json_safe({**info, "general": general})


def _json_safe(obj: Any) -> Any:
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(obj, default=handle_non_serializable, ensure_ascii=False))


# ----------------------------------------------------------------------------------------------- files
def write_results(folder: Path, model: str, backend: str, runs: list[dict[str, Any]], extra: dict[str, Any],
                  samples_files: bool = True) -> Path | None:
    """Write lm-eval's results file and (``samples_files``) samples files for ``runs`` under ``folder``
    (lm-eval's output path) with lm-eval's ``EvaluationTracker``, and remove that model's earlier ones;
    returns the results file (None: lm-eval could not write it, logged; the earlier files stay).

    Each run: ``{"name": key in the files, "record": cache record, "samples": path of its samples jsonl or
    None}``; ``model`` names the model as lm-eval's ``pretrained=`` does; ``extra`` goes in an ``autotune``
    section (suite, digest, model hash)."""
    from lm_eval.loggers import EvaluationTracker

    doc: dict[str, Any] = {s: {} for s in TASK_SECTIONS}
    samples: dict[str, list[dict]] = {}
    seconds = 0.0
    info: dict[str, Any] | None = None
    limits = set()
    iters: dict[str, Any] = {}
    for run in runs:
        rec = run["record"]
        task = rec["task"]
        for section, part in rec["lm_eval"].items():
            for k, v in part.items():
                doc[section][run["name"] if k == task else k] = v
        if run["samples"] is not None and task in rec["lm_eval"].get("results", {}):
            with open(run["samples"], encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            if rows:  # a group's own run logs no samples (its subtasks do)
                samples[run["name"]] = rows
        seconds += rec.get("seconds") or 0.0
        info = info or rec["lm_eval_run"]
        limits.add(json.dumps(rec["lm_eval_run"].get("config", {}).get("limit")))
        iters[run["name"]] = rec["lm_eval_run"].get("config", {}).get("bootstrap_iters")
    doc = {k: v for k, v in doc.items() if v or k == "results"}
    info = copy.deepcopy(info or {})
    general = info.pop("general", {})
    if "config" in info:  # the model as named here (a cached run may have been scored under another path)
        info["config"]["model"] = model
        if len(limits) > 1:  # lm-eval's limit is per call: runs with different limits have none in common
            info["config"]["limit"] = None
        # the draws behind each task's stderr (a cached run keeps its own): lm-eval's one value when common
        info["config"]["bootstrap_iters"] = next(iter(iters.values())) if len(set(iters.values())) == 1 else None
    doc.update(info)
    doc["autotune"] = {**extra, "bootstrap_iters": iters}

    tracker = EvaluationTracker(output_path=str(folder))
    gct = tracker.general_config_tracker
    gct.log_experiment_args(model_source=MODEL_SOURCE.get(backend, backend), model_args={"pretrained": model},
                            system_instruction=general.get("system_instruction"),
                            chat_template=general.get("chat_template"),
                            fewshot_as_multiturn=general.get("fewshot_as_multiturn", False))
    gct.start_time = time.perf_counter() - seconds  # the evaluation's own time, fresh or cached
    tracker.save_results_aggregated(results=doc, samples=samples or None)
    date_id = getattr(tracker, "date_id", None)
    path = folder / str(gct.model_name_sanitized) / f"results_{date_id}.json"
    if date_id is None or not path.exists():  # lm-eval logs its own failure at INFO only
        log.warning("lm-eval could not write its results file under %s", folder)
        return None
    if samples_files:
        for name, rows in samples.items():
            tracker.save_results_samples(task_name=name, samples=rows)
    written = {path.name, *(f"samples_{name}_{date_id}.jsonl" for name in samples if samples_files)}
    for old in [*path.parent.glob("results_*.json"), *path.parent.glob("samples_*.jsonl")]:
        if old.name not in written:  # an earlier run's (lm-eval's names: results_<date>, samples_<task>_<date>)
            old.unlink(missing_ok=True)
    return path
