"""Next-token loss computed from the last hidden states in chunks, never holding the full logits.

The output projection and the cross-entropy are fused chunk by chunk (as Liger-Kernel's fused linear
cross-entropy does): the forward pass computes, for ``chunk`` tokens at a time, the logits, the loss and
the gradients with respect to the hidden states and the projection, and keeps only those gradients. So
the ``tokens x vocab`` logits (fp32: 6.4 GB for 32 sequences of 2048 tokens at a 49K vocabulary) never
exist at once, and on CPU the chunks stay in cache: measured 8% faster per step than the plain loss on the
demo model (docs/LOG.md, 2026-11-26).

The loss is a sum over tokens (scale it for a mean); the per-token losses come back detached, for logging.

With ``compiled=True`` the softmax-gradient part of each chunk (upcast, log-sum-exp, exp, minus the one-hot,
downcast) is one ``torch.compile``d function, which inductor fuses into a couple of kernels: on a GPU that
part is bound by memory traffic (eager: about 1.9 GB read and written per 1024 x 49K chunk in ~7 passes).
On CPU it measured no faster (the matmuls dominate there; same values to 3e-5).
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F


def _softmax_grad(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses and d loss / d logits (softmax - onehot, in the logits' dtype) of one chunk, written
    out of place for ``torch.compile`` to fuse (eager, this form would allocate several full-size copies)."""
    lf = logits.float()
    lse = torch.logsumexp(lf, dim=-1)
    tok = lse - lf.gather(1, targets.unsqueeze(1)).squeeze(1)
    p = torch.exp(lf - lse.unsqueeze(1))
    cols = torch.arange(lf.size(1), device=lf.device)
    return tok, torch.where(cols == targets.unsqueeze(1), p - 1.0, p).to(logits.dtype)


def _chunk_losses(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk's fp32 logits ``h @ w.T``, their log-sum-exp and the chunk's token losses: the forward that
    training (which goes on to the gradients) and evaluation (``chunked_token_losses``, which stops here) share."""
    logits = (h @ w.t()).float()
    lse = torch.logsumexp(logits, dim=-1)
    return logits, lse, lse - logits.gather(1, y.unsqueeze(1)).squeeze(1)


@functools.cache
def _compiled():
    return torch.compile(_softmax_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                compute_dtype: torch.dtype, compiled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.size(0)
        tok_loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        w = weight.to(compute_dtype)
        rows = torch.arange(min(chunk, n), device=hidden.device)
        for i in range(0, n, chunk):
            h = hidden[i:i + chunk].to(compute_dtype)
            y = targets[i:i + chunk]
            if compiled:
                tok_loss[i:i + chunk], grad = _compiled()(h @ w.t(), y)
            else:
                logits, lse, tok_loss[i:i + chunk] = _chunk_losses(h, w, y)
                r = rows[:h.size(0)]
                # d loss / d logits = softmax - onehot (computed in place over the logits)
                grad = logits.sub_(lse.unsqueeze(1)).exp_()
                grad[r, y] -= 1.0
                grad = grad.to(compute_dtype)
            grad_hidden[i:i + chunk] = (grad @ w).to(hidden.dtype)
            if compute_dtype == torch.float32:
                grad_weight.addmm_(grad.t(), h)
            else:  # a low-precision matmul (tensor cores), accumulated in fp32 across chunks
                grad_weight.add_(grad.t() @ h)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        ctx.mark_non_differentiable(tok_loss)
        return tok_loss.sum(), tok_loss

    @staticmethod
    def backward(ctx, grad_sum: torch.Tensor, _grad_tok: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_sum.to(grad_hidden.dtype), grad_weight * grad_sum.to(grad_weight.dtype),
                None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = 1024, compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of token losses, detached per-token losses)`` of ``softmax(hidden @ weight.T)`` against
    ``targets``; ``hidden`` is ``[tokens, width]``. Under autocast the matmuls run in its dtype.
    ``compiled``: the per-chunk softmax gradient through ``torch.compile`` (see the module's note)."""
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk, dtype, compiled)


def fused_loss_parts(model: torch.nn.Module):
    """``(backbone, output weight)`` when the model's logits are exactly ``backbone(x) @ weight.T`` (a plain
    causal LM head, as Llama, Qwen, Mistral, SmolLM), else None: models with a bias, logit scaling or
    soft-capping (Gemma 2, Cohere) keep the plain loss."""
    cfg = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if cfg is None or head is None or backbone is None or backbone is model:
        return None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    if any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    return backbone, head.weight


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The plain per-token loss (fp32 softmax over the full logits): the trainer's loss where the fused one
    does not apply, and what the fused one must equal."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")


LIGER_INSTALL = "pip install 'liger-kernel==0.8.5' (or pip install -e '.[liger]')"


def chunked_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = 1024) -> torch.Tensor:
    """Per-token losses (fp32, no gradients) of ``softmax(hidden @ weight.T)`` against ``targets``, ``chunk``
    tokens at a time: ``linear_cross_entropy``'s forward alone, for evaluation (held-out bits-per-byte). The
    largest tensor is one chunk's logits, ``chunk x vocab``, whatever the number of tokens."""
    out = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)
    with torch.no_grad():
        w = weight.detach().to(hidden.dtype)
        for i in range(0, hidden.size(0), chunk):
            out[i:i + chunk] = _chunk_losses(hidden[i:i + chunk].detach(), w, targets[i:i + chunk])[2]
    return out


def head_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, chunk: int = 1024,
                      impl: str = "auto") -> torch.Tensor:
    """Per-token losses (fp32, no gradients) of the LM head ``hidden @ weight.T`` (``hidden``: ``[tokens, width]``)
    against ``targets``, never holding the logits of all tokens.

    ``impl``: ``"torch"`` is ``chunked_token_losses``; ``"liger"`` is Liger-Kernel's fused linear cross-entropy
    (Triton kernels: CUDA only, ``reduction="none"``; it sizes its own chunks, about ``tokens x width`` of
    logits); ``"auto"`` takes Liger on a CUDA tensor where liger-kernel is installed, else torch."""
    if impl == "auto":
        impl = "liger" if hidden.is_cuda and importlib.util.find_spec("liger_kernel") is not None else "torch"
    if impl == "torch":
        return chunked_token_losses(hidden, weight, targets, chunk=chunk)
    if impl != "liger":
        raise ValueError(f"impl must be 'auto', 'torch' or 'liger', not {impl!r}")
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError as e:
        raise ImportError(f"Liger's fused loss needs liger-kernel: {LIGER_INSTALL} ({e})") from e
    with torch.no_grad():  # hidden without grad: Liger computes the losses only, no gradients
        w = weight.detach().to(hidden.dtype)
        return liger_fused_linear_cross_entropy(hidden.detach(), w, targets, reduction="none").float()
