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
import math
import os
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from autotune.data.mixture import phased_step_counts
from autotune.errors import TrialFailed, is_out_of_memory
from autotune.records import digest
from autotune.train.loss import fused_loss_parts, linear_cross_entropy, token_losses
from autotune.train.schedules import ScheduleParams, lr_at

# Dense bf16 peak of the accelerators we know, in FLOP/s (vendor datasheets, without sparsity); MFU is
# reported against it. AUTOTUNE_PEAK_TFLOPS overrides (e.g. a measured matmul peak; the anchors measured 779 on an H200).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}

Mixture = dict[str, float] | list[tuple[float, dict[str, float]]]


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
    micro_batch_seqs: int | None = None  # rows per forward/backward on each process (None: the whole step)
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; master weights stay fp32)
    compile: bool = False
    fused_loss: bool = True  # output projection + cross-entropy in chunks (autotune/train/loss.py) where it applies
    loss_chunk: int = 1024  # tokens per chunk of the fused loss
    compile_loss: bool | None = None  # the fused loss's softmax gradient through torch.compile (None: as compile)
    max_epochs: float | None = None  # warn when a domain's draws exceed this many passes over its tokens
    state_every_steps: int = 0  # save a resumable state every N steps (0: not by steps) ...
    state_every_s: float = 0.0  # ... or when this many seconds passed since the last save (0: not by time)
    sharding: str = "ddp"  # over several processes: "ddp" (replicated) | "fsdp" (sharded: FSDP2)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16 (got {self.precision!r})")
        if self.micro_batch_seqs is not None and self.micro_batch_seqs < 1:
            raise ValueError(f"micro_batch_seqs must be >= 1 (got {self.micro_batch_seqs})")
        if self.sharding not in ("ddp", "fsdp"):
            raise ValueError(f"sharding must be ddp or fsdp (got {self.sharding!r})")

    def run_identity(self) -> dict:
        """What determines the sequence of batches and updates (not how they are computed or saved)."""
        d = asdict(self)
        for k in ("log_every", "micro_batch_seqs", "compile", "state_every_steps", "state_every_s", "max_epochs",
                  "fused_loss", "loss_chunk", "sharding", "compile_loss"):
            d.pop(k)
        return d


@dataclass
class TrainSummary:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    tokens_per_domain: dict[str, int] = field(default_factory=dict)
    loss_per_domain: dict[str, float] = field(default_factory=dict)  # mean over the last 10% of steps
    epochs_per_domain: dict[str, float] = field(default_factory=dict)  # tokens drawn / tokens available
    warnings: list[str] = field(default_factory=list)
    resumed_from: int = 0  # the step a saved state let this run start at
    timed_tokens: int = 0  # tokens trained (all processes) in ``train_seconds`` (less than ``tokens`` after a resume)
    train_seconds: float = 0.0  # in training steps only (``seconds`` also holds rung evaluations and saved states)
    first_step_s: float = 0.0  # includes torch.compile's compilation when compile is on
    compile_s: float | None = None  # with compile: the first step's time minus a steady step's
    flops_per_token: float = 0.0  # 6 N (matmul weights) + 12 L d T (attention), as in PaLM's MFU
    mfu: float | None = None  # model FLOPs utilisation against PEAK_BF16_FLOPS (GPU, bf16 only)
    peak_memory_bytes: int | None = None  # CUDA only

    @property
    def tokens_per_s(self) -> float:
        """Over every training step (the first, with any compilation, included): what the run cost."""
        return self.timed_tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def steady_tokens_per_s(self) -> float:
        """After the first step (no compilation, warm caches): the speed MFU is computed from."""
        if self.steps - self.resumed_from < 2 or self.train_seconds <= self.first_step_s:
            return self.tokens_per_s
        per_step = self.timed_tokens / (self.steps - self.resumed_from)
        return per_step * (self.steps - self.resumed_from - 1) / (self.train_seconds - self.first_step_s)

    def to_json(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens, "seconds": round(self.seconds, 3),
                "tokens_per_s": round(self.tokens_per_s, 1), "steady_tokens_per_s": round(self.steady_tokens_per_s, 1),
                "train_seconds": round(self.train_seconds, 3), "final_loss": self.final_loss,
                "tokens_per_domain": self.tokens_per_domain, "loss_per_domain": self.loss_per_domain,
                "epochs_per_domain": {k: round(v, 4) for k, v in self.epochs_per_domain.items()},
                "warnings": self.warnings, "resumed_from": self.resumed_from,
                "first_step_s": round(self.first_step_s, 3),
                "compile_s": None if self.compile_s is None else round(self.compile_s, 2),
                "flops_per_token": self.flops_per_token,
                "mfu": None if self.mfu is None else round(self.mfu, 4), "peak_memory_bytes": self.peak_memory_bytes}


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


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul weights (the input embedding is a lookup, but a tied output
    head is a matmul) + 12 x layers x width x context for attention scores (PaLM, appendix B)."""
    cfg = getattr(model, "config", None)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    n = sum(p.numel() for p in model.parameters() if p.ndim >= 2)
    if emb is not None and not getattr(cfg, "tie_word_embeddings", False):
        n -= emb.weight.numel()
    layers, width = getattr(cfg, "num_hidden_layers", 0), getattr(cfg, "hidden_size", 0)
    return 6.0 * n + 12.0 * layers * width * seq_len


def peak_flops(device: torch.device) -> float | None:
    if os.environ.get("AUTOTUNE_PEAK_TFLOPS"):
        return float(os.environ["AUTOTUNE_PEAK_TFLOPS"]) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


# ----------------------------------------------------------------------------------------------- state
class TrainState:
    """A resumable state in ``folder/state.pt``: weights, optimizer, step, and the summary so far.

    Written to a temp file and renamed, so a kill leaves the previous state whole. A state made by a
    different run (other config, mixture or data) is ignored, never loaded.
    """

    def __init__(self, folder: Path | None, key: str) -> None:
        folder = Path(folder) if folder is not None else None
        self.folder, self.key = folder, key
        self.path = folder / "state.pt" if folder else None

    def load(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as e:  # a state we cannot read is not worth failing the run for
            print(f"autotune: ignoring unreadable train state {self.path}: {e}", file=sys.stderr)
            return None
        if state.get("key") != self.key:
            print(f"autotune: ignoring train state {self.path}: made by a different run", file=sys.stderr)
            return None
        return state

    def save(self, state: dict) -> None:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".state.pt.{os.getpid()}"
        torch.save({**state, "key": self.key}, tmp)
        os.replace(tmp, self.path)


def _truncate_log(path: Path, steps_done: int) -> None:
    """Keep the log lines of steps already in the resumed state; later ones will be written again."""
    path = Path(path)
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] < steps_done]
    path.write_text("".join(line + "\n" for line in keep))


# ----------------------------------------------------------------------------------------------- FSDP
def _fsdp_shard(model: torch.nn.Module, device: torch.device, world: int) -> None:
    """FSDP2 in place: each decoder layer (HF's ``_no_split_modules`` classes) is one all-gather unit, the
    root (embeddings, final norm, output head) another. Parameters move to ``device`` shard by shard.
    Weights are all-gathered in fp32 and bf16 comes from the same autocast as without sharding (not FSDP's
    bf16 parameters, which would also make norms and the residual stream bf16): sharding changes where the
    numbers live, not the run's arithmetic."""
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise TrialFailed("failed", f"sharding fsdp needs FSDP2 (torch >= 2.6; this is {torch.__version__})") from None

    mesh = init_device_mesh(device.type, (world,))
    unit_names = set(getattr(model, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if type(m).__name__ in unit_names and m is not model]
    if not units:
        raise TrialFailed("failed", f"fsdp: {type(model).__name__} names no decoder layer class "
                                    "(_no_split_modules) to shard by; use sharding ddp")
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _full_states(model: torch.nn.Module, opt: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Whole (unsharded) model and optimizer states on CPU, on the main process ({} elsewhere). Every
    process must call it: the shards are gathered."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, opt, options=options) if opt is not None else None)


def _gather_into(model: torch.nn.Module, target: torch.nn.Module | None) -> None:
    """The sharded ``model``'s whole weights into ``target`` (main process; None elsewhere). Collective."""
    weights, _ = _full_states(model, None)
    if target is not None:
        target.load_state_dict(weights)


# ----------------------------------------------------------------------------------------------- train
def train(model: torch.nn.Module, domains: dict[str, np.ndarray], mixture: Mixture, cfg: TrainConfig,
          *, log_path: Path | None = None, progress: Progress | None = None,
          after_step: Callable[[int], None] | None = None, accelerator=None,
          state_dir: Path | None = None, gather_into: torch.nn.Module | None = None,
          gather_steps: Collection[int] = ()) -> TrainSummary:
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
    """
    progress = progress or NullProgress()
    phases = as_phases(mixture)
    names_all = list(dict.fromkeys(n for _, r in phases for n in r))
    plan = phased_step_counts(phases, cfg.seqs_per_step, cfg.steps)
    summary = TrainSummary(tokens_per_domain=dict.fromkeys(names_all, 0))
    planned, epochs = plan_epochs(domains, plan, cfg.seq_len)
    summary.epochs_per_domain = epochs
    if cfg.max_epochs is not None:
        for n, e in epochs.items():
            if e > cfg.max_epochs:
                msg = (f"domain {n!r} repeats {e:.2f} epochs ({planned[n]:,} tokens drawn from {len(domains[n]):,} "
                       f"available), above max_epochs {cfg.max_epochs:g}: repeated data inflates its proxy gains")
                summary.warnings.append(msg)
                print(f"autotune: warning: {msg}", file=sys.stderr)

    torch.manual_seed(cfg.seed)
    model.train()
    if hasattr(model, "config"):
        model.config.use_cache = False
    raw_model = model
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    main_process = rank == 0
    if cfg.seqs_per_step % world:
        raise TrialFailed("failed", f"{cfg.seqs_per_step} sequences per step do not split over {world} processes")
    device = accelerator.device if accelerator else next(model.parameters()).device
    fsdp = accelerator is not None and cfg.sharding == "fsdp"
    if fsdp and main_process and gather_into is None:
        raise ValueError("sharding fsdp: the main process must pass gather_into (an unsharded copy of the model)")
    summary.flops_per_token = flops_per_token(raw_model, cfg.seq_len)
    state = TrainState(state_dir, digest({"cfg": cfg.run_identity(), "phases": phases, "world": world,
                                          "sharding": "fsdp" if fsdp else "replicated",
                                          "data": {n: len(a) for n, a in domains.items()}}))
    tail = max(1, cfg.steps // 10)
    tail_sums = np.zeros(len(names_all))
    tail_counts = np.zeros(len(names_all))
    start = 0
    saved = state.load()
    if saved is not None:
        model.load_state_dict(saved["model"])  # whole weights, before any sharding
    if fsdp:
        _fsdp_shard(model, device, world)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.schedule.peak_lr, betas=cfg.betas,
                            **({"fused": True} if device.type == "cuda" else {}))
    if saved is not None:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, opt, saved["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            opt.load_state_dict(saved["optimizer"])
        start = saved["step"]
        for k in ("tokens", "final_loss", "tokens_per_domain"):
            setattr(summary, k, saved["summary"][k])
        tail_sums, tail_counts = np.asarray(saved["tail_sums"]), np.asarray(saved["tail_counts"])
        del saved  # whole weights and optimizer state on every process: not kept for the run
        summary.resumed_from = start
        if log_path is not None:
            _truncate_log(log_path, start)
        print(f"autotune: resuming from the train state at step {start} of {cfg.steps}", file=sys.stderr)
    if accelerator and not fsdp:
        model, opt = accelerator.prepare(model, opt)
    # the fused loss needs the backbone's hidden states; under DDP / FSDP the forward must go through the
    # wrapper (its hooks synchronise gradients / gather the root's weights)
    fused = fused_loss_parts(raw_model) if cfg.fused_loss and accelerator is None else None
    fwd = fused[0] if fused else model
    compile_loss = cfg.compile if cfg.compile_loss is None else cfg.compile_loss
    if cfg.compile:
        fwd = torch.compile(fwd)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                else contextlib.nullcontext())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    index = {n: i for i, n in enumerate(names_all)}
    log = open(log_path, "a" if start else "w") if log_path else None  # noqa: SIM115  (closed in finally)
    progress.start("train", cfg.steps)
    if start:
        progress.advance(start)
    t0 = last_save = time.perf_counter()
    rows_local = cfg.seqs_per_step // world
    micro = min(cfg.micro_batch_seqs or rows_local, rows_local)
    step = start
    try:
        for step in range(start, cfg.steps):
            t_step = time.perf_counter()
            counts = plan[step]
            lr = lr_at(step, cfg.steps, cfg.schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            batch, names = batch_for_step(domains, counts, cfg.seq_len, cfg.seed, step)
            x_all = torch.from_numpy(batch[rank::world])
            opt.zero_grad(set_to_none=True)
            row_losses = []
            for i in range(0, rows_local, micro):
                x = x_all[i:i + micro].to(device, non_blocking=True)
                last = i + micro >= rows_local
                # DDP all-reduces on the step's last micro-batch only; FSDP reduce-scatters every micro-batch,
                # which keeps only sharded gradients between them (skipping it would hold whole ones)
                sync = (contextlib.nullcontext() if (last or not accelerator or fsdp)
                        else accelerator.no_sync(model))
                try:
                    with sync:
                        with autocast:
                            if fused:
                                hidden = fwd(input_ids=x[:, :-1]).last_hidden_state
                                total, tok_loss = linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), fused[1],
                                                                       x[:, 1:].reshape(-1), chunk=cfg.loss_chunk,
                                                                       compiled=compile_loss)
                                tok_loss = tok_loss.view(x.size(0), -1)
                                loss = total / (rows_local * cfg.seq_len)
                            else:
                                logits = fwd(input_ids=x[:, :-1]).logits
                                tok_loss = token_losses(logits, x[:, 1:]).view(x.size(0), -1)
                                loss = tok_loss.mean() * (x.size(0) / rows_local)
                        (accelerator.backward(loss) if accelerator and not fsdp else loss.backward())
                except Exception as e:
                    if is_out_of_memory(e):
                        raise TrialFailed("oom", f"out of memory at step {step} in a micro-batch of {x.size(0)} x "
                                                 f"{cfg.seq_len} tokens ({str(e).splitlines()[0][:160]}); lower "
                                                 "proxy.micro_batch_seqs and rerun: trials that ran out of "
                                                 "memory run again") from None
                    raise
                row_losses.append(tok_loss.detach().mean(dim=1))
                del tok_loss, loss
            row_loss = torch.cat(row_losses)
            if accelerator:  # every process sees all rows' losses, in rank order
                row_loss = accelerator.gather(row_loss)
                names = [n for r in range(world) for n in names[r::world]]
            losses = row_loss.float().cpu().numpy()
            step_loss = float(losses.mean())
            if not math.isfinite(step_loss):
                raise TrialFailed("diverged", f"loss is {step_loss} at step {step} (lr {lr:.3g})")
            if cfg.grad_clip > 0:  # (on sharded parameters the norm is the whole model's)
                clip = accelerator.clip_grad_norm_ if accelerator and not fsdp else torch.nn.utils.clip_grad_norm_
                clip(model.parameters(), cfg.grad_clip)
            opt.step()
            idx = np.fromiter((index[n] for n in names), dtype=np.int64, count=len(names))
            n_rows = np.bincount(idx, minlength=len(names_all))
            sums = np.bincount(idx, weights=losses, minlength=len(names_all))
            per_domain = {n: float(sums[i] / n_rows[i]) for n, i in index.items() if n_rows[i]}
            for n, i in index.items():
                summary.tokens_per_domain[n] += int(n_rows[i]) * cfg.seq_len
            if step >= cfg.steps - tail:
                tail_sums += np.where(n_rows > 0, sums / np.maximum(n_rows, 1), 0.0)
                tail_counts += n_rows > 0
            summary.steps = step + 1
            summary.tokens += len(names) * cfg.seq_len
            summary.timed_tokens += len(names) * cfg.seq_len
            summary.final_loss = step_loss
            step_s = time.perf_counter() - t_step  # (the loss's .cpu() above waited for the GPU)
            summary.train_seconds += step_s
            if step == start:
                summary.first_step_s = step_s
            if log and (step % cfg.log_every == 0 or step == cfg.steps - 1):
                log.write(json.dumps({"step": step, "lr": lr, "loss": round(step_loss, 5),
                                      "loss_per_domain": {k: round(v, 5) for k, v in per_domain.items()},
                                      "tokens": summary.tokens}) + "\n")
            progress.advance()
            due = state_dir is not None and step + 1 < cfg.steps and bool(
                (cfg.state_every_steps and (step + 1) % cfg.state_every_steps == 0)
                or (cfg.state_every_s and time.perf_counter() - last_save >= cfg.state_every_s))
            if accelerator and state_dir is not None and cfg.state_every_s:
                # the processes' clocks differ: all save when the main process's says so (saving is collective)
                due = bool(accelerator.gather(torch.tensor([float(due)], device=device))[0])
            if due:
                model_state, opt_state = _full_states(model, opt) if fsdp else (raw_model.state_dict(), opt.state_dict())
                if main_process:
                    if log:
                        log.flush()
                    state.save({"step": step + 1, "model": model_state, "optimizer": opt_state,
                                "summary": {"tokens": summary.tokens, "final_loss": summary.final_loss,
                                            "tokens_per_domain": dict(summary.tokens_per_domain)},
                                "tail_sums": tail_sums.tolist(), "tail_counts": tail_counts.tolist()})
                if accelerator:
                    accelerator.wait_for_everyone()
                last_save = time.perf_counter()
            if fsdp and (step + 1 in gather_steps or step + 1 == cfg.steps):
                _gather_into(model, gather_into)
            if after_step is not None:
                after_step(step + 1)
                model.train()
    except Exception as e:
        if is_out_of_memory(e):  # outside the forward/backward: the optimizer step or a rung evaluation
            raise TrialFailed("oom", f"out of memory at step {step} ({str(e).splitlines()[0][:160]})") from None
        raise
    finally:
        summary.seconds = time.perf_counter() - t0
        if log:
            log.close()
    summary.loss_per_domain = {n: (float(tail_sums[i] / tail_counts[i]) if tail_counts[i] else math.nan)
                               for n, i in index.items()}
    if cfg.compile and summary.steps - start >= 2:
        steady_step = (summary.train_seconds - summary.first_step_s) / (summary.steps - start - 1)
        summary.compile_s = max(0.0, summary.first_step_s - steady_step)
        if main_process:
            print(f"autotune: torch.compile took {summary.compile_s:.1f} s (first step {summary.first_step_s:.1f} s, "
                  f"then {steady_step:.3f} s a step)", file=sys.stderr)
    peak = peak_flops(device)
    if peak and cfg.precision == "bf16" and summary.train_seconds > 0:
        summary.mfu = summary.steady_tokens_per_s * summary.flops_per_token / (peak * world)
    if device.type == "cuda":
        summary.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    return summary
