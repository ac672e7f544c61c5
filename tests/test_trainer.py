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


# ----------------------------------------------------------------------------------------------- issue 3
def _hash_inputs(model, into: list) -> None:
    """Record a hash of every forward's input ids (the batches the model really saw, at its embedding)."""
    import hashlib

    def hook(_module, args):
        into.append(hashlib.sha256(args[0].numpy().tobytes()).hexdigest()[:16])

    model.get_input_embeddings().register_forward_pre_hook(hook)


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_exact_tokens_per_domain_in_every_batch():
    """Every step's batch holds each domain's exact largest-remainder share, and the whole run's totals
    are within one sequence of ratio x sequences (counted from the batches themselves)."""
    from autotune.data.mixture import step_counts
    from autotune.train.trainer import batch_for_step

    domains = {"a": np.full(5000, 1, dtype=np.uint16), "b": np.full(5000, 2, dtype=np.uint16),
               "c": np.full(5000, 3, dtype=np.uint16)}
    ratios = {"a": 0.55, "b": 0.3, "c": 0.15}
    totals = dict.fromkeys(ratios, 0)
    for step, counts in enumerate(step_counts(ratios, 7, 50)):
        batch, names = batch_for_step(domains, counts, 16, seed=3, step=step)
        for n, v in (("a", 1), ("b", 2), ("c", 3)):
            rows = int((batch[:, 0] == v).sum())
            assert rows == names.count(n) == counts[n]
            assert rows in (int(ratios[n] * 7), int(ratios[n] * 7) + 1)  # floor or floor + 1, every step
            totals[n] += rows
    for n, r in ratios.items():
        assert abs(totals[n] - r * 7 * 50) <= 1, (n, totals[n], r * 7 * 50)


def test_resume_after_an_interruption_gives_the_same_batches_and_weights(tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(seq_len=16, seqs_per_step=6, steps=12, seed=5, state_every_steps=4,
                      schedule=ScheduleParams(kind="wsd", peak_lr=5e-3, warmup_fraction=0.2, decay_fraction=0.3))
    mix = {"a": 0.5, "b": 0.5}
    ref = _model()
    seen_ref: list = []
    _hash_inputs(ref, seen_ref)
    train(ref, _domains(), mix, cfg, log_path=tmp_path / "ref.jsonl")

    first = _model()
    seen_first: list = []
    _hash_inputs(first, seen_first)

    def stop(steps_done: int) -> None:
        if steps_done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(first, _domains(), mix, cfg, log_path=tmp_path / "run.jsonl", state_dir=tmp_path / "state", after_step=stop)
    resumed = _model()
    seen_resumed: list = []
    _hash_inputs(resumed, seen_resumed)
    summary = train(resumed, _domains(), mix, cfg, log_path=tmp_path / "run.jsonl", state_dir=tmp_path / "state")
    assert summary.resumed_from == 4 and summary.steps == 12
    assert len(seen_first) == 7 and len(seen_resumed) == 8
    assert seen_first[:4] + seen_resumed == seen_ref  # the batches of steps 4..6 are drawn again, identically
    a, b = _weights(ref), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "run.jsonl").read_text() == (tmp_path / "ref.jsonl").read_text()
    ref_summary = train(_model(), _domains(), mix, cfg)
    assert summary.tokens_per_domain == ref_summary.tokens_per_domain
    assert summary.loss_per_domain == ref_summary.loss_per_domain


def test_a_state_from_another_run_is_not_resumed(tmp_path):
    cfg = TrainConfig(seq_len=16, seqs_per_step=4, steps=6, seed=0, state_every_steps=2,
                      schedule=ScheduleParams(kind="constant", peak_lr=1e-3))
    train(_model(), _domains(), {"a": 0.5, "b": 0.5}, cfg, state_dir=tmp_path)
    assert (tmp_path / "state.pt").exists()
    other = train(_model(), _domains(), {"a": 0.25, "b": 0.75}, cfg, state_dir=tmp_path)
    assert other.resumed_from == 0 and other.steps == 6


KILL_SCRIPT = r"""
import json, os, signal, sys
import numpy as np, torch
sys.path.insert(0, {tests!r})
from test_trainer import _domains, _model, _hash_inputs
from autotune.train.schedules import ScheduleParams
from autotune.train.trainer import TrainConfig, train
torch.set_num_threads(1)
kill_at = int(sys.argv[1])
cfg = TrainConfig(seq_len=16, seqs_per_step=6, steps=12, seed=5, state_every_steps=3,
                  schedule=ScheduleParams(kind="cosine", peak_lr=5e-3, warmup_fraction=0.1))
model = _model(); seen = []
_hash_inputs(model, seen)
def after(n):
    if n == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handlers: a real kill
s = train(model, _domains(), {{"a": 0.3, "b": 0.7}}, cfg, state_dir={state!r}, after_step=after)
json.dump({{"seen": seen, "resumed_from": s.resumed_from,
           "weights": float(sum(p.double().sum() for p in model.parameters()))}}, open({out!r}, "w"))
"""


@pytest.mark.slow
def test_a_killed_process_resumes_with_the_same_batches(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "out.json"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), state=str(tmp_path / "state"), out=str(out))
    killed = subprocess.run([sys.executable, "-c", script, "8"], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists()
    resumed = subprocess.run([sys.executable, "-c", script, "-1"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["resumed_from"] == 6
    fresh = subprocess.run([sys.executable, "-c", script.replace(str(tmp_path / "state"), str(tmp_path / "fresh")), "-1"],
                           capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    ref = json.loads(out.read_text())
    assert ref["resumed_from"] == 0 and len(ref["seen"]) == 12
    assert got["seen"] == ref["seen"][6:]
    assert got["weights"] == ref["weights"]


def test_gradient_accumulation_matches_the_whole_batch():
    cfg = TrainConfig(seq_len=16, seqs_per_step=8, steps=5, seed=1, schedule=ScheduleParams(kind="constant", peak_lr=3e-3))
    whole, accumulated = _model(), _model()
    s1 = train(whole, _domains(), {"a": 0.5, "b": 0.5}, cfg)
    s2 = train(accumulated, _domains(), {"a": 0.5, "b": 0.5}, TrainConfig(**{**cfg.__dict__, "micro_batch_seqs": 3}))
    assert s1.tokens == s2.tokens and s1.tokens_per_domain == s2.tokens_per_domain
    for p, q in zip(whole.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert s2.final_loss == pytest.approx(s1.final_loss, rel=1e-5)


def test_multi_phase_mixture_is_exact_in_each_phase(tmp_path):
    cfg = TrainConfig(seq_len=16, seqs_per_step=4, steps=10, seed=0, schedule=ScheduleParams(kind="constant", peak_lr=1e-3))
    phases = [(0.0, {"a": 1.0, "b": 0.0}), (0.6, {"a": 0.25, "b": 0.75})]
    s = train(_model(), _domains(), phases, cfg, log_path=tmp_path / "log.jsonl")
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(set(r["loss_per_domain"]) == {"a"} for r in log[:6])
    assert all(set(r["loss_per_domain"]) == {"a", "b"} for r in log[6:])
    assert s.tokens_per_domain == {"a": (6 * 4 + 4 * 1) * 16, "b": 4 * 3 * 16}


def test_epoch_accounting_warns_above_max_epochs():
    small = {"a": np.tile(np.arange(16, dtype=np.uint16), 20), "b": _domains()["b"]}  # a: 320 tokens
    cfg = TrainConfig(seq_len=16, seqs_per_step=4, steps=10, seed=0, max_epochs=0.5,
                      schedule=ScheduleParams(kind="constant", peak_lr=1e-3))
    s = train(_model(), small, {"a": 0.5, "b": 0.5}, cfg)
    assert s.epochs_per_domain["a"] == pytest.approx(20 * 16 / 320)
    assert s.epochs_per_domain["b"] == pytest.approx(20 * 16 / 6400)
    assert len(s.warnings) == 1  # b: 0.05 epochs, no warning
    assert "domain 'a' repeats 1.00 epochs (320 tokens drawn from 320 available)" in s.warnings[0]
    assert "above max_epochs 0.5" in s.warnings[0]


def test_cpu_allocation_failure_is_an_oom_trial_with_the_micro_batch():
    """A real allocation failure: the process's data-segment limit is lowered so the forward pass of a
    large micro-batch cannot allocate its logits (the CPU stand-in for a CUDA OOM)."""
    import resource

    def vmdata() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData"))

    model = _model(vocab=4096)
    domains = {"a": np.random.default_rng(0).integers(0, 4096, 200_000).astype(np.uint16), "b": _domains()["b"]}
    cfg = TrainConfig(seq_len=512, seqs_per_step=64, steps=2, seed=0, micro_batch_seqs=64, fused_loss=False,
                      schedule=ScheduleParams(kind="constant", peak_lr=1e-3))  # logits alone: 64*512*4096*4 = 537 MB
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (vmdata() + 256 * 2**20, hard))
    try:
        with pytest.raises(TrialFailed) as e:
            train(model, domains, {"a": 0.5, "b": 0.5}, cfg)
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    assert e.value.status == "oom"
    assert "micro-batch of 64 x 512 tokens" in e.value.reason and "step 0" in e.value.reason


@pytest.mark.parametrize("chunk,compiled", [(7, False), (1024, False), (7, True)])
def test_fused_loss_equals_the_plain_loss_and_its_gradients(chunk, compiled):
    """Eager, and with the softmax gradient through torch.compile (the GPU default; inductor on CPU here),
    whose chunks of 7 tokens end in a shorter one (a second compiled shape)."""
    from autotune.train.loss import fused_loss_parts, linear_cross_entropy, token_losses

    x = torch.from_numpy(_domains()["b"][:4 * 33].astype(np.int64)).view(4, 33)
    plain, fused = _model(), _model()
    ref = token_losses(plain(input_ids=x[:, :-1]).logits, x[:, 1:])
    ref.mean().backward()
    backbone, weight = fused_loss_parts(fused)
    hidden = backbone(input_ids=x[:, :-1]).last_hidden_state
    total, tok = linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), weight, x[:, 1:].reshape(-1), chunk=chunk,
                                      compiled=compiled)
    (total / tok.numel()).backward()
    torch.testing.assert_close(tok, ref.detach(), rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(plain.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_loss_trains_like_the_plain_loss():
    cfg = TrainConfig(seq_len=16, seqs_per_step=8, steps=8, seed=2, schedule=ScheduleParams(kind="constant", peak_lr=3e-3))
    a, b = _model(), _model()
    sa = train(a, _domains(), {"a": 0.5, "b": 0.5}, cfg)
    sb = train(b, _domains(), {"a": 0.5, "b": 0.5}, TrainConfig(**{**cfg.__dict__, "fused_loss": False}))
    assert sa.final_loss == pytest.approx(sb.final_loss, rel=1e-4)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_speed_counts_training_steps_only():
    """Rung evaluations (``after_step``) take wall time but not training speed: tokens/s is over the
    training steps, and the steady speed (MFU's) leaves out the first step."""
    import time

    cfg = TrainConfig(seq_len=16, seqs_per_step=8, steps=6, seed=0, schedule=ScheduleParams(kind="constant", peak_lr=1e-3))
    s = train(_model(), _domains(), {"a": 0.5, "b": 0.5}, cfg, after_step=lambda n: time.sleep(0.1))
    assert s.seconds >= s.train_seconds + 0.6 - 0.05  # six sleeps are wall time, not training time
    assert s.tokens_per_s == pytest.approx(6 * 8 * 16 / s.train_seconds)
    steady = 5 * 8 * 16 / (s.train_seconds - s.first_step_s)
    assert s.steady_tokens_per_s == pytest.approx(steady) and s.compile_s is None
    assert s.to_json()["train_seconds"] == pytest.approx(s.train_seconds, abs=1e-3)
