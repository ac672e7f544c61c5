"""lm-eval's own output beside autotune's (issue 16, item 2): the results/samples layout lm-eval's CLI writes
with --output_path, read back with lm-eval's own file helpers; lm-eval's stderr keys, compared with lm-eval's
own functions on the same samples; the same files from a cached evaluation; no git noise; the offline
switches respect the user's settings and reach libraries imported first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autotune.evaluate.backends import Checkpoint
from autotune.evaluate.harness import EvalOptions, run_suite
from autotune.evaluate.suite import load_suite
from autotune.testing import DEMO_TASKS, demo_suite, set_offline, tiny_checkpoint

set_offline()

LIMIT = 20
# a log-likelihood task with lm-eval's `perplexity` aggregation (bootstrapped by lm-eval) beside `acc` (mean)
PPL_TASK = {"task": "demo_prose_ppl", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(DEMO_TASKS / "prose_next_word.jsonl")}},
            "test_split": "test", "output_type": "loglikelihood", "doc_to_text": "{{context}}",
            "doc_to_target": "{{' ' + choices[label]}}",
            "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                            {"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}
VOLATILE = ("date", "start_time", "end_time", "total_evaluation_time_seconds")  # clocks, not results


def _listing(folder: Path) -> list[str]:
    """Files under ``folder`` as lm-eval's helpers see a results repository's listing: ``<model>/<file>``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _read_latest(folder: Path) -> tuple[dict, dict[str, list[dict]]]:
    """The latest results file and its samples files, found the way lm-eval's own code finds them."""
    from lm_eval.utils import (
        get_file_datetime,
        get_file_task_name,
        get_latest_filename,
        get_results_filenames,
        get_sample_results_filenames,
    )

    files = _listing(folder)
    results = get_results_filenames(files)
    assert results, files
    latest = get_latest_filename(results)
    date = get_file_datetime(latest).removesuffix(".json")
    samples = {}
    for f in get_sample_results_filenames(files):
        if get_file_datetime(f) == date:
            samples[get_file_task_name(Path(f).name)] = [json.loads(x) for x in (folder / f).read_text().splitlines()]
    return json.loads((folder / latest).read_text()), samples


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A fresh evaluation (demo tasks + the perplexity task) at a study's 1000 bootstrap draws; the same one
    from the cache asking eval's default 100000, twice into one folder; and from the cache as a trial does."""
    tmp = tmp_path_factory.mktemp("lmeval")
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / "demo_prose_ppl.yaml").write_text(yaml.safe_dump(PPL_TASK, sort_keys=False))
    spec = demo_suite(limit=LIMIT)  # its generation task runs in the slow test below
    spec["task_dirs"] = [str(DEMO_TASKS), str(tasks)]
    spec["target"] = spec["target"][:1]
    spec["report"] = [{"task": "demo_prose_ppl", "metric": "acc", "limit": LIMIT}]
    (tmp / "suite.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    suite = load_suite(tmp / "suite.yaml")
    ckpt = Checkpoint(tiny_checkpoint())
    opts = EvalOptions(cache_dir=tmp / "cache")
    fresh = run_suite(ckpt, suite, out_dir=tmp / "fresh", options=EvalOptions(cache_dir=tmp / "cache", bootstrap_iters=1000))
    run_suite(ckpt, suite, out_dir=tmp / "cached", options=opts)
    cached = run_suite(ckpt, suite, out_dir=tmp / "cached", options=opts)  # a rerun into the same folder
    run_suite(ckpt, suite, out_dir=tmp / "trial", options=EvalOptions(cache_dir=tmp / "cache", lm_eval_samples=False))
    return tmp, fresh, cached


def test_results_in_lm_eval_layout_read_by_lm_eval(evaluated):
    tmp, fresh, _ = evaluated
    from lm_eval.utils import sanitize_model_name

    doc, samples = _read_latest(tmp / "fresh" / "lm_eval")
    # the layout of `lm_eval --model hf --model_args pretrained=PATH --output_path OUT --log_samples`
    model_dir = sanitize_model_name(str(tiny_checkpoint()))
    assert fresh.meta["lm_eval_results"].startswith(f"lm_eval/{model_dir}/results_")
    assert doc["model_name_sanitized"] == model_dir and doc["model_source"] == "hf"
    tasks = {"demo_math_mc", "demo_prose_next_word", "demo_prose_ppl"}
    for section in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples"):
        assert set(doc[section]) == tasks, section
    assert doc["n-samples"]["demo_math_mc"] == {"original": 200, "effective": LIMIT}
    assert doc["configs"]["demo_prose_ppl"]["output_type"] == "loglikelihood"
    assert doc["higher_is_better"]["demo_prose_ppl"] == {"perplexity": False, "acc": True}
    assert doc["config"]["limit"] == LIMIT and doc["config"]["bootstrap_iters"] == 1000
    assert set(samples) == tasks and all(len(rows) == LIMIT for rows in samples.values())
    assert set(doc["task_hashes"]) == tasks  # lm-eval's hash over each task's samples
    # the scores are autotune's
    res = doc["results"]
    assert res["demo_math_mc"]["acc,none"] == fresh.metrics["demo_math_mc/acc"]
    assert res["demo_prose_next_word"]["acc,none"] == fresh.metrics["demo_prose_next_word/acc"]


def test_stderr_keys_agree_with_lm_eval(evaluated):
    """Mean metrics: lm-eval's closed-form mean_stderr; perplexity: lm-eval's own bootstrap (the 1000 draws
    asked, its seeds) on the same per-sample values; and eval.json's stderr is lm-eval's."""
    tmp, fresh, _ = evaluated
    from lm_eval.api.metrics import _bootstrap_internal_no_mp, mean_stderr, perplexity, sample_stddev

    doc, samples = _read_latest(tmp / "fresh" / "lm_eval")
    res = doc["results"]
    acc = [float(s["acc"]) for s in samples["demo_math_mc"]]
    assert res["demo_math_mc"]["acc_stderr,none"] == pytest.approx(mean_stderr(acc), rel=1e-12)
    assert fresh.stderr["demo_math_mc/acc"] == res["demo_math_mc"]["acc_stderr,none"]

    ppl = [float(s["perplexity"]) for s in samples["demo_prose_ppl"]]  # per-document log-likelihoods
    assert res["demo_prose_ppl"]["perplexity,none"] == pytest.approx(perplexity(ppl), rel=1e-12)
    lm_eval_value = sample_stddev(_bootstrap_internal_no_mp(perplexity, ppl, 1000))
    assert isinstance(res["demo_prose_ppl"]["perplexity_stderr,none"], float)
    assert res["demo_prose_ppl"]["perplexity_stderr,none"] == pytest.approx(lm_eval_value, rel=1e-9)


def test_exact_bootstrap_draws_lm_eval_replicates():
    """Chunked, several chunks, a median and a non-finite value (lm-eval's own function then)."""
    import random

    from lm_eval.api.metrics import _bootstrap_internal_no_mp, f1_score, median, perplexity, sample_stddev

    from autotune.evaluate.lm_eval_format import exact_bootstrap

    rnd = random.Random(5)
    xs = [-rnd.expovariate(0.5) for _ in range(37)]
    for f, iters in ((perplexity, 3000), (median, 2500), (perplexity, 700)):
        want = sample_stddev(_bootstrap_internal_no_mp(f, xs, iters))
        assert exact_bootstrap(f, xs, iters) == pytest.approx(want, rel=1e-9), (f.__name__, iters)
    calls = []
    exact_bootstrap(f1_score, [(1, 0)] * 3, 10, original=lambda *a: calls.append(a) or 0.0)
    exact_bootstrap(perplexity, [*xs, float("-inf")], 10, original=lambda *a: calls.append(a) or 0.0)
    assert len(calls) == 2


def test_cached_evaluation_writes_the_same_files(evaluated):
    tmp, fresh, cached = evaluated
    assert cached.meta["cached"] and not fresh.meta["cached"]
    a, sa = _read_latest(tmp / "fresh" / "lm_eval")
    b, sb = _read_latest(tmp / "cached" / "lm_eval")
    assert {k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE}
    assert sa == sb


def test_a_cached_run_keeps_the_stderr_and_draws_of_the_run_that_computed_it(evaluated):
    """Asked for 100000 draws, a run cached at 1000 is reused (bootstrap_iters is no part of the key) and
    says 1000: in lm-eval's config, per task in the results file's autotune section and in eval.json."""
    tmp, fresh, cached = evaluated
    assert cached.meta["cached"] and cached.stderr == fresh.stderr
    doc, _ = _read_latest(tmp / "cached" / "lm_eval")
    assert doc["config"]["bootstrap_iters"] == 1000
    assert doc["autotune"]["bootstrap_iters"] == dict.fromkeys(doc["results"], 1000)
    assert {t["bootstrap_iters"] for t in cached.meta["tasks"].values()} == {1000}


def test_a_rerun_replaces_its_earlier_lm_eval_files_and_a_trial_folder_gets_only_results(evaluated):
    tmp, _, _ = evaluated
    tasks = {"demo_math_mc", "demo_prose_next_word", "demo_prose_ppl"}
    (model,) = (tmp / "cached" / "lm_eval").iterdir()
    names = sorted(p.name for p in model.iterdir())
    assert len(names) == 1 + len(tasks) and sum(n.startswith("results_") for n in names) == 1, names
    (trial,) = (tmp / "trial" / "lm_eval").iterdir()
    (only,) = [p.name for p in trial.iterdir()]
    assert only.startswith("results_") and set(json.loads((trial / only).read_text())["task_hashes"]) == tasks
    assert {p.stem for p in (tmp / "trial" / "samples").glob("*.jsonl")} == tasks  # the samples are there once


def test_records_keep_no_environment_report(evaluated):
    """lm-eval's pretty_env_info (torch's collect_env, ~4 KB) is one short line, in the cache and the file."""
    tmp, _, _ = evaluated
    records = [json.loads(p.read_text()) for p in (tmp / "cache").rglob("*.json")]
    runs = [r["lm_eval_run"] for r in records if "lm_eval_run" in r]
    assert runs and all(len(r["pretty_env_info"]) < 300 for r in runs), [len(r["pretty_env_info"]) for r in runs]
    assert json.loads(next((tmp / "fresh" / "lm_eval").rglob("results_*.json")).read_text())["pretty_env_info"].startswith(
        "PyTorch version: ")


def test_lm_eval_own_bootstrap_opens_no_process_pool(monkeypatch, capsys):
    """A statistic autotune leaves to lm-eval (F1, MCC, ...; here a plain share) runs in this process: no
    pool, no print; the user's DISABLE_MULTIPROC is back afterwards."""
    import multiprocessing

    from lm_eval.api import metrics

    from autotune.evaluate.lm_eval_format import lm_eval_bootstrap

    def no_pool(*a, **k):
        raise AssertionError("lm-eval opened a process pool")

    monkeypatch.setattr(multiprocessing, "Pool", no_pool)
    monkeypatch.delenv("DISABLE_MULTIPROC", raising=False)
    def share(xs):
        return sum(xs) / len(xs)

    xs = [1, 0, 1, 1, 0] * 4
    with lm_eval_bootstrap():
        se = metrics.bootstrap_stderr(share, xs, 20)
    assert se > 0 and "bootstrapping" not in capsys.readouterr().out
    assert "DISABLE_MULTIPROC" not in os.environ
    monkeypatch.setenv("DISABLE_MULTIPROC", "")
    with lm_eval_bootstrap():
        metrics.bootstrap_stderr(share, xs, 20)
    assert os.environ["DISABLE_MULTIPROC"] == ""


def _clean_env(**over: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HF_") and k not in ("TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "DO_NOT_TRACK",
                                                     "DISABLE_TELEMETRY")}
    return {**env, **over}


# What a process sees for each environment, in one process (three interpreters cost ~15 s): the case's
# variables are set, huggingface_hub's constants and datasets' config are imported anew under them (as in a
# notebook that imported them first), then set_offline(): the variables, the libraries' cached flags, and
# whether a request is refused as offline.
_PROBE = """
import importlib, json, os, sys
import huggingface_hub, datasets
from huggingface_hub import constants
from huggingface_hub.errors import OfflineModeIsEnabled
from autotune.evaluate.harness import set_offline
names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")
seen = []
for case in json.loads(sys.argv[1]):
    for k in names:
        os.environ.pop(k, None)
    os.environ.update(case)
    importlib.reload(constants)
    importlib.reload(datasets.config)
    assert constants.HF_HUB_OFFLINE == (case.get("HF_HUB_OFFLINE") == "1")  # as imported under the case
    set_offline()
    try:
        huggingface_hub.utils.get_session().get("http://127.0.0.1:9/")
        refused = None
    except OfflineModeIsEnabled:
        refused = "offline"
    except Exception as e:
        refused = type(e).__name__
    seen.append({"env": {k: os.environ.get(k) for k in names}, "hub": constants.HF_HUB_OFFLINE,
                 "datasets": datasets.config.HF_HUB_OFFLINE, "request": refused})
print(json.dumps(seen))
"""


def test_offline_switches_reach_libraries_imported_first_and_keep_the_users_settings():
    """No settings: a notebook imported huggingface_hub and datasets before autotune, and evaluation is offline
    all the same. HF_HUB_OFFLINE=0 stays 0 (and means online for datasets and transformers too); the user's
    tokenizer parallelism stays; a request goes out (to a closed local port: refused by the network, not by
    the switch). An explicit HF_DATASETS_OFFLINE=1 beside it stays too."""
    cases = [{}, {"HF_HUB_OFFLINE": "0", "TOKENIZERS_PARALLELISM": "true"},
             {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "1"}]
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(cases)], capture_output=True, text=True,
                          env=_clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, user, datasets_off = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first["env"] == {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                            "TOKENIZERS_PARALLELISM": "false"}
    assert first["hub"] is True and first["datasets"] is True and first["request"] == "offline"
    assert user["env"] == {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
                           "TOKENIZERS_PARALLELISM": "true"}
    assert user["hub"] is False and user["datasets"] is False and user["request"] not in (None, "offline")
    assert datasets_off["env"]["HF_DATASETS_OFFLINE"] == "1" and datasets_off["datasets"] is True
    assert datasets_off["hub"] is False


@pytest.mark.slow
def test_eval_from_outside_git_is_quiet_and_writes_lm_eval_files(tmp_path):
    """`autotune eval -o OUT` in a folder no git repository contains: nothing of git's on the terminal
    (captured at the file descriptor: a subprocess), lm-eval's results file beside eval.json."""
    spec = demo_suite(limit=5)
    spec.pop("report")
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "eval", str(tiny_checkpoint()), "--suite", "suite.yaml",
                           "--no-cache", "-o", "out"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert subprocess.run(["git", "status"], cwd=tmp_path, capture_output=True, env=env).returncode != 0  # not a repo
    assert "not a git repository" not in proc.stderr and "fatal:" not in proc.stderr + proc.stdout
    meta = json.loads((tmp_path / "out" / "eval.json").read_text())["meta"]
    doc, samples = _read_latest(tmp_path / "out" / "lm_eval")
    assert (tmp_path / "out" / meta["lm_eval_results"]).is_file()
    assert set(doc["results"]) == set(samples) == {"demo_math_mc", "demo_math_gen", "demo_prose_next_word"}
    assert doc["git_hash"] is None and doc["config"]["bootstrap_iters"] == 100000  # eval: lm-eval's CLI default
    assert isinstance(doc["results"]["demo_math_gen"]["exact_match_stderr,first-number"], float)  # a filter's key
