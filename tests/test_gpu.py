"""The trainer's GPU path: bf16 autocast, SDPA, torch.compile, fused AdamW, MFU, CUDA OOM -> ``oom``.

Marked ``gpu`` and skipped without CUDA (the CI machines have none; run these on a GPU box with
``pytest -m gpu``). The CPU half of the same path (bf16 autocast, torch.compile on CPU) runs everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autotune.errors import TrialFailed
from autotune.train.schedules import ScheduleParams
from autotune.train.trainer import TrainConfig, train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model(vocab: int = 64, layers: int = 2, width: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=2048, attn_implementation="sdpa"))


def _domains(vocab: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"a": np.tile(np.arange(16, dtype=np.uint16), 4000), "b": rng.integers(16, vocab, 64000).astype(np.uint16)}


def _learns(device: str, precision: str, compile_: bool) -> None:
    model = _model().to(device)
    cfg = TrainConfig(seq_len=32, seqs_per_step=8, steps=30, seed=0, precision=precision, compile=compile_,
                      micro_batch_seqs=4, schedule=ScheduleParams(kind="wsd", peak_lr=1e-2, warmup_fraction=0.1))
    s = train(model, _domains(), {"a": 0.5, "b": 0.5}, cfg)
    assert s.steps == 30 and np.isfinite(s.final_loss)
    assert s.loss_per_domain["a"] < 1.5 < 3.5 < s.loss_per_domain["b"]  # learns the pattern, not the noise
    assert s.flops_per_token > 0


@pytest.mark.slow
def test_bf16_autocast_trains_on_cpu():
    _learns("cpu", "bf16", False)


@pytest.mark.slow
def test_compiled_training_equals_eager_on_cpu():
    """The torch.compile path (inductor's CPU backend here; on by default on GPU) trains the same run as
    eager: the same per-step losses and weights, up to fused-kernel rounding. ~30 s, mostly compilation."""
    cfg = dict(seq_len=32, seqs_per_step=8, steps=12, seed=0, micro_batch_seqs=4,
               schedule=ScheduleParams(kind="wsd", peak_lr=1e-2, warmup_fraction=0.1))
    eager, compiled = _model(), _model()
    a = train(eager, _domains(), {"a": 0.5, "b": 0.5}, TrainConfig(**cfg))
    b = train(compiled, _domains(), {"a": 0.5, "b": 0.5}, TrainConfig(**cfg, compile=True))
    # compile time is reported only when compiling (its size is the benchmark's business, not a test's)
    assert a.compile_s is None and b.compile_s is not None and b.compile_s >= 0
    assert b.final_loss == pytest.approx(a.final_loss, rel=1e-3)
    assert b.loss_per_domain == pytest.approx(a.loss_per_domain, rel=1e-3)
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@cuda
def test_bf16_compile_trains_on_gpu_and_reports_mfu(monkeypatch):
    monkeypatch.setenv("AUTOTUNE_PEAK_TFLOPS", "100")
    model = _model().to("cuda")
    cfg = TrainConfig(seq_len=32, seqs_per_step=8, steps=30, seed=0, precision="bf16", compile=True,
                      schedule=ScheduleParams(kind="constant", peak_lr=1e-2))
    s = train(model, _domains(), {"a": 0.5, "b": 0.5}, cfg)
    assert s.loss_per_domain["a"] < 1.5 and s.mfu is not None and 0 < s.mfu < 1
    assert s.peak_memory_bytes and s.peak_memory_bytes > 0 and s.first_step_s > 0 and s.compile_s is not None


@pytest.mark.gpu
@cuda
def test_cuda_out_of_memory_is_an_oom_trial_with_the_micro_batch():
    model = _model(vocab=49152).to("cuda")
    free, _ = torch.cuda.mem_get_info()
    seqs = int(free // (2048 * 49152 * 4)) + 64  # logits alone need more than the free memory
    cfg = TrainConfig(seq_len=2048, seqs_per_step=seqs, steps=1, seed=0, precision="bf16", fused_loss=False,
                      schedule=ScheduleParams(kind="constant", peak_lr=1e-3))  # the plain loss holds all logits
    domains = {"a": np.random.default_rng(0).integers(0, 49152, 4_000_000).astype(np.uint32)}
    with pytest.raises(TrialFailed) as e:
        train(model, domains, {"a": 1.0}, cfg)
    assert e.value.status == "oom" and f"micro-batch of {seqs} x 2048 tokens" in e.value.reason
