"""The proxy trainer on a real tiny Llama: loss falls, exact per-domain tokens, NaN -> diverged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autotune.errors import TrialFailed
from autotune.train.schedules import ScheduleParams
from autotune.train.trainer import TrainConfig, train


def _model(vocab: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def _domains() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    # "a": a repeating pattern (learnable), "b": uniform noise (not learnable)
    return {"a": np.tile(np.arange(16, dtype=np.uint16), 400), "b": rng.integers(16, 64, 6400).astype(np.uint16)}


def test_training_learns_the_learnable_domain(tmp_path):
    model = _model()
    cfg = TrainConfig(seq_len=32, seqs_per_step=8, steps=40, seed=0,
                      schedule=ScheduleParams(kind="wsd", peak_lr=1e-2, warmup_fraction=0.1, decay_fraction=0.3))
    summary = train(model, _domains(), {"a": 0.5, "b": 0.5}, cfg, log_path=tmp_path / "log.jsonl")
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == 40 and summary.steps == 40
    assert summary.tokens == 40 * 8 * 32
    assert summary.tokens_per_domain == {"a": 20 * 8 * 32, "b": 20 * 8 * 32}
    first_a, last_a = log[0]["loss_per_domain"]["a"], summary.loss_per_domain["a"]
    assert last_a < 0.5 * first_a, (first_a, last_a)
    # noise stays near its entropy floor, ln(48) = 3.87 nats, well above the pattern's loss
    assert summary.loss_per_domain["b"] > 3.5 > 1.0 > last_a
    assert log[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_nan_loss_is_a_diverged_trial():
    model = _model()
    cfg = TrainConfig(seq_len=16, seqs_per_step=4, steps=30, seed=0, grad_clip=0.0,
                      schedule=ScheduleParams(kind="constant", peak_lr=1e9))
    with pytest.raises(TrialFailed) as e:
        train(model, _domains(), {"a": 0.5, "b": 0.5}, cfg)
    assert e.value.status == "diverged" and "loss is" in e.value.reason


def test_too_short_domain_fails_with_reason():
    model = _model()
    cfg = TrainConfig(seq_len=64, seqs_per_step=2, steps=1, seed=0, schedule=ScheduleParams(kind="constant", peak_lr=1e-3))
    with pytest.raises(TrialFailed, match="fewer than one sequence"):
        train(model, {"a": np.zeros(10, dtype=np.uint16), "b": np.zeros(1000, dtype=np.uint16)}, {"a": 0.5, "b": 0.5}, cfg)
