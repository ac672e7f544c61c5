"""The demo's tokenizer and pre-trained base model, built on first use and cached under ``$AUTOTUNE_HOME``.

The demo base is the "pre-training" stage the demo mid-trains from: a tiny Llama trained from scratch on
the prose + code domains (never on math), so that math is a new target ability and prose a general one.
Deterministic given its config and seed; saved with ``save_pretrained`` so ``AutoModelForCausalLM`` loads it.
``prepare_demo`` is all the study's worker calls: it returns a tokenizer folder and a checkpoint folder, and
the rest of autotune treats them as any user's.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from autotune.config.run import DemoBase
from autotune.data.prepare import EOS, PackedDomain, pack_domain, source_documents
from autotune.data.sources import DATA_VERSION
from autotune.paths import building, home
from autotune.records import digest
from autotune.train.schedules import ScheduleParams

if TYPE_CHECKING:
    from autotune.train.trainer import Progress

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
    """The demo's pre-trained base checkpoint (model + tokenizer), trained on first use, then cached. A cached
    one is found without importing torch or transformers (their imports are most of a warm prepare job)."""
    manifests = {k: packed[k].manifest["splits"]["train"]["source_hash"] for k in DEMO_PRETRAIN_MIX}
    # torch's version as torch.__version__ gives it, read from its metadata (the same string)
    key = digest({"cfg": cfg.model_dump(), "data": manifests, "torch": importlib.metadata.version("torch").split("+")[0]})
    final = home() / "models" / f"demo-base-{key}"
    if (final / "config.json").exists():
        return final
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from autotune.train.trainer import NullProgress, TrainConfig, train

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


def train_demo_tokenizer(vocab_size: int, sources: list[str]) -> Path:
    """A byte-level BPE trained on the demo sources' train splits; cached, deterministic."""
    key = digest({"vocab": vocab_size, "sources": sorted(sources), "python": sys.version_info[:2], "v": DATA_VERSION})
    final = home() / "tokenizers" / f"demo-{key}"
    if (final / "tokenizer.json").exists():
        return final
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    docs = [d for s in sorted(sources) for d in source_documents(s, "train", where=s)]
    tok.train_from_iterator(docs, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   unk_token=None, model_max_length=1_000_000)
    with building(final) as tmp:
        fast.save_pretrained(tmp)
    return final


def prepare_demo(cfg: DemoBase, domain_sources: list[str], progress: Progress) -> tuple[Path, Path]:
    """The demo's tokenizer (trained on its pre-training sources and the study's ``demo:`` domains) and its
    pre-trained base checkpoint: ``(tokenizer folder, checkpoint folder)``, both cached."""
    sources = sorted({"demo:" + s for s in DEMO_PRETRAIN_MIX} | set(domain_sources))
    progress.start("tokenizer", 1)
    tok_dir = train_demo_tokenizer(cfg.vocab_size, sources)
    progress.advance()
    progress.start("pre-training data", len(DEMO_PRETRAIN_MIX))
    packed = {}
    for k in DEMO_PRETRAIN_MIX:
        packed[k] = pack_domain("demo:" + k, tok_dir, where=f"demo:{k}")
        progress.advance()
    return tok_dir, demo_base(cfg, tok_dir, packed, progress)
