"""One hashing module (issue 12, item 1): a checkpoint's hash covers every weight format and tokenizer
file, the study keys its base and runs by it, and ``autotune eval`` gives the same checkpoint the same key.

Before ``autotune.hashing`` two checkpoint hashers disagreed: the study's ignored ``.bin`` weights and
``tokenizer.model``, so a base whose weights changed kept its hash and its old runs were reused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from autotune.config.space import load_space
from autotune.hashing import checkpoint_hash, tokenizer_hash
from autotune.search.study import Study
from autotune.testing import tiny_space, write_space


def _touch_bytes(path, data: bytes) -> None:
    path.write_bytes(data)
    st = path.stat()  # a new mtime even within the filesystem's timestamp granularity
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_checkpoint_hash_covers_every_weight_format_and_tokenizer_file(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    before = checkpoint_hash(ckpt)
    for name in ("pytorch_model.bin", "model.safetensors", "model.pt", "tokenizer.model", "merges.txt",
                 "model.safetensors.index.json"):
        _touch_bytes(ckpt / name, b"one")
        with_file = checkpoint_hash(ckpt)
        assert with_file != before, name
        _touch_bytes(ckpt / name, b"two")  # same size, other bytes
        assert checkpoint_hash(ckpt) != with_file, name
        before = checkpoint_hash(ckpt)
    # not part of what a checkpoint computes: the demo base's timings, a README
    for name in ("pretrain_summary.json", "README.md", "notes.txt"):
        (ckpt / name).write_text("x")
        assert checkpoint_hash(ckpt) == before, name


def test_tokenizer_hash_reads_tokenizer_files_only(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"a": 1}')
    h = tokenizer_hash(tok)
    (tok / "config.json").write_text('{"hidden_size": 8}')  # a model's config does not tokenize
    (tok / "model.safetensors").write_bytes(b"w")
    assert tokenizer_hash(tok) == h
    _touch_bytes(tok / "tokenizer.model", b"sentencepiece")
    assert tokenizer_hash(tok) != h


def _bin_base(folder) -> None:
    """A tiny Llama saved as ``pytorch_model.bin`` (not safetensors), with the demo tokenizer."""
    import torch
    import transformers

    from autotune.demo.base import train_demo_tokenizer

    shutil.copytree(train_demo_tokenizer(512, ["demo:code", "demo:math", "demo:prose"]), folder)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                   eos_token_id=0, bos_token_id=0, pad_token_id=0, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(folder)  # transformers 5 writes safetensors only: the .bin is written by hand
    (folder / "model.safetensors").unlink()
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").exists() and not (folder / "model.safetensors").exists()


def _change_weights(folder) -> None:
    import torch

    path = folder / "pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    name = next(k for k in state if k.endswith("embed_tokens.weight"))
    state[name] = state[name] + 0.5 * torch.randn_like(state[name])
    time.sleep(0.01)
    torch.save(state, path)


def _eval_model_hash(checkpoint, suite, space, cwd) -> str:
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "eval", str(checkpoint), "--suite", str(suite),
                           "--space", str(space), "--json"],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["meta"]["model_hash"]


@pytest.mark.slow
def test_a_changed_bin_base_or_tokenizer_model_is_a_new_base_and_eval_agrees(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _bin_base(tmp_path / "models" / "base")
    space_file = write_space(tmp_path, tiny_space("binbase", trials=1, base_model="models/base"))

    def base_run():
        study = Study(load_space(space_file), log=lambda s: None)
        prepared = study.prepare()
        result = study.evaluate_base()
        return prepared, study.run_key(None), result

    first, key1, result1 = base_run()
    # autotune eval of the same folder keys it the same way (its eval cache entries are the study's)
    assert _eval_model_hash(tmp_path / "models" / "base", tmp_path / "suite.yaml", space_file, tmp_path) == first.base_hash
    assert result1.eval_meta["model_hash"] == first.base_hash

    _change_weights(tmp_path / "models" / "base")
    second, key2, result2 = base_run()
    assert second.base_hash != first.base_hash
    assert key2 != key1  # a new base folder: the base evaluation ran again, on the new weights
    assert result2.metrics["bpb/math"] != result1.metrics["bpb/math"]
    assert sorted(p.name for p in (tmp_path / "runs" / "binbase" / "base").iterdir()) == sorted([key1, key2])

    _touch_bytes(tmp_path / "models" / "base" / "tokenizer.model", b"a sentencepiece model")
    third, key3, _ = base_run()
    assert third.base_hash != second.base_hash and third.tokenizer_hash != second.tokenizer_hash
    assert key3 not in (key1, key2)
