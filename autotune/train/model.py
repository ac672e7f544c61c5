"""Base checkpoints: load a local HF causal LM, or build (and cache) the demo's pre-trained tiny Llama.

The demo base is the "pre-training" stage the demo mid-trains from: a tiny Llama trained from scratch on
the prose + code domains (never on math), so that math is a new target ability and prose a general one.
Deterministic given its config and seed; saved with ``save_pretrained`` so ``AutoModelForCausalLM`` loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from autotune.config.space import DemoBase
from autotune.data.prepare import PackedDomain, building, home
from autotune.errors import UserError
from autotune.records import digest
from autotune.train.schedules import ScheduleParams
from autotune.train.trainer import NullProgress, Progress, TrainConfig, train

# The demo's pre-training mixture: prose and code, no math.
DEMO_PRETRAIN_MIX = {"prose": 0.6, "code": 0.4}


def demo_llama_config(cfg: DemoBase, vocab_size: int, eos_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.seq_len,
                       tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
                       attn_implementation="sdpa")


def demo_base(cfg: DemoBase, tokenizer_dir: Path, packed: dict[str, PackedDomain],
              progress: Progress | None = None) -> Path:
    """The demo's pre-trained base checkpoint (model + tokenizer), trained on first use, then cached."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    manifests = {k: packed[k].manifest["splits"]["train"]["source_hash"] for k in DEMO_PRETRAIN_MIX}
    key = digest({"cfg": cfg.model_dump(), "data": manifests, "torch": torch.__version__.split("+")[0]})
    final = home() / "models" / f"demo-base-{key}"
    if (final / "config.json").exists():
        return final
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(demo_llama_config(cfg, len(tokenizer), tokenizer.eos_token_id))
    seqs = max(1, cfg.batch_tokens // cfg.seq_len)
    tc = TrainConfig(seq_len=cfg.seq_len, seqs_per_step=seqs, steps=max(1, cfg.pretrain_tokens // (seqs * cfg.seq_len)),
                     seed=cfg.seed, schedule=ScheduleParams(kind="cosine", peak_lr=cfg.peak_lr, warmup_fraction=0.05,
                                                            final_lr_ratio=0.1))
    domains = {k: packed[k].tokens("train") for k in DEMO_PRETRAIN_MIX}
    with building(final) as tmp:
        summary = train(model, domains, DEMO_PRETRAIN_MIX, tc, log_path=tmp / "pretrain_log.jsonl",
                        progress=progress or NullProgress())
        model.config.use_cache = True
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "pretrain_summary.json").write_text(json.dumps(summary.to_json(), indent=1))
    return final


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


def checkpoint_hash(path: Path) -> str:
    """Hash of a checkpoint's weights and config (what a trial's result depends on)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(path.glob("*")):
        if f.suffix in (".json", ".safetensors") and f.name != "pretrain_summary.json":
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()[:16]


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
