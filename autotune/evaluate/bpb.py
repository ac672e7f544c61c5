"""Held-out bits-per-byte: a continuous, low-noise metric at proxy scale.

Marin measured signal-to-noise 8-22 for held-out bits-per-byte against 1-2 for accuracy at small scale,
so every suite can score each domain's held-out split this way. Tokens are scored in contiguous,
non-overlapping windows of ``seq_len``; bytes are those of the scored target tokens decoded back to text
(special tokens count 0 bytes), so the figure is tokenizer-independent.

``windows=True`` also returns each window's summed loss and its bytes (``autotune gate`` resamples windows
for a paired bootstrap). The totals are computed exactly as without it. A window's bytes are those of its
own target tokens decoded alone, rescaled so that the windows' bytes sum to the total (decoding windows
one by one can split a multi-byte character at a boundary).

Memory: the windows are scored from the backbone's last hidden states and the LM head's weight, ``chunk``
tokens at a time (``train.loss.head_token_losses``, the trainer's fused-loss forward; on CUDA Liger-Kernel's
fused linear cross-entropy where liger-kernel is installed), so the logits of a batch never exist at once:
fp32 logits for 16 windows of 2048 tokens at SmolLM2's 49K vocabulary are 6.4 GB, a chunk of 1024 tokens
200 MB. A model whose logits are not ``hidden @ weight.T`` (``train.loss.fused_loss_parts``: a head bias,
logit scaling or soft-capping), or ``fused=False``, goes through its own forward and full logits.
No KV cache is built (``use_cache=False``): under ``no_grad`` each layer's keys and values are freed as the
forward moves on, where a cache would hold all layers' at once.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from autotune.train.loss import fused_loss_parts, head_token_losses, token_losses


@torch.no_grad()
def bits_per_byte(model, tokenizer, tokens: np.ndarray, *, seq_len: int, max_tokens: int, batch_size: int = 16,
                  windows: bool = False, chunk: int = 1024, fused: bool = True) -> dict:
    """Bits-per-byte of ``model`` on ``tokens`` in windows of ``seq_len`` (at most ``max_tokens`` scored),
    ``batch_size`` windows per forward, the head's logits ``chunk`` tokens at a time (see the module's note)."""
    n_windows = max(1, min(max_tokens, len(tokens) - 1) // seq_len)
    if len(tokens) < seq_len + 1:
        raise ValueError(f"held-out split has {len(tokens)} tokens, fewer than one window of {seq_len + 1}")
    model.eval()
    losses = _token_losses(model, chunk=chunk, fused=fused)
    arr = np.asarray(tokens[: n_windows * seq_len + 1], dtype=np.int64)
    nll = 0.0
    window_nll: list[float] = []
    for i in range(0, n_windows, batch_size):
        idx = range(i, min(i + batch_size, n_windows))
        x = torch.from_numpy(np.stack([arr[j * seq_len: (j + 1) * seq_len + 1] for j in idx])).to(model.device)
        per_window = losses(x).double().sum(dim=1)
        nll += float(per_window.sum())
        if windows:
            window_nll.extend(per_window.tolist())
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


def _token_losses(model, *, chunk: int, fused: bool):
    """``x -> [windows, seq_len]`` fp32 losses of the tokens ``x[:, 1:]`` given ``x[:, :-1]``: through the fused
    head where the model's logits are ``hidden @ weight.T``, else through the model's own full logits."""
    parts = fused_loss_parts(model) if fused else None
    if parts is None:
        def plain(x: torch.Tensor) -> torch.Tensor:
            return token_losses(model(input_ids=x[:, :-1], use_cache=False).logits, x[:, 1:]).view(x.size(0), -1)
        return plain
    backbone, weight = parts

    def by_chunks(x: torch.Tensor) -> torch.Tensor:
        hidden = backbone(input_ids=x[:, :-1], use_cache=False).last_hidden_state
        return head_token_losses(hidden.reshape(-1, hidden.size(-1)), weight, x[:, 1:].reshape(-1),
                                 chunk=chunk).view(x.size(0), -1)
    return by_chunks
