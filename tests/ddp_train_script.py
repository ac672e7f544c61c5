"""Run by tests/test_ddp.py, alone or under `accelerate launch --cpu --num_processes 2`: trains a tiny Llama
with autotune's trainer and writes the per-step losses and a weight checksum (main process only)."""

import json
import sys

import numpy as np
import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from autotune.train.schedules import ScheduleParams
from autotune.train.trainer import TrainConfig, train

out = sys.argv[1]
acc = Accelerator(cpu=True)
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
rng = np.random.default_rng(0)
domains = {"a": np.tile(np.arange(16, dtype=np.uint16), 400), "b": rng.integers(16, 64, 6400).astype(np.uint16)}
cfg = TrainConfig(seq_len=32, seqs_per_step=8, steps=12, seed=0,
                  schedule=ScheduleParams(kind="wsd", peak_lr=1e-2, warmup_fraction=0.1, decay_fraction=0.3))
log = f"{out}.log.jsonl" if acc.is_main_process else None
summary = train(model, domains, {"a": 0.375, "b": 0.625}, cfg, log_path=log,
                accelerator=acc if acc.num_processes > 1 else None)
if acc.is_main_process:
    weights = acc.unwrap_model(model).state_dict() if acc.num_processes > 1 else model.state_dict()
    json.dump({"world": acc.num_processes, "summary": summary.to_json(),
               "checksum": float(sum(v.double().abs().sum() for v in weights.values()))}, open(out, "w"))
