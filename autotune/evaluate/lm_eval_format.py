"""lm-eval's own output beside autotune's: its results layout, and standard errors by its definition.

An evaluation with an output folder (``autotune eval -o OUT``, every trial's evaluation in its trial folder)
also writes ``OUT/lm_eval/<model>/results_<date>.json`` and ``samples_<task>_<date>.jsonl``: what
``lm_eval --output_path OUT/lm_eval --log_samples`` writes, by lm-eval's own writers (``EvaluationTracker``:
``save_results_aggregated``, ``save_results_samples``), so lm-eval's readers (``lm_eval.utils``'s
``get_results_filenames``, ``get_latest_filename``, ...) and the tools built on its output read it.
``<model>`` is the checkpoint path as given, sanitised as lm-eval does (``pretrained=PATH``).

Cached and fresh evaluations write the same files (up to the date in the names and the tracker's clock):
a task run's cache record keeps lm-eval's sections for its task and the group's subtasks (``lm_eval``:
``results`` with the stderr keys, ``configs``, ``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``,
``groups``, ``group_subtasks``) and what its ``simple_evaluate`` call recorded (``lm_eval_run``: ``config``,
``date``, ``git_hash``, environment and tokenizer info); the samples are the cached per-sample log. The
files are assembled from those records only, whether the run was fresh or not.

Standard errors (``<metric>_stderr,<filter>``) are lm-eval's with its CLI's default ``bootstrap_iters``
(100000; with 0 lm-eval writes "N/A" for all): ``mean_stderr`` (closed form) for mean metrics, costing
nothing; a bootstrap over documents for the aggregations lm-eval bootstraps (perplexity, median, F1, MCC,
BLEU/chrF/TER at 100 draws, nanmean); "N/A" for the rest (e.g. word/byte perplexity of rolling
log-likelihood tasks). lm-eval's bootstrap runs 100000 replicates in pure Python in a process pool
(``lm_eval.api.metrics.bootstrap_stderr``); for ``perplexity`` and ``median`` of finite values
``exact_bootstrap`` draws the very same replicates vectorised (numpy's legacy Mersenne Twister seeded
with the list ``[i]`` is Python's ``random.Random(i)``: same uniforms, same ``floor(u * n)`` indices), in
this process, for the duration of the call.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# lm-eval's CLI default (``--bootstrap_iters``): the stderr keys mean what lm-eval's CLI output means
BOOTSTRAP_ITERS = 100_000
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
    from lm_eval.api import metrics

    return {metrics.perplexity: lambda x: np.exp(-x.mean(axis=1)),
            metrics.median: lambda x: np.sort(x, axis=1)[:, x.shape[1] // 2]}.get(f)


def exact_bootstrap(f, xs, iters: int, original=None) -> float:
    """lm-eval's ``bootstrap_stderr(f, xs, iters)``: the sample standard deviation of ``f`` over
    ``iters // chunk * chunk`` resamples (chunks of ``min(1000, iters)``, chunk ``i`` drawn by
    ``random.Random(i).choices``). The same replicates, vectorised, for ``perplexity`` and ``median`` of
    finite numbers; any other statistic goes to lm-eval's own function (``original``)."""
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
        return original(f, xs, iters)
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
    """For one ``simple_evaluate`` call: lm-eval's bootstrap through ``exact_bootstrap`` (same values, no
    process pool, no print); lm-eval's own function is back afterwards."""
    from lm_eval.api import metrics

    original = getattr(metrics, "bootstrap_stderr", None)
    if original is None:  # another lm-eval: leave it as it is
        yield
        return
    metrics.bootstrap_stderr = lambda f, xs, iters: exact_bootstrap(f, xs, iters, original)
    try:
        yield
    finally:
        metrics.bootstrap_stderr = original


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
def write_results(folder: Path, model: str, backend: str, runs: list[dict[str, Any]], extra: dict[str, Any]) -> Path | None:
    """Write lm-eval's results file and samples files for ``runs`` under ``folder`` (lm-eval's output path)
    with lm-eval's ``EvaluationTracker``; returns the results file (None: lm-eval could not write it, logged).

    Each run: ``{"name": key in the files, "record": cache record, "samples": path of its samples jsonl or
    None}``; ``model`` names the model as lm-eval's ``pretrained=`` does; ``extra`` goes in an ``autotune``
    section (suite, digest, model hash)."""
    from lm_eval.loggers import EvaluationTracker

    doc: dict[str, Any] = {s: {} for s in TASK_SECTIONS}
    samples: dict[str, list[dict]] = {}
    seconds = 0.0
    info: dict[str, Any] | None = None
    limits = set()
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
    doc = {k: v for k, v in doc.items() if v or k == "results"}
    info = copy.deepcopy(info or {})
    general = info.pop("general", {})
    if "config" in info:  # the model as named here (a cached run may have been scored under another path)
        info["config"]["model"] = model
        if len(limits) > 1:  # lm-eval's limit is per call: runs with different limits have none in common
            info["config"]["limit"] = None
    doc.update(info)
    doc["autotune"] = extra

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
    for name, rows in samples.items():
        tracker.save_results_samples(task_name=name, samples=rows)
    return path
