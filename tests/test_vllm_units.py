"""The vLLM backends' pure parts, without vLLM: what a server is started with, which checkpoints may load into
a warm engine, the checks on an in-place load, and the per-document comparison of two backends. The
engines themselves are tested against real vLLM in ``tests/test_vllm.py``."""

from __future__ import annotations

import json
import sys

import pytest

from autotune.config.suite import VllmOptions
from autotune.evaluate.compare import EntryComparison, compare_docs
from autotune.evaluate.server import ServerError
from autotune.evaluate.vllm_engine import (
    EXTENSION,
    EngineHandle,
    VLLMServerBackend,
    check_reload,
    model_signature,
)
from autotune.testing import perturbed_checkpoint, set_offline, tiny_checkpoint

set_offline()


def test_server_command_has_the_engine_settings_a_cpu_needs(monkeypatch):
    monkeypatch.setattr("autotune.evaluate.vllm_engine.gpu_present", lambda: False)
    backend = VLLMServerBackend(VllmOptions(python=sys.executable, dtype="float32", max_model_len=256), 16, 1234)
    cmd = backend.command(tiny_checkpoint(), 4242, "served")
    assert cmd[:4] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    for flag in ("--no-enable-prefix-caching", "--enforce-eager"):
        assert flag in cmd
    assert cmd[cmd.index("--worker-extension-cls") + 1] == EXTENSION
    assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(1 << 30) and "--gpu-memory-utilization" not in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--max-model-len") + 1] == "256"
    monkeypatch.setattr("autotune.evaluate.vllm_engine.gpu_present", lambda: True)
    gpu = VLLMServerBackend(VllmOptions(python=sys.executable), 16, 0).command(tiny_checkpoint(), 1, "s")
    assert "--enforce-eager" not in gpu and gpu[gpu.index("--gpu-memory-utilization") + 1] == "0.9"
    assert VllmOptions(kv_cache_memory="2GiB").kv_cache_memory == 2 * 2**30


def test_a_resaved_trial_may_load_into_its_base_engine_and_a_changed_model_may_not(tmp_path):
    base = tiny_checkpoint(head_dim=32)
    trial = perturbed_checkpoint(base, tmp_path / "trial", seed=1)
    # save_pretrained adds bookkeeping (is_local, local_files_only) to tokenizer_config.json: same engine
    assert json.loads((trial / "tokenizer_config.json").read_text()) != json.loads((base / "tokenizer_config.json").read_text())
    assert model_signature(trial, "float32") == model_signature(base, "float32")
    other = tmp_path / "other"
    other.mkdir()
    for f in base.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "rope_theta": 123456.0}))
    assert model_signature(other, "float32") != model_signature(base, "float32")  # e.g. a long-context trial
    (other / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16", "dtype": "bfloat16"}))
    assert model_signature(other, "float32") == model_signature(base, "float32")  # the engine's dtype is fixed
    assert model_signature(other, "auto") != model_signature(base, "auto")  # auto: vLLM would pick another dtype


def test_an_inexact_in_place_load_is_refused(tmp_path):
    check_reload([{"path": "x", "lm_head_max_abs_err": 0.0}, {"path": "x", "lm_head_max_abs_err": None}], tmp_path)
    with pytest.raises(ServerError, match="lm_head differs"):
        check_reload([{"path": "x", "lm_head_max_abs_err": 0.5}], tmp_path)
    with pytest.raises(ServerError, match="lm_head differs"):
        check_reload([{"path": "x", "lm_head_max_abs_err": float("nan")}], tmp_path)


def test_engine_handle_travels_through_the_environment(monkeypatch, tmp_path):
    h = EngineHandle(url="http://127.0.0.1:1", model="m", signature="s", lock=str(tmp_path / "l"), log="x",
                     startup_timeout_s=5, pid=999999)
    monkeypatch.setenv("AUTOTUNE_VLLM_ENGINE", h.to_env())
    assert EngineHandle.from_env() == h
    monkeypatch.setenv("AUTOTUNE_VLLM_ENGINE", "not json")
    assert EngineHandle.from_env() is None
    with pytest.raises(ServerError, match="exited before it was ready"):  # a dead engine fails at once
        h.wait_ready()


def _mc(doc: int, logprobs: list[float], acc: float) -> dict:
    return {"doc_id": doc, "filter": "none", "resps": [[[lp, False]] for lp in logprobs], "acc": acc}


def test_compare_docs_counts_logprob_metric_and_text_differences():
    a = {(0, "none"): _mc(0, [-1.0, -2.0], 1.0), (1, "none"): _mc(1, [-3.0, -2.5], 0.0)}
    b = {(0, "none"): _mc(0, [-1.0000001, -2.0], 1.0), (1, "none"): _mc(1, [-3.0, -2.9], 1.0)}
    cmp = EntryComparison(key="t/acc", task="t", metric="acc", values={})
    compare_docs(cmp, a, b, "acc", "none", 1e-3)
    assert (cmp.docs, cmp.metric_differs, cmp.logprob_differs) == (2, 1, 1)
    assert cmp.max_rel_logprob == pytest.approx(0.4 / 2.5)
    gen_a = {(0, "strict"): {"doc_id": 0, "filter": "strict", "resps": [["7"]], "exact_match": 1.0},
             (0, "flex"): {"doc_id": 0, "filter": "flex", "resps": [["7"]], "exact_match": 1.0}}
    gen_b = {(0, "strict"): {"doc_id": 0, "filter": "strict", "resps": [["7."]], "exact_match": 1.0},
             (0, "flex"): {"doc_id": 0, "filter": "flex", "resps": [["7."]], "exact_match": 1.0}}
    gen = EntryComparison(key="g/exact_match", task="g", metric="exact_match", values={})
    compare_docs(gen, gen_a, gen_b, "exact_match", "flex", 1e-3)
    assert (gen.docs, gen.metric_differs, gen.answer_differs, gen.max_rel_logprob) == (1, 0, 1, None)
    # a continuous per-document metric within the tolerance is the same score
    c = EntryComparison(key="t/perplexity", task="t", metric="ppl", values={})
    compare_docs(c, {(0, "none"): {**_mc(0, [-1.0], 1.0), "ppl": 12.0}},
                 {(0, "none"): {**_mc(0, [-1.0], 1.0), "ppl": 12.000001}}, "ppl", "none", 1e-3)
    assert c.metric_differs == 0
