"""Proxy-training throughput: autotune's trainer vs a plain HF ``Trainer``, same model, data and process.

    python benchmarks/train_throughput.py [--steps 40] [--repeats 3]

Both train the same tiny Llama (fresh copy, same init) on the same token windows, fp32 on CPU, with AdamW
and the same batch; each is timed over ``--steps`` steps after 3 warm-up steps, best of ``--repeats``. The
table prints tokens/s and the ratio (ours / HF).

    python benchmarks/train_throughput.py --gpu [--steps 20] [--micro-batch 8]

On a CUDA GPU: SmolLM2-like 135M and 360M Llama shapes at seq 2048, our trainer in bf16 + SDPA + fused
AdamW with and without torch.compile (the baseline, in the same process): tokens/s, MFU against the
card's dense bf16 peak (``autotune.train.trainer.PEAK_BF16_FLOPS``; set AUTOTUNE_PEAK_TFLOPS to use a
measured peak), compile time (first step minus a steady step) and peak memory.
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


# SmolLM2's published configs (HuggingFaceTB/SmolLM2-135M, -360M): hidden, layers, heads, kv heads, intermediate
GPU_SHAPES = {"135M": (576, 30, 9, 3, 1536), "360M": (960, 32, 15, 5, 2560)}


def gpu_main(steps: int, micro_batch: int, batch_seqs: int) -> None:
    from autotune.train.trainer import peak_flops

    device = torch.device("cuda")
    seq = 2048
    peak = peak_flops(device)
    tokens = np.random.default_rng(0).integers(0, 49152, 50_000_000).astype(np.uint32)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}, dense bf16 peak "
          f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s, seq {seq}, {batch_seqs} seqs/step in micro-batches of "
          f"{micro_batch}, {steps} timed steps")
    print("| model | variant | tok/s | MFU | compile s | peak mem GiB | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, (h, layers, heads, kv, inter) in GPU_SHAPES.items():
        base_tps = None
        for variant, compile_ in (("bf16 + SDPA", False), ("bf16 + SDPA + compile", True)):
            torch.manual_seed(0)
            model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=h, num_hidden_layers=layers,
                                                 num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter,
                                                 max_position_embeddings=seq, tie_word_embeddings=True,
                                                 attn_implementation="sdpa")).to(device)
            cfg = TrainConfig(seq_len=seq, seqs_per_step=batch_seqs, steps=steps + 3, seed=0, micro_batch_seqs=micro_batch,
                              precision="bf16", compile=compile_, schedule=ScheduleParams(kind="constant", peak_lr=1e-3))
            marks: list[float] = []

            def mark(_n: int, marks: list[float] = marks) -> None:
                torch.cuda.synchronize()
                marks.append(time.perf_counter())

            summary = train(model, {"all": tokens}, {"all": 1.0}, cfg, after_step=mark)
            step_s = (marks[-1] - marks[2]) / steps
            tps = batch_seqs * seq / step_s
            mfu = tps * summary.flops_per_token / peak if peak else float("nan")
            base_tps = base_tps or tps
            print(f"| {name} | {variant} | {tps:,.0f} | {mfu:.1%} | {max(0.0, summary.first_step_s - step_s):.1f} | "
                  f"{(summary.peak_memory_bytes or 0) / 2**30:.1f} | {tps / base_tps:.2f}x |", flush=True)
            del model
            torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--gpu", action="store_true", help="the GPU table (135M / 360M at seq 2048) instead")
    ap.add_argument("--micro-batch", type=int, default=8, help="GPU: sequences per forward/backward")
    ap.add_argument("--batch-seqs", type=int, default=32, help="GPU: sequences per optimizer step")
    args = ap.parse_args()
    if args.gpu:
        gpu_main(args.steps if args.steps != 40 else 10, args.micro_batch, args.batch_seqs)
        return
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
