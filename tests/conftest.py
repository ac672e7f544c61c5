"""Shared fixtures: a private AUTOTUNE_HOME per test session and a tiny search space."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_TASKS = REPO / "evals" / "tasks" / "demo"

# A 2-layer, 32-wide Llama pre-trained on 20K tokens; proxies train 4 steps: the whole loop in seconds.
TINY_BASE = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "vocab_size": 512,
             "pretrain_tokens": 20480, "seq_len": 64, "batch_tokens": 1024, "peak_lr": 3e-3, "seed": 0}


@pytest.fixture(scope="session", autouse=True)
def autotune_home(tmp_path_factory) -> Path:
    """Caches (tokenizer, packed tokens, base model) shared by the session's tests, never the user's.

    Set AUTOTUNE_TEST_HOME to reuse a cache across sessions while developing.
    """
    home = Path(os.environ.get("AUTOTUNE_TEST_HOME") or tmp_path_factory.mktemp("autotune-home"))
    os.environ["AUTOTUNE_HOME"] = str(home)
    return home


def tiny_suite(limit: int = 20) -> dict:
    return {"name": "tiny", "batch_size": 32, "task_dirs": [str(DEMO_TASKS)], "bpb_tokens": 1024,
            "target": [{"task": "demo_math_mc", "metric": "acc", "limit": limit},
                       {"task": "demo_math_gen", "metric": "exact_match", "filter": "first-number", "limit": limit},
                       {"bpb": "math"}, {"bpb": "code"}],
            "general": [{"task": "demo_prose_next_word", "metric": "acc", "limit": limit}, {"bpb": "general", "weight": 2}]}


def tiny_space(name: str = "tiny", trials: int = 2, **over) -> dict:
    space = {
        "name": name,
        "base_model": dict(TINY_BASE),
        "domains": {"math": {"source": "demo:math", "role": "target"},
                    "code": {"source": "demo:code", "role": "target"},
                    "general": {"source": "demo:prose", "role": "general"}},
        "mixture": {"general": {"min": 0.1}, "prior": {"math": 0.3, "code": 0.2, "general": 0.5}},
        "schedule": {"kind": ["wsd", "cosine"], "peak_lr": {"low": 1e-3, "high": 1e-2, "log": True}},
        "proxy": {"tokens": 4096, "seq_len": 64, "batch_tokens": 1024, "seed": 0},
        "evals": "suite.yaml",
        "objective": {"maximize": "target", "subject_to": "general >= base - 0.05"},
        "search": {"sampler": "tpe", "trials": trials, "storage": "sqlite"},
    }
    space.update(over)
    return space


def write_space(folder: Path, space: dict, suite: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(yaml.safe_dump(suite or tiny_suite()))
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def wait_for(predicate, timeout: float = 300, proc: subprocess.Popen | None = None) -> None:
    """Poll ``predicate`` until true; fail early, with its output, if ``proc`` exits first."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the search exited ({proc.returncode}) before the condition held:\n{out}\n{err}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting")
