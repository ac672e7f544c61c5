"""Helpers for the evaluator tests: a tiny real checkpoint, offline switches, process checks.

The checkpoint is a 2-layer, 32-wide Llama (random init, seed 0, 512 positions) with a byte-level BPE
tokenizer trained on the demo eval files: real weights and a real tokenizer that lm-eval loads like any
other, small enough that GSM8K's 256-token generations run in seconds. Built once per AUTOTUNE_HOME.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_TASKS = REPO / "evals" / "tasks" / "demo"
BENCHMARKS = (REPO / ".." / "shared" / "data" / "benchmarks").resolve()
STANDIN = Path(__file__).resolve().parent / "standin_vllm_server.py"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
TINY_VERSION = 1


def set_offline() -> None:
    os.environ.update(OFFLINE)


def tiny_checkpoint() -> Path:
    """The tiny checkpoint folder under $AUTOTUNE_HOME/test-models (built on first use, about 5 s)."""
    home = Path(os.environ["AUTOTUNE_HOME"])
    final = home / "test-models" / f"tiny-eval-v{TINY_VERSION}"
    if (final / "config.json").exists():
        return final
    set_offline()
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = []
    for f in sorted(DEMO_TASKS.glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            texts.append(" ".join(str(v) for v in rec.values()))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                     pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    hf_tok.save_pretrained(tmp)
    try:
        os.replace(tmp, final)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate, timeout: float = 60, interval: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def demo_suite(limit: int = 20, **over) -> dict:
    """A suite of the demo's multiple-choice and generation tasks, with continuous and chance-corrected metrics."""
    suite = {"name": "tiny-eval", "batch_size": 16, "task_dirs": [str(DEMO_TASKS)],
             "target": [{"task": "demo_math_mc", "metric": "acc", "limit": limit},
                        {"task": "demo_math_gen", "metric": "exact_match", "filter": "first-number", "limit": limit}],
             "general": [{"task": "demo_prose_next_word", "metric": "acc", "limit": limit}],
             "report": [{"task": "demo_math_mc", "metric": "gold_logprob", "limit": limit},
                        {"task": "demo_math_mc", "metric": "gold_prob", "limit": limit},
                        {"task": "demo_math_mc", "metric": "gold_bpb", "limit": limit},
                        {"task": "demo_math_mc", "metric": "acc", "normalize": "chance", "limit": limit}]}
    suite.update(over)
    return suite
