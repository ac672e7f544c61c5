"""A training run's summary (``TrainSummary``), and the FLOP accounting its MFU comes from: FLOPs per
token (``flops_per_token``) against the accelerator's dense bf16 peak (``peak_flops``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from autotune.envvars import peak_tflops

# Dense bf16 peak of the accelerators we know, in FLOP/s (vendor datasheets, without sparsity); MFU is
# reported against it. AUTOTUNE_PEAK_TFLOPS overrides (e.g. a measured matmul peak; the anchors measured 779 on an H200).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


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
    override = peak_tflops()  # $AUTOTUNE_PEAK_TFLOPS, checked: a bad value names the variable
    if override is not None:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
