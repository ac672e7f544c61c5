"""Run by tests/test_ddp.py, alone or under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo):
trains a tiny Llama with autotune's trainer and writes the per-step losses and a weight checksum (main
process only).

    python ddp_train_script.py OUT [--sharding ddp|fsdp] [--precision fp32|bf16] [--state-dir DIR --crash-after K]
        [--state-every-s S --skew S]

``--crash-after K`` raises on every process after step K (a run killed mid-way); run again with the same
``--state-dir`` and no ``--crash-after``, it resumes from the last saved state (every 5 steps, or every
``--state-every-s`` seconds; ``--skew S`` starts the second process's training S seconds late).
"""

import argparse
import copy
import json
import logging
import time

import numpy as np
import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from autotune.logs import to_stderr
from autotune.train.schedules import ScheduleParams
from autotune.train.trainer import TrainConfig, train

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--sharding", default="ddp")
ap.add_argument("--state-dir")
ap.add_argument("--crash-after", type=int)
ap.add_argument("--precision", default="fp32")
ap.add_argument("--state-every-s", type=float, default=0.0)
ap.add_argument("--skew", type=float, default=0.0, help="the second process starts training this much later")
args = ap.parse_args()
to_stderr(logging.INFO)  # the trainer's notes (resuming from a state) on stderr, as in a worker

acc = Accelerator(cpu=True)
distributed = acc.num_processes > 1
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                     tie_word_embeddings=args.sharding == "fsdp"))
rng = np.random.default_rng(0)
domains = {"a": np.tile(np.arange(16, dtype=np.uint16), 400), "b": rng.integers(16, 64, 6400).astype(np.uint16)}
cfg = TrainConfig(seq_len=32, seqs_per_step=8, steps=12, seed=0, micro_batch_seqs=2, sharding=args.sharding,
                  precision=args.precision,
                  state_every_steps=5 if args.state_dir and not args.state_every_s else 0,
                  state_every_s=args.state_every_s,
                  schedule=ScheduleParams(kind="wsd", peak_lr=1e-2, warmup_fraction=0.1, decay_fraction=0.3))
fsdp = distributed and args.sharding == "fsdp"
whole = copy.deepcopy(model) if fsdp and acc.is_main_process else None  # receives the gathered weights
seen = []


def after_step(steps_done: int) -> None:
    if whole is not None:  # the gathered copy at step 6 (a "rung") and at the end
        seen.append((steps_done, float(sum(v.double().abs().sum() for v in whole.state_dict().values()))))
    if steps_done == args.crash_after:
        raise RuntimeError(f"crash after step {steps_done}")


log = f"{args.out}.log.jsonl" if acc.is_main_process else None
if acc.process_index == 1:
    time.sleep(args.skew)  # its clock for time-based saves starts later than the main process's
try:
    summary = train(model, domains, {"a": 0.375, "b": 0.625}, cfg, log_path=log, after_step=after_step,
                    accelerator=acc if distributed else None, state_dir=args.state_dir, gather_into=whole,
                    gather_steps=[6])
except RuntimeError as e:
    if "crash after" not in str(e):
        raise
    raise SystemExit(17) from None
if acc.is_main_process:
    weights = (whole if fsdp else acc.unwrap_model(model) if distributed else model).state_dict()
    json.dump({"world": acc.num_processes, "summary": summary.to_json(), "gathered": seen,
               "sharded_numel": sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel()
                                    for p in model.parameters()),
               "whole_numel": sum(p.numel() for p in (whole or model).parameters()),
               "checksum": float(sum(v.double().abs().sum() for v in weights.values()))}, open(args.out, "w"))
