"""Users bring their own base models: the trainer (and its fused loss) on tiny random models of the
architectures mid-training starts from (Llama / SmolLM, Qwen2 / Qwen3, Mistral, OLMo 2, Phi-3, GPT-2,
Gemma 2), built locally from their transformers configs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers

from autotune.train.loss import fused_loss_parts, linear_cross_entropy, token_losses
from autotune.train.schedules import ScheduleParams
from autotune.train.trainer import TrainConfig, flops_per_token, train

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
ARCHS = {  # config class, its fields, whether the fused loss applies (a plain linear head)
    "llama": ("LlamaConfig", SMALL, True),
    "qwen2": ("Qwen2Config", SMALL, True),
    "qwen3": ("Qwen3Config", {**SMALL, "head_dim": 8}, True),
    "mistral": ("MistralConfig", SMALL, True),
    "olmo2": ("Olmo2Config", SMALL, True),
    "phi3": ("Phi3Config", {**SMALL, "pad_token_id": 0}, True),
    "gpt2": ("GPT2Config", dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64), True),
    "gemma2": ("Gemma2Config", {**SMALL, "head_dim": 8}, False),  # logit soft-capping: the plain loss
}


def _model(arch: str):
    name, fields, _ = ARCHS[arch]
    torch.manual_seed(0)
    cfg = getattr(transformers, name)(**fields)
    return transformers.AutoModelForCausalLM.from_config(cfg)


def _tokens(n: int = 4000) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 96, n).astype(np.uint16)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_fused_loss_applies_where_the_head_is_plain_and_equals_the_model_loss(arch):
    model = _model(arch).eval()
    x = torch.from_numpy(_tokens()[: 2 * 17].astype(np.int64)).view(2, 17)
    with torch.no_grad():
        ref = token_losses(model(input_ids=x[:, :-1]).logits, x[:, 1:])
        parts = fused_loss_parts(model)
        assert (parts is not None) == ARCHS[arch][2]
        if parts is not None:
            backbone, weight = parts
            hidden = backbone(input_ids=x[:, :-1]).last_hidden_state
            _, tok = linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), weight, x[:, 1:].reshape(-1), chunk=5)
            torch.testing.assert_close(tok, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_trainer_trains_each_architecture(arch):
    model = _model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = {"a": np.tile(np.arange(8, dtype=np.uint16), 500), "b": _tokens()}
    cfg = TrainConfig(seq_len=16, seqs_per_step=8, steps=4, seed=0, micro_batch_seqs=4,
                      schedule=ScheduleParams(kind="constant", peak_lr=3e-3))
    s = train(model, data, {"a": 0.5, "b": 0.5}, cfg)
    assert s.steps == 4 and np.isfinite(s.final_loss) and s.tokens == 4 * 8 * 16
    assert s.flops_per_token == flops_per_token(model, 16) > 0
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.slow
def test_a_study_mid_trains_a_local_qwen2_checkpoint(tmp_path):
    """`base_model:` a local HF checkpoint folder of another architecture (a tiny random Qwen2 with a BPE
    tokenizer of the demo text), relative to the space file: prepared, evaluated, mid-trained, saved."""
    import json
    import shutil

    import optuna

    from autotune.demo.base import train_demo_tokenizer
    from autotune.testing import run_cli, tiny_space, write_space

    tok_dir = train_demo_tokenizer(512, ["demo:code", "demo:math", "demo:prose"])
    base = tmp_path / "models" / "qwen2-tiny"
    shutil.copytree(tok_dir, base)
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(**{**SMALL, "vocab_size": 512, "max_position_embeddings": 128, "eos_token_id": 0})
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(base, safe_serialization=True)
    space = tiny_space("qwen", trials=1, base_model="models/qwen2-tiny")
    proc = run_cli("search", str(write_space(tmp_path, space)), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="qwen", storage=f"sqlite:///{tmp_path / 'runs/qwen/study.db'}")
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("reason")
    run = tmp_path / "runs/qwen" / t.user_attrs["run_dir"]
    assert json.loads((run / "checkpoint/config.json").read_text())["model_type"] == "qwen2"
    trained = json.loads((run / "result.json").read_text())["train"]
    assert trained["tokens"] == 4096 and trained["final_loss"] < math.log(512) + 1  # a real loss of a 512-way model
    assert t.user_attrs["metrics"]["bpb/math"] > 0
