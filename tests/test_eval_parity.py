"""Parity with lm-eval's own CLI on stock tasks run offline from local files.

`autotune eval` on `evals/stock_offline.yaml` (GSM8K 5-shot generation with limit 50; ARC-Easy and
LAMBADA log-likelihood with limit 200; the benchmark copies in ../shared/data/benchmarks) must give the
scores that `python -m lm_eval run` prints for the same tiny checkpoint, the same unmodified task
definitions (the stock YAML `include`d, only its dataset pointed at local files), the same data and the
same settings (batch size, device, dtype, seeds, limits): equal to the last digit of the printed table
and equal as floats in lm-eval's results JSON, document by document in the per-sample logs. ARC's
conversion to the HF field layout is written here independently of autotune's field mapping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autotune.testing import BENCHMARKS, OFFLINE, REPO, lm_eval_cli_tasks, tiny_checkpoint

pytestmark = [pytest.mark.slow,  # one test, about 40 s: lm-eval's CLI and ours on three stock tasks
              pytest.mark.skipif(not BENCHMARKS.is_dir(),
                                 reason=f"benchmark copies not found at {BENCHMARKS}: the parity test reads GSM8K, "
                                        "ARC-Easy and LAMBADA from ../shared/data/benchmarks")]

SUITE = REPO / "evals" / "stock_offline.yaml"


def _printed(table: str) -> dict[tuple[str, str, str], str]:
    """(task, filter, metric) -> the value lm-eval's CLI printed, from its markdown table."""
    out, task = {}, ""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or cells[0] in ("Tasks",) or set(cells[0]) <= {"-", ":"} and cells[0]:
            continue
        task = cells[0] or task
        out[(task, cells[2], cells[4])] = cells[6]
    return out


def test_stock_tasks_equal_what_the_lm_eval_cli_prints(tmp_path):
    import torch

    ckpt = tiny_checkpoint()
    tasks = tmp_path / "cli_tasks"
    tasks.mkdir()
    lm_eval_cli_tasks(tasks)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # three processes on a small machine: one thread each (the same count on both sides: float reductions
    # depend on it), and OpenMP threads that sleep instead of spinning while they wait
    env = {**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets"), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    procs = {}
    for name, task_list, limit in (("gen", ["gsm8k"], 50), ("ll", ["arc_easy", "lambada_openai"], 200)):
        cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={ckpt},dtype=auto",
               "--device", device, "--batch_size", "64", "--include_path", str(tasks), "--tasks", *task_list,
               "--limit", str(limit), "--log_samples", "--output_path", str(tmp_path / f"cli_{name}")]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # ours, meanwhile, as a user runs it (no cache: a fresh evaluation)
    ours_dir = tmp_path / "ours"
    mine = subprocess.run([sys.executable, "-m", "autotune.cli.eval", str(ckpt), "--suite", str(SUITE), "--no-cache",
                           "--output", str(ours_dir)], capture_output=True, text=True, env=env, timeout=600)
    assert mine.returncode == 0, mine.stderr[-3000:]
    assert "gsm8k/exact_match" in mine.stdout  # the table
    ours = json.loads((ours_dir / "eval.json").read_text())

    printed, results, samples = {}, {}, {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        printed.update(_printed(out))
        for f in (tmp_path / f"cli_{name}").rglob("results_*.json"):
            results.update(json.loads(f.read_text())["results"])
        for f in (tmp_path / f"cli_{name}").rglob("samples_*.jsonl"):
            task = f.name.removeprefix("samples_").rsplit("_", 1)[0]
            samples[task] = [json.loads(x) for x in f.read_text().splitlines()]

    compared = 0
    for row in ours["rows"]:
        if row["metric"].startswith("gold_") or row.get("normalize") == "chance":
            continue
        task, metric, filt = row["task"], row["metric"], row["filter"]
        assert row["value"] == results[task][f"{metric},{filt}"], row  # the same float
        shown = printed[(task, filt, metric)]
        assert f"{row['value']:.4f}" == f"{float(shown):.4f}", (row, shown)  # what the CLI printed, to the last digit
        compared += 1
    assert compared == 4  # gsm8k exact_match, arc_easy acc, lambada acc + perplexity

    # document by document: the same prompts, generations and log-likelihoods
    for task, n in (("gsm8k", 50), ("arc_easy", 200), ("lambada_openai", 200)):
        mine = [json.loads(x) for x in (ours_dir / "samples" / f"{task}.jsonl").read_text().splitlines()]
        theirs = samples[task]
        assert len(mine) == len(theirs) == n * (2 if task == "gsm8k" else 1)  # gsm8k: two filters
        key = lambda s: (s["doc_id"], s["filter"])  # noqa: E731
        for a, b in zip(sorted(mine, key=key), sorted(theirs, key=key), strict=True):
            assert (a["doc_id"], a["prompt_hash"], a["target_hash"]) == (b["doc_id"], b["prompt_hash"], b["target_hash"])
            assert _text(a["resps"]) == _text(b["resps"]), (task, a["doc_id"])
            assert _text(a["filtered_resps"]) == _text(b["filtered_resps"]), (task, a["doc_id"])


def _text(obj):
    """lm-eval's CLI logs responses as strings (``"-207.79965209960938"``, ``"False"``): compare as such."""
    if isinstance(obj, list | tuple):
        return [_text(x) for x in obj]
    return str(obj)
