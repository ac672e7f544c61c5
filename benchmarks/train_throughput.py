"""Proxy-training throughput: autotune's trainer vs a plain HF ``Trainer``, same model, data and process.

    python benchmarks/train_throughput.py [--steps 40] [--repeats 3]

Both train the same tiny Llama (fresh copy, same init) on the same token windows, fp32 on CPU, with AdamW
and the same batch; each is timed over ``--steps`` steps after 3 warm-up steps, best of ``--repeats``. The
table prints tokens/s and the ratio (ours / HF).

    python benchmarks/train_throughput.py --gpu [--steps 10] [--micro-batch 8 16] [--batch-seqs 32]

(with --gpu, --steps defaults to 10 timed steps)

On a CUDA GPU: SmolLM2-like 135M and 360M Llama shapes at seq 2048. The baseline, in the same process, is
the plain HF ``Trainer`` with bf16, SDPA, torch.compile and fused AdamW (the issue's "HF + compile"
anchor); then our trainer (bf16 autocast + SDPA + compile + fused AdamW + fused chunked loss) at each
``--micro-batch``, and at the first micro-batch once more with the fused loss's softmax gradient eager
(what compiling it is worth). Columns: tokens/s, MFU against the card's datasheet dense bf16 peak
(``autotune.train.summary.PEAK_BF16_FLOPS``) and against the bf16 matmul peak measured at the start
(8192^3 matmuls; the anchors' MFU used a measured 779 TFLOP/s on an H200), compile time (first step minus a
steady step), peak memory, and the ratio to the baseline. FLOPs per token: ``flops_per_token`` (6 x matmul
weights, the tied output head included, + attention scores), and in the third MFU column the anchors' own
count (6 x non-embedding weights + attention: it reproduces their 31% / 39% from their tok/s exactly; ours
would call those 36% / 44%). The issue's acceptance (35% at 135M, 45% at 360M) is read in that third
column, against the measured peak. ``--device cpu --shapes tiny`` runs the same code on a tiny shape, without
compile, as a check that the script works on a machine without a GPU.
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


def time_hf(model, tokens: np.ndarray, steps: int, seq_len: int, seqs: int, out: str, *, gpu: bool = False,
            micro: int | None = None, compile_: bool = False, marks: list[float] | None = None) -> float:
    """HF ``Trainer``: fp32 on CPU; with ``gpu``, bf16 + fused AdamW (+ ``compile_``) in micro-batches."""
    from transformers import TrainerCallback

    marks = [] if marks is None else marks
    micro = micro or seqs

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            marks.clear()  # with ``marks`` given, its first entry is the start of training (after set-up)
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            if gpu:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    args = TrainingArguments(output_dir=out, per_device_train_batch_size=micro, gradient_accumulation_steps=seqs // micro,
                             max_steps=steps + 3, learning_rate=1e-3,
                             lr_scheduler_type="constant", logging_strategy="no", save_strategy="no", report_to=[],
                             use_cpu=not gpu, dataloader_num_workers=0, disable_tqdm=True, seed=0, max_grad_norm=1.0,
                             weight_decay=0.1, adam_beta2=0.95,
                             **({"bf16": True, "optim": "adamw_torch_fused", "torch_compile": compile_} if gpu else {}))
    Trainer(model=model, args=args, train_dataset=_Windows(tokens, seq_len, seqs * (steps + 3)),
            callbacks=[Clock()]).train()
    return steps * seqs * seq_len / (marks[-1] - marks[3])  # marks[0]: the start; 3 warm-up steps


# SmolLM2's published configs (HuggingFaceTB/SmolLM2-135M, -360M): hidden, layers, heads, kv heads, intermediate
GPU_SHAPES = {"135M": (576, 30, 9, 3, 1536), "360M": (960, 32, 15, 5, 2560)}
TINY_GPU_SHAPES = {"tiny": (64, 2, 2, 2, 128)}  # --shapes tiny: a check of the script itself


def matmul_peak(device: torch.device, n: int = 8192, iters: int = 50) -> float | None:
    """Measured dense bf16 matmul FLOP/s (best of 3 timings of ``iters`` n^3 products); None off CUDA."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    best = 0.0
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            a @ b
        torch.cuda.synchronize()
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t))
    return best


def _gpu_model(shape, seq: int) -> LlamaForCausalLM:
    h, layers, heads, kv, inter = shape
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=h, num_hidden_layers=layers,
                                        num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter,
                                        max_position_embeddings=seq, tie_word_embeddings=True,
                                        attn_implementation="sdpa"))


def anchor_flops_per_token(shape, seq: int) -> float:
    """FLOPs per token as the issue's anchors count them (their 31% / 39% only come out this way): 6 x the
    non-embedding parameters + 12 x layers x width x context, i.e. without the tied output head's matmul,
    which ``flops_per_token`` counts (it is computed: 6 x 28M of the 135M model's 1.23 GFLOP per token)."""
    h, layers, heads, kv, inter = shape
    head_dim = h // heads
    per_layer = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h + 3 * h * inter
    return 6.0 * layers * per_layer + 12.0 * layers * h * seq


def gpu_main(steps: int, micro_batches: list[int], batch_seqs: int, device: torch.device, shapes: dict,
             seq: int = 2048) -> None:
    import tempfile

    from autotune.train.trainer import flops_per_token, peak_flops

    cuda = device.type == "cuda"
    compile_ = cuda  # inductor on CPU would only time the compiler
    sheet, measured = peak_flops(device), matmul_peak(device)
    tokens = np.random.default_rng(0).integers(0, 49152, 50_000_000 if cuda else 2_000_000).astype(np.uint32)
    name_dev = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"torch {torch.__version__}, {name_dev}, bf16 peak: datasheet "
          f"{sheet / 1e12 if sheet else float('nan'):.0f} TFLOP/s, measured {measured / 1e12 if measured else float('nan'):.0f}"
          f" TFLOP/s; seq {seq}, {batch_seqs} seqs/step, {steps} timed steps after 3")
    print("| model | run | micro-batch | tok/s | MFU (datasheet) | MFU (measured peak) | MFU (anchor FLOPs, measured peak) "
          "| compile s | peak mem GiB | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def row(name: str, run: str, micro: int, start: float, marks: list[float], fpt: tuple[float, float], peak_mem: float,
            base: float | None) -> float:
        """``start``: training starts (model built and on the device); ``marks``: the end of each step."""
        step_s = (marks[-1] - marks[2]) / steps  # after 3 warm-up steps
        tps = batch_seqs * seq / step_s
        mfu = [f"{tps * f / p:.1%}" if p else "-" for f, p in ((fpt[0], sheet), (fpt[0], measured), (fpt[1], measured))]
        print(f"| {name} | {run} | {micro} | {tps:,.0f} | {mfu[0]} | {mfu[1]} | {mfu[2]} | "
              f"{max(0.0, marks[0] - start - step_s):.1f} "
              f"| {peak_mem / 2**30:.1f} | {tps / (base or tps):.2f}x |", flush=True)
        return tps

    def reset() -> None:
        import gc

        gc.collect()  # the previous run's model and optimizer state, before its memory is counted again
        torch._dynamo.reset()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    def peak_mem() -> float:
        return float(torch.cuda.max_memory_allocated(device)) if cuda else 0.0

    for name, shape in shapes.items():
        fpt = (flops_per_token(_gpu_model(shape, seq), seq), anchor_flops_per_token(shape, seq))
        reset()
        marks: list[float] = []  # HF: the start of training (after the Trainer's set-up), then each step's end
        base = None
        try:
            with tempfile.TemporaryDirectory() as out:  # HF Trainer windows are seq tokens, labels shifted inside
                time_hf(_gpu_model(shape, seq).to(device), tokens, steps, seq + 1, batch_seqs, out, gpu=cuda,
                        micro=micro_batches[0], compile_=compile_, marks=marks)
            base = row(name, "HF Trainer" + (" + compile" if compile_ else ""), micro_batches[0],
                       marks[0], marks[1:], fpt, peak_mem(), None)
        except Exception as e:  # e.g. oom: the row says so, ours still run (their ratio column is then 1.00x)
            print(f"| {name} | HF Trainer | {micro_batches[0]} | {type(e).__name__}: {str(e)[:80]} | | | | | |", flush=True)
        # ours at each micro-batch (the fused loss's softmax gradient compiled too, the default with compile),
        # then once with that part eager, to see what compiling it is worth
        variants = [(micro, None) for micro in micro_batches] + ([(micro_batches[0], False)] if compile_ else [])
        for micro, compile_loss in variants:
            reset()
            cfg = TrainConfig(seq_len=seq, seqs_per_step=batch_seqs, steps=steps + 3, seed=0, micro_batch_seqs=micro,
                              precision="bf16", compile=compile_, compile_loss=compile_loss,
                              schedule=ScheduleParams(kind="constant", peak_lr=1e-3))
            marks = []

            def mark(_n: int, marks: list[float] = marks) -> None:
                if cuda:
                    torch.cuda.synchronize()
                marks.append(time.perf_counter())

            model = _gpu_model(shape, seq).to(device)
            start = time.perf_counter()
            try:
                train(model, {"all": tokens}, {"all": 1.0}, cfg, after_step=mark)
            except Exception as e:  # e.g. oom at a large micro-batch: the row says so, the table goes on
                print(f"| {name} | autotune | {micro} | {type(e).__name__}: {str(e)[:80]} | | | | | |", flush=True)
                continue
            finally:
                del model
            label = "autotune" + (" + compile" if compile_ else "") + (" (loss eager)" if compile_loss is False else "")
            row(name, label, micro, start, marks, fpt, peak_mem(), base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--gpu", action="store_true", help="the GPU table (135M / 360M at seq 2048) instead")
    ap.add_argument("--micro-batch", type=int, nargs="+", default=[8, 16],
                    help="GPU: sequences per forward/backward (one row of ours per value)")
    ap.add_argument("--batch-seqs", type=int, default=32, help="GPU: sequences per optimizer step")
    ap.add_argument("--device", default="cuda", help="GPU table: cuda, or cpu to check the script")
    ap.add_argument("--shapes", choices=["smollm2", "135M", "360M", "tiny"], default="smollm2",
                    help="GPU table: both SmolLM2 shapes, one of them, or a tiny one (a check of the script)")
    args = ap.parse_args()
    if args.gpu:
        gpu_main(args.steps if args.steps != 40 else 10, args.micro_batch, args.batch_seqs, torch.device(args.device),
                 TINY_GPU_SHAPES if args.shapes == "tiny" else GPU_SHAPES if args.shapes == "smollm2"
                 else {args.shapes: GPU_SHAPES[args.shapes]}, seq=64 if args.shapes == "tiny" else 2048)
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
