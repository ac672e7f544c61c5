"""lm-evaluation-harness adapter (HF backend): a live model + a suite -> metrics, stderrs, per-sample logs.

Runs ``lm_eval.simple_evaluate`` in-process on an ``HFLM`` that wraps the model already in memory (no
reload, no CLI start-up: about 1-2 s for the demo suite). Custom tasks load from the suite's
``task_dirs``; a task YAML's relative ``data_files`` are resolved against the YAML's folder (lm-eval
would resolve them against the working directory). Everything stays offline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from autotune.evaluate.suite import Suite, TaskEntry, find_task_yaml

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_offline() -> None:
    """Nothing may reach a hub: set the switches before datasets / transformers read them."""
    os.environ.update(OFFLINE_ENV)


def task_spec(entry: TaskEntry, suite: Suite) -> str | dict[str, Any]:
    """The lm-eval task spec: a stock task's name, or a custom task's full config with absolute data files.

    lm-eval 0.4.13 reads a ``{"task": name, ...}`` dict as a new inline task, not as overrides of the
    registered one, so custom tasks are passed whole (their YAML, with ``data_files`` made absolute).
    """
    yaml_path = find_task_yaml(entry.task, suite.task_paths)
    if yaml_path is None:
        return {"task": entry.task, "num_fewshot": entry.num_fewshot} if entry.num_fewshot else entry.task
    import yaml

    cfg = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if isinstance(files, dict):
        kwargs["data_files"] = {k: str((yaml_path.parent / v).resolve()) for k, v in files.items()}
    elif isinstance(files, str):
        kwargs["data_files"] = str((yaml_path.parent / files).resolve())
    if kwargs:
        cfg["dataset_kwargs"] = kwargs
    if entry.num_fewshot:
        cfg["num_fewshot"] = entry.num_fewshot
    return cfg


def run_tasks(model, tokenizer, suite: Suite, samples_dir: Path | None = None, *, seed: int = 0) -> dict[str, Any]:
    """Evaluate every task entry of ``suite``; returns ``{"metrics", "stderr", "meta"}`` keyed by entry key."""
    set_offline()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    entries = suite.tasks
    if not entries:
        return {"metrics": {}, "stderr": {}, "meta": {}}
    custom = all(find_task_yaml(e.task, suite.task_paths) is not None for e in entries)
    tm = TaskManager(include_path=[str(p) for p in suite.task_paths] or None, include_defaults=not custom,
                     verbosity="ERROR")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=suite.batch_size)
    metrics: dict[str, float] = {}
    stderr: dict[str, float] = {}
    meta: dict[str, Any] = {"lm_eval_version": lm_eval.__version__, "backend": suite.backend,
                            "batch_size": suite.batch_size, "tasks": {}}
    by_limit: dict[int | None, list[TaskEntry]] = {}
    for e in entries:
        by_limit.setdefault(e.limit, []).append(e)
    for limit, group in by_limit.items():
        out = lm_eval.simple_evaluate(model=lm, tasks=[task_spec(e, suite) for e in group], task_manager=tm,
                                      limit=limit, log_samples=samples_dir is not None, bootstrap_iters=0,
                                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                      fewshot_random_seed=seed, verbosity="ERROR")
        for e in group:
            res = out["results"][e.task]
            key = f"{e.metric},{e.filter}"
            if key not in res:
                have = sorted(k for k in res if "," in k and "_stderr" not in k)
                raise KeyError(f"task {e.task!r} reports no metric {key!r}; it reports {have}")
            metrics[e.key] = float(res[key])
            se = res.get(f"{e.metric}_stderr,{e.filter}")
            if isinstance(se, int | float):
                stderr[e.key] = float(se)
            meta["tasks"][e.task] = {"n_samples": out["n-samples"].get(e.task, {}),
                                     "num_fewshot": out.get("n-shot", {}).get(e.task),
                                     "version": out.get("versions", {}).get(e.task), "limit": limit}
            if samples_dir is not None:
                samples_dir.mkdir(parents=True, exist_ok=True)
                with open(samples_dir / f"{e.task}.jsonl", "w") as f:
                    for s in out["samples"].get(e.task, []):
                        f.write(json.dumps(s, default=str) + "\n")
    return {"metrics": metrics, "stderr": stderr, "meta": meta}
