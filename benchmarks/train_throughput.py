"""Proxy-training throughput: autotune's trainer vs a plain HF ``Trainer``, same model, data and process.

    python benchmarks/train_throughput.py [--steps 40] [--repeats 3]

Both train the same tiny Llama (fresh copy, same init) on the same token windows, fp32 on CPU, with AdamW
and the same batch; each is timed over ``--steps`` steps after 3 warm-up steps, best of ``--repeats``. The
table prints tokens/s and the ratio (ours / HF). GPU shapes (135M / 360M, bf16, compile) come with the
GPU work of issue 3 and are not measured here.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from autotune.train.schedules import ScheduleParams
from autotune.train.trainer import TrainConfig, train

SHAPES = {  # (hidden, layers, heads, intermediate, vocab): the demo base and a smaller one
    "demo 1.1M": (128, 4, 4, 384, 2048),
    "tiny 0.24M": (64, 2, 2, 192, 2048),
}


def _model(shape) -> LlamaForCausalLM:
    h, layers, heads, inter, vocab = shape
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                                        num_key_value_heads=heads, intermediate_size=inter, max_position_embeddings=256,
                                        tie_word_embeddings=True, attn_implementation="sdpa"))


def time_ours(model, tokens: np.ndarray, steps: int, seq_len: int, seqs: int) -> float:
    cfg = TrainConfig(seq_len=seq_len, seqs_per_step=seqs, steps=steps + 3, seed=0,
                      schedule=ScheduleParams(kind="constant", peak_lr=1e-3))
    marks: list[float] = []
    train(model, {"all": tokens}, {"all": 1.0}, cfg, after_step=lambda n: marks.append(time.perf_counter()))
    return steps * seqs * seq_len / (marks[-1] - marks[2])


class _Windows(torch.utils.data.Dataset):
    def __init__(self, tokens: np.ndarray, seq_len: int, n: int) -> None:
        rng = np.random.default_rng(0)
        self.starts = rng.integers(0, len(tokens) - seq_len - 1, n)
        self.tokens, self.seq_len = tokens, seq_len

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict:
        x = torch.from_numpy(np.asarray(self.tokens[self.starts[i]: self.starts[i] + self.seq_len], dtype=np.int64))
        return {"input_ids": x, "labels": x}


def time_hf(model, tokens: np.ndarray, steps: int, seq_len: int, seqs: int, out: str) -> float:
    from transformers import TrainerCallback

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    args = TrainingArguments(output_dir=out, per_device_train_batch_size=seqs, max_steps=steps + 3, learning_rate=1e-3,
                             lr_scheduler_type="constant", logging_strategy="no", save_strategy="no", report_to=[],
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0, max_grad_norm=1.0,
                             weight_decay=0.1, adam_beta2=0.95)
    Trainer(model=model, args=args, train_dataset=_Windows(tokens, seq_len, seqs * (steps + 3)),
            callbacks=[Clock()]).train()
    return steps * seqs * seq_len / (marks[-1] - marks[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seqs", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    tokens = np.random.default_rng(0).integers(0, 2048, 400_000).astype(np.uint16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seq {args.seq_len} x {args.seqs} seqs/step, "
          f"{args.steps} timed steps, best of {args.repeats}")
    print(f"| {'model':<11} | {'ours tok/s':>10} | {'HF Trainer tok/s':>16} | {'ratio':>6} |")
    print(f"|{'-' * 13}|{'-' * 12}|{'-' * 18}|{'-' * 8}|")
    import tempfile

    for name, shape in SHAPES.items():
        base = _model(shape)
        ours, hf = [], []
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits both
            ours.append(time_ours(copy.deepcopy(base), tokens, args.steps, args.seq_len, args.seqs))
            with tempfile.TemporaryDirectory() as out:
                hf.append(time_hf(copy.deepcopy(base), tokens, args.steps, args.seq_len, args.seqs, out))
        print(f"| {name:<11} | {max(ours):>10,.0f} | {max(hf):>16,.0f} | {max(ours) / max(hf):>5.2f}x |")


if __name__ == "__main__":
    main()
