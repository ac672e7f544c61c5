"""The proxy trainer: a causal LM trained on a mixture of domains in exact per-step ratios.

One loop serves the demo's pre-training and every proxy mid-training run (CPU path; bf16, compile and
multi-GPU come with the GPU work). Per step it draws ``counts[domain]`` windows of ``seq_len + 1``
tokens from each domain's packed tokens at offsets from ``rng(seed, step)`` (so any step's batch can be
rebuilt without replaying the run), takes one AdamW step at the schedule's LR, and logs the loss per domain.
A non-finite loss stops the run with ``TrialFailed("diverged")``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from autotune.data.mixture import step_counts
from autotune.errors import TrialFailed
from autotune.train.schedules import ScheduleParams, lr_at


class Progress(Protocol):
    """Where long work reports how far it got (a terminal bar, a pipe to the controller, or nothing)."""

    def start(self, phase: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...


class NullProgress:
    def start(self, phase: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass(frozen=True)
class TrainConfig:
    seq_len: int
    seqs_per_step: int
    steps: int
    seed: int
    schedule: ScheduleParams
    # AdamW settings of small-LM practice (GPT-3 / Llama: betas 0.9/0.95, weight decay 0.1, clip 1.0)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    log_every: int = 1


@dataclass
class TrainSummary:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    tokens_per_domain: dict[str, int] = field(default_factory=dict)
    loss_per_domain: dict[str, float] = field(default_factory=dict)  # mean over the last 10% of steps

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens, "seconds": round(self.seconds, 3),
                "tokens_per_s": round(self.tokens_per_s, 1), "final_loss": self.final_loss,
                "tokens_per_domain": self.tokens_per_domain, "loss_per_domain": self.loss_per_domain}


def batch_for_step(domains: dict[str, np.ndarray], counts: dict[str, int], seq_len: int, seed: int,
                   step: int) -> tuple[np.ndarray, list[str]]:
    """The token windows of one step, ``[sum(counts), seq_len + 1]``, and each row's domain."""
    rng = np.random.default_rng([seed, step])
    rows: list[np.ndarray] = []
    names: list[str] = []
    for name, n in counts.items():
        if n == 0:
            continue
        arr = domains[name]
        hi = len(arr) - seq_len - 1
        if hi <= 0:
            raise TrialFailed("failed", f"domain {name!r} has {len(arr)} tokens, fewer than one sequence of {seq_len + 1}")
        starts = rng.integers(0, hi, size=n)
        rows.extend(np.asarray(arr[s:s + seq_len + 1], dtype=np.int64) for s in starts)
        names.extend([name] * n)
    return np.stack(rows), names


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)  # no decay on norms and biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(model: torch.nn.Module, domains: dict[str, np.ndarray], ratios: dict[str, float], cfg: TrainConfig,
          *, log_path: Path | None = None, progress: Progress | None = None,
          after_step: Callable[[int], None] | None = None, accelerator=None) -> TrainSummary:
    """Train in place. ``after_step(steps_done)`` runs after each update (rung evaluations); it may use the
    model in eval mode: training mode is restored after it.

    With an ``accelerate.Accelerator`` over W processes (``accelerate launch``), every process builds the
    step's full batch (the same, from the seed) and trains on rows ``rank::W``; DDP averages the gradients,
    so the run equals the single-process one and the mixture stays exact. Logs and progress belong to the
    main process (pass ``log_path`` / ``progress`` only there).
    """
    progress = progress or NullProgress()
    torch.manual_seed(cfg.seed)
    model.train()
    if hasattr(model, "config"):
        model.config.use_cache = False
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.schedule.peak_lr, betas=cfg.betas)
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    if cfg.seqs_per_step % world:
        raise TrialFailed("failed", f"{cfg.seqs_per_step} sequences per step do not split over {world} processes")
    if accelerator:
        model, opt = accelerator.prepare(model, opt)
    device = next(model.parameters()).device
    plan = step_counts(ratios, cfg.seqs_per_step, cfg.steps)
    summary = TrainSummary(tokens_per_domain=dict.fromkeys(ratios, 0))
    tail = max(1, cfg.steps // 10)
    tail_loss: dict[str, list[float]] = {n: [] for n in ratios}
    log = open(log_path, "w") if log_path else None  # noqa: SIM115  (closed in finally)
    progress.start("train", cfg.steps)
    t0 = time.perf_counter()
    try:
        for step, counts in enumerate(plan):
            lr = lr_at(step, cfg.steps, cfg.schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            batch, names = batch_for_step(domains, counts, cfg.seq_len, cfg.seed, step)
            x = torch.from_numpy(batch[rank::world]).to(device)
            logits = model(input_ids=x[:, :-1]).logits
            tok_loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1),
                                       reduction="none").view(x.size(0), -1)
            loss = tok_loss.mean()
            row_loss = tok_loss.detach().mean(dim=1)
            if accelerator:  # every process sees all rows' losses, in rank order
                row_loss = accelerator.gather(row_loss)
                names = [n for r in range(world) for n in names[r::world]]
            step_loss = row_loss.mean().item()
            if not math.isfinite(step_loss):
                raise TrialFailed("diverged", f"loss is {step_loss} at step {step} (lr {lr:.3g})")
            opt.zero_grad(set_to_none=True)
            (accelerator.backward(loss) if accelerator else loss.backward())
            if cfg.grad_clip > 0:
                clip = accelerator.clip_grad_norm_ if accelerator else torch.nn.utils.clip_grad_norm_
                clip(model.parameters(), cfg.grad_clip)
            opt.step()
            per_domain = {}
            for name in counts:
                idx = [i for i, n in enumerate(names) if n == name]
                if idx:
                    per_domain[name] = row_loss[idx].mean().item()
                    summary.tokens_per_domain[name] += len(idx) * cfg.seq_len
                    if step >= cfg.steps - tail:
                        tail_loss[name].append(per_domain[name])
            summary.steps = step + 1
            summary.tokens += len(names) * cfg.seq_len
            summary.final_loss = step_loss
            if log and (step % cfg.log_every == 0 or step == cfg.steps - 1):
                log.write(json.dumps({"step": step, "lr": lr, "loss": round(step_loss, 5),
                                      "loss_per_domain": {k: round(v, 5) for k, v in per_domain.items()},
                                      "tokens": summary.tokens}) + "\n")
            progress.advance()
            if after_step is not None:
                after_step(step + 1)
                model.train()
    finally:
        summary.seconds = time.perf_counter() - t0
        if log:
            log.close()
    summary.loss_per_domain = {n: (sum(v) / len(v) if v else math.nan) for n, v in tail_loss.items()}
    return summary
