"""Tests for the offline demo corpora, the demo eval items and the demo lm-eval tasks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.demo import corpus as demo

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "evals" / "tasks" / "demo"
TASKS = {
    "demo_math_gen": "math_gen.jsonl",
    "demo_math_mc": "math_mc.jsonl",
    "demo_code_next_line": "code_next_line.jsonl",
    "demo_prose_next_word": "prose_next_word.jsonl",
}
N = 200


def _flat(text: str) -> str:
    return " ".join(text.split())


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------- documents


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="'poetry'"):
        demo.demo_documents("poetry", "train")
    with pytest.raises(ValueError, match="'test'"):
        demo.demo_documents("math", "test")


@pytest.mark.parametrize("source", [pytest.param(s, marks=pytest.mark.slow) if s == "prose" else s  # prose: 5-10 s
                                    for s in demo.DEMO_SOURCES])
def test_documents_deterministic_and_non_trivial(source):
    first = {split: demo.demo_documents(source, split) for split in demo.SPLITS}
    demo.clear_caches()
    second = {split: demo.demo_documents(source, split) for split in demo.SPLITS}
    assert first == second
    train, heldout = first["train"], first["heldout"]
    assert all(isinstance(d, str) and d.strip() for d in train + heldout)
    total = len(train) + len(heldout)
    assert 0.05 < len(heldout) / total < 0.15
    megabytes = sum(len(d.encode()) for d in train + heldout) / 1e6
    assert {"math": 2.0, "code": 4.0, "prose": 0.8}[source] < megabytes < 6.5


@pytest.mark.parametrize("source", demo.DEMO_SOURCES)
def test_splits_disjoint_by_key(source):
    records = demo.records(source)
    keys = [k for k, _, _ in records]
    assert len(keys) == len(set(keys)), "keys must be unique"
    by_split = {s: {k for k, sp, _ in records if sp == s} for s in demo.SPLITS}
    assert by_split["train"].isdisjoint(by_split["heldout"])
    assert all(sp == demo.split_of(k) for k, sp, _ in records)
    for split in demo.SPLITS:
        assert len(demo.demo_documents(source, split)) == len(by_split[split])


def test_split_rule_and_keys():
    key = "json/decoder.py"
    expected = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100 < 10
    assert (demo.split_of(key) == "heldout") == expected
    code_keys = [k for k, _, _ in demo.records("code")]
    assert code_keys == sorted(code_keys) and all(k.endswith(".py") for k in code_keys)
    assert not any(part in demo.CODE_EXCLUDED_DIRS for k in code_keys for part in k.split("/")[:-1])
    math_docs = demo.demo_documents("math", "train")[:2000]
    assert any(d.startswith("Q: ") and "\nA: " in d and "The answer is" in d for d in math_docs)
    assert any(d.count("\n") == 1 and d.endswith(tuple("0123456789")) and " = ?" in d for d in math_docs)


@pytest.mark.slow
def test_same_output_across_hash_seeds():
    """Nothing may depend on hash randomisation: compare digests from two processes."""
    script = (
        "import hashlib, json\n"
        "from autotune.demo import corpus as demo\n"
        "h = hashlib.sha256()\n"
        "for s in demo.DEMO_SOURCES:\n"
        "    for sp in demo.SPLITS:\n"
        "        h.update(json.dumps(demo.demo_documents(s, sp)).encode())\n"
        "for f in (demo.math_eval_items, demo.code_eval_items, demo.prose_eval_items):\n"
        "    h.update(json.dumps(f(40), sort_keys=True).encode())\n"
        "print(h.hexdigest())\n"
    )
    procs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        procs.append(
            subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        )
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and len(outs[0]) == 64


# ----------------------------------------------------------------------------- eval items


def _check_choices(item: dict) -> None:
    choices, label = item["choices"], item["label"]
    assert isinstance(label, int) and 0 <= label < len(choices) == 4
    assert all(isinstance(c, str) and c for c in choices)
    assert len(set(choices)) == 4, choices


@pytest.mark.slow
def test_eval_items_deterministic():
    for fn in (demo.math_eval_items, demo.code_eval_items, demo.prose_eval_items):
        items = fn(N)
        assert len(items) == N and items == fn(N)


def test_math_items_from_heldout():
    problems = {p: (demo.split_of(p), a) for p, _, a in demo.math_problems()}
    for item in demo.math_eval_items(N):
        _check_choices(item)
        assert item["choices"][item["label"]] == item["answer"]
        assert all(c.lstrip("-").isdigit() for c in item["choices"])
        q = item["question"]
        assert q.startswith("Q: ") and q.endswith("\nA:")
        split, answer = problems[q[len("Q: ") : -len("\nA:")]]
        assert split == "heldout" and answer == item["answer"]


def test_code_items_from_heldout():
    heldout = demo.demo_documents("code", "heldout")
    train = demo.demo_documents("code", "train")
    for item in demo.code_eval_items(N):
        _check_choices(item)
        ctx, gold = item["context"], item["choices"][item["label"]]
        lines = ctx.split("\n")
        assert 6 <= len(lines) <= 10 and all(ln.strip() for ln in lines)
        assert len(gold.strip()) >= 12 and not gold.strip().startswith("#")
        assert gold == gold.rstrip()
        assert any(ctx + "\n" + gold in d for d in heldout)
        assert not any(ctx in d for d in train)


def test_prose_items_from_heldout():
    heldout = [_flat(d) for d in demo.demo_documents("prose", "heldout")]
    train = [_flat(d) for d in demo.demo_documents("prose", "train")]
    for item in demo.prose_eval_items(N):
        _check_choices(item)
        ctx, gold = item["context"], item["choices"][item["label"]]
        assert len(ctx.split()) >= 12
        assert all(c.isalpha() and len(c) >= 4 for c in item["choices"])
        assert len({c.lower() for c in item["choices"]}) == 4
        assert any(ctx + " " + gold in d for d in heldout)
        assert not any(ctx in d for d in train)


@pytest.mark.skipif(sys.version_info[:2] != (3, 11),
                    reason="the committed code/prose items were drawn from Python 3.11's stdlib; other versions differ")
def test_committed_eval_files_are_current(tmp_path):
    """The committed task data is what ``python -m autotune.demo.corpus`` writes (on the Python that wrote it)."""
    demo.write_eval_data(tmp_path, n=N)
    for fname in TASKS.values():
        fresh = (tmp_path / fname).read_text(encoding="utf-8")
        committed = (TASK_DIR / fname).read_text(encoding="utf-8")
        assert fresh == committed, f"{fname} is stale: run `python -m autotune.demo.corpus`"
        rows = _read_jsonl(TASK_DIR / fname)
        assert len(rows) == N
        assert all(list(r) == sorted(r) for r in rows)
    assert set(_read_jsonl(TASK_DIR / "math_gen.jsonl")[0]) == {"question", "answer"}


# ----------------------------------------------------------------------------- lm-eval


def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    import datasets.config
    import huggingface_hub.constants

    # In case datasets / huggingface_hub were imported before the env was set.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _task_config(name: str) -> dict:
    """The full task config with data_files made absolute (next to the YAML).

    lm-eval 0.4.13 does NOT merge a partial dict like {"task": name, "dataset_kwargs": ...}
    with the registered YAML: a dict spec becomes a standalone inline config. So load the
    YAML with lm-eval's own loader, edit it, and pass the whole dict.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(TASK_DIR / f"{name}.yaml", resolve_func=True)
    files = cfg["dataset_kwargs"]["data_files"]
    cfg["dataset_kwargs"]["data_files"] = {k: str(TASK_DIR / v) for k, v in files.items()}
    return cfg


def _tiny_model_and_tokenizer():
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    docs = (
        demo.demo_documents("math", "train")[:300]
        + demo.demo_documents("code", "train")[:3]
        + demo.demo_documents("prose", "train")[:30]
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(docs, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=hf_tok.eos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
    )
    return LlamaForCausalLM(config).eval(), hf_tok


def test_task_yamls_have_run_comment_and_relative_data_files():
    from lm_eval.tasks._yaml_loader import load_yaml

    for name, fname in TASKS.items():
        path = TASK_DIR / f"{name}.yaml"
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("#") and "lm_eval" in first and name in first
        cfg = load_yaml(path, resolve_func=True)
        assert cfg["task"] == name and cfg["dataset_path"] == "json"
        assert cfg["dataset_kwargs"]["data_files"] == {"test": fname}
        assert cfg["test_split"] == "test"


def test_task_yamls_run_in_lm_eval(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    start = time.time()
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    assert set(TASKS) <= set(tm.all_tasks)
    model, tok = _tiny_model_and_tokenizer()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=16)
    out = lm_eval.simple_evaluate(model=lm, tasks=[_task_config(n) for n in TASKS], task_manager=tm, limit=8)
    res = out["results"]
    assert 0.0 <= res["demo_math_gen"]["exact_match,first-number"] <= 1.0
    for name in ("demo_math_mc", "demo_code_next_line", "demo_prose_next_word"):
        assert 0.0 <= res[name]["acc,none"] <= 1.0
        assert 0.0 <= res[name]["acc_norm,none"] <= 1.0
    code_req = out["samples"]["demo_code_next_line"][0]["arguments"][0]
    assert code_req[1].startswith("\n") and not code_req[0].endswith("\n")
    assert time.time() - start < 30


def test_task_wiring_with_oracle_lm(monkeypatch, tmp_path):
    """An LM that knows the gold answers must score 1.0 everywhere (checks target, filters)."""
    _offline(monkeypatch, tmp_path)
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    gold_gen = {r["question"]: r["answer"] for r in _read_jsonl(TASK_DIR / "math_gen.jsonl")}
    gold_mc: dict[tuple[str, str], bool] = {}
    for fname, ctx_key, delim in (
        ("math_mc.jsonl", "question", " "),
        ("code_next_line.jsonl", "context", "\n"),
        ("prose_next_word.jsonl", "context", " "),
    ):
        for r in _read_jsonl(TASK_DIR / fname):
            for i, c in enumerate(r["choices"]):
                gold_mc[(r[ctx_key], delim + c)] = i == r["label"]

    class Oracle(LM):
        def loglikelihood(self, requests):
            return [(0.0, True) if gold_mc[r.args] else (-50.0, False) for r in requests]

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            return [f" {gold_gen[r.args[0]]} apples, and 3 more" for r in requests]

    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model=Oracle(), tasks=[_task_config(n) for n in TASKS], task_manager=tm, limit=8
    )
    res = out["results"]
    assert res["demo_math_gen"]["exact_match,first-number"] == 1.0
    for name in ("demo_math_mc", "demo_code_next_line", "demo_prose_next_word"):
        assert res[name]["acc,none"] == 1.0
