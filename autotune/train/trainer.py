"""The proxy trainer: a causal LM trained on a mixture of domains in exact per-step ratios.

One loop serves the demo's pre-training and every proxy mid-training run, on CPU or GPU, on one process or
data-parallel over ``accelerate``. Per step it draws ``counts[domain]`` windows of ``seq_len + 1`` tokens
from each domain's packed tokens at offsets from ``rng(seed, step)``, so any step's batch is a pure
function of (seed, step): a run resumed from a saved state at step k draws exactly the batches an
uninterrupted run draws. The step's rows go through forward/backward in micro-batches of
``micro_batch_seqs`` (gradient accumulation, to reach ``batch_tokens`` when a whole step does not fit),
then one AdamW update at the schedule's LR; the loss is logged per domain.

Over several processes, ``sharding="ddp"`` replicates the model (DDP through ``accelerate``) and
``sharding="fsdp"`` shards weights, gradients and AdamW state over them (PyTorch FSDP2, ``fully_shard`` per
decoder layer), for models whose training state does not fit one device; both train on the same rows of
the same batches, so a run's result does not depend on the process count or the sharding.

GPU path: ``precision="bf16"`` autocasts matmuls to bfloat16 (weights and AdamW state stay fp32), the
model's attention is SDPA (``load_causal_lm``), ``compile=True`` wraps the model in ``torch.compile``
(the first step's time, which includes compilation, is logged), and AdamW is the fused CUDA kernel.

Failures end the run with ``TrialFailed``: a non-finite loss is ``diverged``; running out of memory (CUDA
OOM, or the CPU allocator failing) is ``oom`` with the micro-batch that failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from autotune.config.identity import HOW, RUN, mark, run_key
from autotune.data.mixture import phased_step_counts
from autotune.errors import TrialFailed, is_out_of_memory
from autotune.records import digest
from autotune.train.loss import fused_loss_parts, linear_cross_entropy, token_losses
from autotune.train.schedules import ScheduleParams, lr_at
from autotune.train.state import (
    TrainState,
    fsdp_shard,
    full_states,
    gather_weights_into,
    load_optimizer_state,
    truncate_log,
)
from autotune.train.summary import TrainSummary, flops_per_token, peak_flops

_log = logging.getLogger(__name__)
Mixture = dict[str, float] | list[tuple[float, dict[str, float]]]


class Progress(Protocol):
    """Where long work reports how far it got (a terminal bar, a pipe to the controller, or nothing)."""

    def start(self, phase: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...


class StepLog(Protocol):
    """Where the logged steps' values go besides the train log: an experiment tracker (the worker's, through
    ``search.tracking``), at ``step`` = optimizer updates done."""

    def log(self, values: dict[str, float], step: int) -> None: ...


def log_due(done: int, every: int, total: int) -> bool:
    """Whether the values after optimizer update ``done`` (1-based: updates done, the step trackers are given)
    are logged, for the train log (``log_every``) and a tracker (``search.tracking.every_steps``) alike: the
    first, every ``every``-th and the last of ``total``."""
    return done == 1 or done % every == 0 or done == total


class NullProgress:
    def start(self, phase: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass(frozen=True)
class TrainConfig:
    """One training run. RUN fields determine the sequence of batches and updates (they key its resumable
    train state); HOW fields how they are computed, logged or saved (``autotune/config/identity.py``)."""

    seq_len: int = field(metadata=mark(RUN))
    seqs_per_step: int = field(metadata=mark(RUN))
    steps: int = field(metadata=mark(RUN))
    seed: int = field(metadata=mark(RUN))
    schedule: ScheduleParams = field(metadata=mark(RUN))
    # AdamW settings of small-LM practice (GPT-3 / Llama: betas 0.9/0.95, weight decay 0.1, clip 1.0)
    weight_decay: float = field(default=0.1, metadata=mark(RUN))
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=mark(RUN))
    grad_clip: float = field(default=1.0, metadata=mark(RUN))
    log_every: int = field(default=1, metadata=mark(HOW))
    # rows per forward/backward on each process (None: the whole step)
    micro_batch_seqs: int | None = field(default=None, metadata=mark(HOW))
    precision: str = field(default="fp32", metadata=mark(RUN))  # "fp32" | "bf16" (autocast; master weights stay fp32)
    compile: bool = field(default=False, metadata=mark(HOW))
    # output projection + cross-entropy in chunks (autotune/train/loss.py) where it applies
    fused_loss: bool = field(default=True, metadata=mark(HOW))
    loss_chunk: int = field(default=1024, metadata=mark(HOW))  # tokens per chunk of the fused loss
    # the fused loss's softmax gradient through torch.compile (None: as compile)
    compile_loss: bool | None = field(default=None, metadata=mark(HOW))
    # warn when a domain's draws exceed this many passes over its tokens
    max_epochs: float | None = field(default=None, metadata=mark(HOW))
    # save a resumable state every N steps (0: not by steps) or when this many seconds passed since the last
    state_every_steps: int = field(default=0, metadata=mark(HOW))
    state_every_s: float = field(default=0.0, metadata=mark(HOW))
    # over several processes: "ddp" (replicated) | "fsdp" (sharded: FSDP2)
    sharding: str = field(default="ddp", metadata=mark(HOW))

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16 (got {self.precision!r})")
        if self.micro_batch_seqs is not None and self.micro_batch_seqs < 1:
            raise ValueError(f"micro_batch_seqs must be >= 1 (got {self.micro_batch_seqs})")
        if self.sharding not in ("ddp", "fsdp"):
            raise ValueError(f"sharding must be ddp or fsdp (got {self.sharding!r})")

    def run_identity(self) -> dict:
        """What determines the sequence of batches and updates (its RUN fields), not how they are computed or saved."""
        return run_key(self)


def batch_for_step(domains: dict[str, np.ndarray], counts: dict[str, int], seq_len: int, seed: int,
                   step: int) -> tuple[np.ndarray, list[str]]:
    """The token windows of one step, ``[sum(counts), seq_len + 1]``, and each row's domain."""
    rng = np.random.default_rng([seed, step])
    out = np.empty((sum(counts.values()), seq_len + 1), dtype=np.int64)
    names: list[str] = []
    row = 0
    for name, n in counts.items():
        if n == 0:
            continue
        arr = domains[name]
        hi = len(arr) - seq_len - 1
        if hi <= 0:
            raise TrialFailed("failed", f"domain {name!r} has {len(arr)} tokens, fewer than one sequence of {seq_len + 1}")
        for s in rng.integers(0, hi, size=n):
            out[row] = arr[s:s + seq_len + 1]
            row += 1
        names.extend([name] * n)
    return out, names


def as_phases(mixture: Mixture) -> list[tuple[float, dict[str, float]]]:
    return [(0.0, dict(mixture))] if isinstance(mixture, dict) else [(float(s), dict(r)) for s, r in mixture]


def plan_epochs(domains: dict[str, np.ndarray], plan: list[dict[str, int]],
                seq_len: int) -> tuple[dict[str, int], dict[str, float]]:
    """Tokens each domain of a run's ``plan`` (sequences per domain per step) will be trained on, and the
    epochs that makes (tokens / tokens available)."""
    tokens = {n: sum(c.get(n, 0) for c in plan) * seq_len for n in plan[0]}
    return tokens, {n: t / max(1, len(domains[n])) for n, t in tokens.items()}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)  # no decay on norms and biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------- train
def train(model: torch.nn.Module, domains: dict[str, np.ndarray], mixture: Mixture, cfg: TrainConfig,
          *, log_path: Path | None = None, progress: Progress | None = None,
          after_step: Callable[[int], None] | None = None, accelerator=None,
          state_dir: Path | None = None, gather_into: torch.nn.Module | None = None,
          gather_steps: Collection[int] = (), tracker: StepLog | None = None) -> TrainSummary:
    """Train in place and return the summary.

    ``mixture`` is one ratio dict, or phases ``[(start_fraction, ratios), ...]`` (the first at 0.0).
    ``after_step(steps_done)`` runs after each update (rung evaluations); it may use the model in eval
    mode: training mode is restored after it. With ``state_dir``, a state is saved every
    ``state_every_steps`` steps / ``state_every_s`` seconds, and a matching state found there at the start
    is resumed from (the log is cut back to it).

    With an ``accelerate.Accelerator`` over W processes (``accelerate launch``), every process builds the
    step's full batch (the same, from the seed) and trains on rows ``rank::W``; DDP averages the gradients,
    so the run equals the single-process one and the mixture stays exact. Logs, progress and saved states
    belong to the main process (pass ``log_path`` / ``progress`` only there).

    With ``cfg.sharding == "fsdp"`` (and an accelerator) the model is sharded in place and stays so; no
    process holds its whole weights. The main process passes ``gather_into``, an unsharded copy of the
    model (e.g. on CPU), which receives the whole trained weights after the last step and after each step
    in ``gather_steps`` (every process passes the same ``gather_steps``: gathering is collective), before
    ``after_step`` runs: evaluate that copy, not ``model``. Saved states hold whole weights either way.

    ``tracker`` (main process only) receives each logged step's loss, per-domain losses, LR, tokens and
    tokens/s, as ``train/...`` values at step = updates done.
    """
    run = _Run(model, domains, mixture, cfg, log_path=log_path, progress=progress, accelerator=accelerator,
               state_dir=state_dir, gather_into=gather_into, tracker=tracker)
    run.setup()
    step = run.start
    try:
        for step in range(run.start, cfg.steps):
            t_step = time.perf_counter()
            lr, names, losses, step_loss = run.step(step)
            run.record(step, t_step, lr, names, losses, step_loss)
            if run.save_due(step):
                run.save(step)
            if run.fsdp and (step + 1 in gather_steps or step + 1 == cfg.steps):
                gather_weights_into(run.model, gather_into)
            if after_step is not None:
                after_step(step + 1)
                run.model.train()
    except Exception as e:
        if is_out_of_memory(e):  # outside the forward/backward: the optimizer step or a rung evaluation
            raise TrialFailed("oom", f"out of memory at step {step} ({str(e).splitlines()[0][:160]})") from None
        raise
    finally:
        run.close()
    return run.finish()


class _Run:
    """One call of ``train``: what it set up (model, optimizer, forward, log) and what it carries from
    step to step (the summary so far, the per-domain loss sums of the tail, the time of the last save)."""

    def __init__(self, model: torch.nn.Module, domains: dict[str, np.ndarray], mixture: Mixture,
                 cfg: TrainConfig, *, log_path: Path | None, progress: Progress | None, accelerator,
                 state_dir: Path | None, gather_into: torch.nn.Module | None, tracker: StepLog | None = None) -> None:
        self.model = self.raw_model = model  # ``model``: wrapped by ``accelerate`` under DDP
        self.tracker = tracker
        self.domains, self.cfg, self.accelerator = domains, cfg, accelerator
        self.log_path, self.state_dir, self.gather_into = log_path, state_dir, gather_into
        self.progress = progress or NullProgress()
        self.phases = as_phases(mixture)
        self.names_all = list(dict.fromkeys(n for _, r in self.phases for n in r))
        self.index = {n: i for i, n in enumerate(self.names_all)}
        self.plan = phased_step_counts(self.phases, cfg.seqs_per_step, cfg.steps)
        self.summary = TrainSummary(tokens_per_domain=dict.fromkeys(self.names_all, 0))
        planned, epochs = plan_epochs(domains, self.plan, cfg.seq_len)
        self.summary.epochs_per_domain = epochs
        if cfg.max_epochs is not None:
            for n, e in epochs.items():
                if e > cfg.max_epochs:
                    msg = (f"domain {n!r} repeats {e:.2f} epochs ({planned[n]:,} tokens drawn from "
                           f"{len(domains[n]):,} available), above max_epochs {cfg.max_epochs:g}: repeated data "
                           "inflates its proxy gains")
                    self.summary.warnings.append(msg)
                    _log.warning("autotune: warning: %s", msg)

    # ------------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Model, optimizer and accelerator, resumed from a matching train state if there is one; then the
        forward, the log and the clocks."""
        cfg, model, accelerator = self.cfg, self.raw_model, self.accelerator
        torch.manual_seed(cfg.seed)
        model.train()
        if hasattr(model, "config"):
            model.config.use_cache = False
        self.world, self.rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
        self.main_process = self.rank == 0
        if cfg.seqs_per_step % self.world:
            raise TrialFailed("failed", f"{cfg.seqs_per_step} sequences per step do not split over {self.world} processes")
        self.device = accelerator.device if accelerator else next(model.parameters()).device
        self.fsdp = accelerator is not None and cfg.sharding == "fsdp"
        if self.fsdp and self.main_process and self.gather_into is None:
            raise ValueError("sharding fsdp: the main process must pass gather_into (an unsharded copy of the model)")
        self.summary.flops_per_token = flops_per_token(model, cfg.seq_len)
        self.state = TrainState(self.state_dir, digest({"cfg": cfg.run_identity(), "phases": self.phases,
                                                        "world": self.world,
                                                        "sharding": "fsdp" if self.fsdp else "replicated",
                                                        "data": {n: len(a) for n, a in self.domains.items()}}))
        self.tail = max(1, cfg.steps // 10)
        self.tail_sums = np.zeros(len(self.names_all))
        self.tail_counts = np.zeros(len(self.names_all))
        self.start = 0
        saved = self.state.load()
        if saved is not None:
            model.load_state_dict(saved["model"])  # whole weights, before any sharding
        if self.fsdp:
            fsdp_shard(model, self.device, self.world)
        self.opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.schedule.peak_lr,
                                     betas=cfg.betas, **({"fused": True} if self.device.type == "cuda" else {}))
        if saved is not None:
            self._resume(saved)
            del saved  # whole weights and optimizer state on every process: not kept for the run
        if accelerator and not self.fsdp:
            self.model, self.opt = accelerator.prepare(model, self.opt)
        self._setup_forward()
        # line-buffered: each step's line reaches the file whole, so a kill (SIGKILL, OOM) never leaves half a
        # line for the resume to trip over; a line a step costs one write
        self.log = (open(self.log_path, "a" if self.start else "w", buffering=1, encoding="utf-8")  # noqa: SIM115  (closed in close)
                    if self.log_path else None)
        self.progress.start("train", cfg.steps)
        if self.start:
            self.progress.advance(self.start)
        self.t0 = self.last_save = time.perf_counter()
        self.rows_local = cfg.seqs_per_step // self.world
        self.micro = min(cfg.micro_batch_seqs or self.rows_local, self.rows_local)

    def _resume(self, saved: dict) -> None:
        """The optimizer, step, summary and tail sums of a saved state (its weights are already loaded)."""
        load_optimizer_state(self.raw_model, self.opt, saved["optimizer"], sharded=self.fsdp)
        self.start = saved["step"]
        for k in ("tokens", "final_loss", "tokens_per_domain"):
            setattr(self.summary, k, saved["summary"][k])
        self.tail_sums, self.tail_counts = np.asarray(saved["tail_sums"]), np.asarray(saved["tail_counts"])
        self.summary.resumed_from = self.start
        if self.log_path is not None:
            truncate_log(self.log_path, self.start)
        _log.info("autotune: resuming from the train state at step %d of %d", self.start, self.cfg.steps)

    def _setup_forward(self) -> None:
        """The forward to call (fused loss, torch.compile), the autocast, and CUDA's peak-memory counter."""
        cfg = self.cfg
        # the fused loss needs the backbone's hidden states; under DDP / FSDP the forward must go through the
        # wrapper (its hooks synchronise gradients / gather the root's weights)
        self.fused = fused_loss_parts(self.raw_model) if cfg.fused_loss and self.accelerator is None else None
        self.fwd = self.fused[0] if self.fused else self.model
        self.compile_loss = cfg.compile if cfg.compile_loss is None else cfg.compile_loss
        if cfg.compile:
            self.fwd = torch.compile(self.fwd)
        self.autocast = (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
                         if cfg.precision == "bf16" else contextlib.nullcontext())
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    # --------------------------------------------------------------------------------------------- step
    def step(self, step: int) -> tuple[float, list[str], np.ndarray, float]:
        """One optimisation step: the step's batch through forward/backward in micro-batches, then one AdamW
        update at the schedule's LR. Returns the LR, each row's domain and loss (all processes' rows, in
        rank order) and the step's mean loss."""
        cfg, accelerator, opt, world = self.cfg, self.accelerator, self.opt, self.world
        lr = lr_at(step, cfg.steps, cfg.schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        batch, names = batch_for_step(self.domains, self.plan[step], cfg.seq_len, cfg.seed, step)
        x_all = torch.from_numpy(batch[self.rank::world])
        opt.zero_grad(set_to_none=True)
        row_losses = []
        for i in range(0, self.rows_local, self.micro):
            x = x_all[i:i + self.micro].to(self.device, non_blocking=True)
            row_losses.append(self._forward_backward(step, x, last=i + self.micro >= self.rows_local)
                              .detach().mean(dim=1))
        row_loss = torch.cat(row_losses)
        if accelerator:  # every process sees all rows' losses, in rank order
            row_loss = accelerator.gather(row_loss)
            names = [n for r in range(world) for n in names[r::world]]
        losses = row_loss.float().cpu().numpy()
        step_loss = float(losses.mean())
        if not math.isfinite(step_loss):
            raise TrialFailed("diverged", f"loss is {step_loss} at step {step} (lr {lr:.3g})")
        if cfg.grad_clip > 0:  # (on sharded parameters the norm is the whole model's)
            clip = (accelerator.clip_grad_norm_ if accelerator and not self.fsdp
                    else torch.nn.utils.clip_grad_norm_)
            clip(self.model.parameters(), cfg.grad_clip)
        opt.step()
        return lr, names, losses, step_loss

    def _forward_backward(self, step: int, x: torch.Tensor, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch ``x``; returns its token losses, ``[rows, seq_len]``."""
        cfg, accelerator, rows_local = self.cfg, self.accelerator, self.rows_local
        # DDP all-reduces on the step's last micro-batch only; FSDP reduce-scatters every micro-batch,
        # which keeps only sharded gradients between them (skipping it would hold whole ones)
        sync = (contextlib.nullcontext() if (last or not accelerator or self.fsdp)
                else accelerator.no_sync(self.model))
        try:
            with sync:
                with self.autocast:
                    if self.fused:
                        hidden = self.fwd(input_ids=x[:, :-1]).last_hidden_state
                        total, tok_loss = linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), self.fused[1],
                                                               x[:, 1:].reshape(-1), chunk=cfg.loss_chunk,
                                                               compiled=self.compile_loss)
                        tok_loss = tok_loss.view(x.size(0), -1)
                        loss = total / (rows_local * cfg.seq_len)
                    else:
                        logits = self.fwd(input_ids=x[:, :-1]).logits
                        tok_loss = token_losses(logits, x[:, 1:]).view(x.size(0), -1)
                        loss = tok_loss.mean() * (x.size(0) / rows_local)
                (accelerator.backward(loss) if accelerator and not self.fsdp else loss.backward())
        except Exception as e:
            if is_out_of_memory(e):
                raise TrialFailed("oom", f"out of memory at step {step} in a micro-batch of {x.size(0)} x "
                                         f"{cfg.seq_len} tokens ({str(e).splitlines()[0][:160]}); lower "
                                         "proxy.micro_batch_seqs and rerun: trials that ran out of "
                                         "memory run again") from None
            raise
        return tok_loss

    # ----------------------------------------------------------------------------------------- recording
    def record(self, step: int, t_step: float, lr: float, names: list[str], losses: np.ndarray,
               step_loss: float) -> None:
        """A step's losses and tokens into the summary and the tail sums, its log line, and progress."""
        cfg, summary, index = self.cfg, self.summary, self.index
        idx = np.fromiter((index[n] for n in names), dtype=np.int64, count=len(names))
        n_rows = np.bincount(idx, minlength=len(self.names_all))
        sums = np.bincount(idx, weights=losses, minlength=len(self.names_all))
        per_domain = {n: float(sums[i] / n_rows[i]) for n, i in index.items() if n_rows[i]}
        for n, i in index.items():
            summary.tokens_per_domain[n] += int(n_rows[i]) * cfg.seq_len
        if step >= cfg.steps - self.tail:
            self.tail_sums += np.where(n_rows > 0, sums / np.maximum(n_rows, 1), 0.0)
            self.tail_counts += n_rows > 0
        summary.steps = step + 1
        summary.tokens += len(names) * cfg.seq_len
        summary.timed_tokens += len(names) * cfg.seq_len
        summary.final_loss = step_loss
        step_s = time.perf_counter() - t_step  # (the loss's .cpu() in step waited for the GPU)
        summary.train_seconds += step_s
        if step == self.start:
            summary.first_step_s = step_s
        logged = log_due(step + 1, cfg.log_every, cfg.steps)
        if self.log and logged:
            self.log.write(json.dumps({"step": step, "lr": lr, "loss": round(step_loss, 5),
                                       "loss_per_domain": {k: round(v, 5) for k, v in per_domain.items()},
                                       "tokens": summary.tokens}) + "\n")
        if self.tracker is not None and logged:
            self.tracker.log({"train/loss": step_loss, "train/lr": lr, "train/tokens": summary.tokens,
                              "train/tokens_per_s": len(names) * cfg.seq_len / step_s if step_s > 0 else math.nan,
                              **{f"train/loss.{k}": v for k, v in per_domain.items()}}, step=step + 1)
        self.progress.advance()

    # -------------------------------------------------------------------------------------------- saving
    def save_due(self, step: int) -> bool:
        """Whether a train state is saved after ``step``; the same answer on every process."""
        cfg, accelerator = self.cfg, self.accelerator
        due = self.state_dir is not None and step + 1 < cfg.steps and bool(
            (cfg.state_every_steps and (step + 1) % cfg.state_every_steps == 0)
            or (cfg.state_every_s and time.perf_counter() - self.last_save >= cfg.state_every_s))
        if accelerator and self.state_dir is not None and cfg.state_every_s:
            # the processes' clocks differ: all save when the main process's says so (saving is collective)
            due = bool(accelerator.gather(torch.tensor([float(due)], device=self.device))[0])
        return due

    def save(self, step: int) -> None:
        """The train state after ``step`` (whole weights and optimizer; the main process writes it).
        Every process calls it."""
        summary = self.summary
        model_state, opt_state = (full_states(self.model, self.opt) if self.fsdp
                                  else (self.raw_model.state_dict(), self.opt.state_dict()))
        if self.main_process:
            if self.log:
                self.log.flush()
            self.state.save({"step": step + 1, "model": model_state, "optimizer": opt_state,
                             "summary": {"tokens": summary.tokens, "final_loss": summary.final_loss,
                                         "tokens_per_domain": dict(summary.tokens_per_domain)},
                             "tail_sums": self.tail_sums.tolist(), "tail_counts": self.tail_counts.tolist()})
        if self.accelerator:
            self.accelerator.wait_for_everyone()
        self.last_save = time.perf_counter()

    # ----------------------------------------------------------------------------------------- finishing
    def close(self) -> None:
        """The run's wall time, and the log closed (whether or not the loop finished)."""
        self.summary.seconds = time.perf_counter() - self.t0
        if self.log:
            self.log.close()

    def finish(self) -> TrainSummary:
        """The summary: tail losses per domain, compilation time, MFU and peak memory."""
        cfg, summary, start = self.cfg, self.summary, self.start
        summary.loss_per_domain = {n: (float(self.tail_sums[i] / self.tail_counts[i]) if self.tail_counts[i]
                                       else math.nan) for n, i in self.index.items()}
        if cfg.compile and summary.steps - start >= 2:
            steady_step = (summary.train_seconds - summary.first_step_s) / (summary.steps - start - 1)
            summary.compile_s = max(0.0, summary.first_step_s - steady_step)
            if self.main_process:
                _log.info("autotune: torch.compile took %.1f s (first step %.1f s, then %.3f s a step)",
                          summary.compile_s, summary.first_step_s, steady_step)
        peak = peak_flops(self.device)
        if peak and cfg.precision == "bf16" and summary.train_seconds > 0:
            summary.mfu = summary.steady_tokens_per_s * summary.flops_per_token / (peak * self.world)
        if self.device.type == "cuda":
            summary.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self.device))
        return summary
