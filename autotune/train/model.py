"""Base checkpoints: load a local HF causal LM (fp32, CPU), read what its pre-training ended at, change its
RoPE base. The demo's base model is built in ``autotune/demo/base.py``; here every base is a folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from autotune.errors import UserError


def load_causal_lm(path: Path):
    """A local HF checkpoint (model + tokenizer) in fp32 on CPU; a clear error if it is not one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise UserError("not a Hugging Face checkpoint folder (no config.json)", field="base_model", value=str(path))
    try:  # SDPA attention (flash / memory-efficient kernels on GPU); a model without it keeps its default
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="sdpa")
    except (ValueError, ImportError):
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def base_final_lr(path: Path) -> float | None:
    """The learning rate the base run ended at, for ``schedule.start_lr: base``: from HF Trainer's
    ``trainer_state.json`` (its last logged ``learning_rate``) or the demo base's ``pretrain_log.jsonl``."""
    state = path / "trainer_state.json"
    if state.exists():
        history = json.loads(state.read_text()).get("log_history", [])
        lrs = [h["learning_rate"] for h in history if isinstance(h.get("learning_rate"), int | float)]
        if lrs:
            return float(lrs[-1])
    log = path / "pretrain_log.jsonl"
    if log.exists():
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        if lines:
            return float(json.loads(lines[-1])["lr"])
    return None


def set_rope_theta(model, rope_theta: float) -> None:
    """Change a RoPE model's base (long-context extension) in place: config and rotary tables."""
    cfg = model.config
    if getattr(cfg, "rope_parameters", None) is not None:
        cfg.rope_parameters = {**cfg.rope_parameters, "rope_theta": float(rope_theta)}
    else:
        cfg.rope_theta = float(rope_theta)
    for name, module in model.named_modules():
        if name.endswith("rotary_emb"):
            fresh = type(module)(config=cfg).to(next(model.parameters()).device)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], fresh)
