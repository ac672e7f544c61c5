"""A tiny search space, the CLI in a subprocess, the evaluator's tiny checkpoint, a synthetic finished study."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

if TYPE_CHECKING:
    import optuna


from autotune.testing.paths import DEMO_TASKS

# ----------------------------------------------------------------------------------------------- the tiny space
# A 2-layer, 32-wide Llama pre-trained on 20K tokens; proxies train 4 steps: the whole loop in seconds.
TINY_BASE = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "vocab_size": 512,
             "pretrain_tokens": 20480, "seq_len": 64, "batch_tokens": 1024, "peak_lr": 3e-3, "seed": 0}


def tiny_suite(limit: int = 20) -> dict:
    """An eval suite of the demo tasks: two target tasks and two BPB domains, one general task and one."""
    return {"name": "tiny", "batch_size": 32, "task_dirs": [str(DEMO_TASKS)], "bpb_tokens": 1024,
            "target": [{"task": "demo_math_mc", "metric": "acc", "limit": limit},
                       {"task": "demo_math_gen", "metric": "exact_match", "filter": "first-number", "limit": limit},
                       {"bpb": "math"}, {"bpb": "code"}],
            "general": [{"task": "demo_prose_next_word", "metric": "acc", "limit": limit}, {"bpb": "general", "weight": 2}]}


def tiny_space(name: str = "tiny", trials: int = 2, **over) -> dict:
    """A search space (as a dict) over the demo data on ``TINY_BASE``; keyword arguments replace top-level keys."""
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
    """``folder/space.yaml`` and its ``suite.yaml`` (``tiny_suite()`` unless given); returns the space file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(yaml.safe_dump(suite or tiny_suite()))
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------- the CLI, waits
def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``autotune ARGS`` as a user runs it: a subprocess of this interpreter's CLI in ``cwd``, output captured."""
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def study_trials(cwd: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of study ``name`` in its SQLite storage under ``cwd/runs``."""
    import optuna

    storage = f"sqlite:///{cwd / 'runs' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


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


def wait_until(predicate, timeout: float = 60, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout``; returns its last value (no exception)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def own_peak_rss_kib() -> int:
    """This process's own peak resident memory in KiB (VmHWM). Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux
    carries the exec'ing parent's high-water mark into it across execve, so a child of a large pytest process
    would report pytest's size."""
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM:")))


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------------------------------- the evaluator
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
TINY_VERSION = 1


def set_offline() -> None:
    """No Hugging Face Hub access from this process (nor its children)."""
    os.environ.update(OFFLINE)


def small_bpe_tokenizer(texts: list[str], out: Path, vocab_size: int = 400) -> Path:
    """A real byte-level BPE (the demo's recipe) trained on ``texts``, saved as an HF tokenizer in ``out``:
    small and quick to build for data tests."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from autotune.data.prepare import EOS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS).save_pretrained(out)
    return out


def tiny_checkpoint(head_dim: int = 16) -> Path:
    """A tiny real checkpoint under $AUTOTUNE_HOME/test-models (built on first use, about 5 s).

    A 2-layer Llama with 2 heads of ``head_dim`` (32 wide by default; vLLM's CPU attention needs head_dim >= 32;
    random init, seed 0, 512 positions) with a byte-level BPE tokenizer trained
    on the demo eval files: real weights and a real tokenizer that lm-eval loads like any other, small
    enough that GSM8K's 256-token generations run in seconds. Built once per AUTOTUNE_HOME.
    """
    home = Path(os.environ["AUTOTUNE_HOME"])
    final = home / "test-models" / (f"tiny-eval-v{TINY_VERSION}" + (f"-hd{head_dim}" if head_dim != 16 else ""))
    if (final / "config.json").exists():
        return final
    set_offline()
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = []
    for f in sorted(DEMO_TASKS.glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            texts.append(" ".join(str(v) for v in rec.values()))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                     pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=2 * head_dim, intermediate_size=4 * head_dim, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    hf_tok.save_pretrained(tmp)
    try:
        os.replace(tmp, final)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def demo_suite(limit: int = 20, **over) -> dict:
    """A suite of the demo's multiple-choice and generation tasks, with continuous and chance-corrected metrics."""
    suite = {"name": "tiny-eval", "batch_size": 16, "task_dirs": [str(DEMO_TASKS)],
             "target": [{"task": "demo_math_mc", "metric": "acc", "limit": limit},
                        {"task": "demo_math_gen", "metric": "exact_match", "filter": "first-number", "limit": limit}],
             "general": [{"task": "demo_prose_next_word", "metric": "acc", "limit": limit}],
             "report": [{"task": "demo_math_mc", "metric": "gold_logprob", "limit": limit},
                        {"task": "demo_math_mc", "metric": "gold_prob", "limit": limit},
                        {"task": "demo_math_mc", "metric": "gold_bpb", "limit": limit},
                        {"task": "demo_math_mc", "metric": "acc", "normalize": "chance", "limit": limit}]}
    suite.update(over)
    return suite


# ----------------------------------------------------------------------------------------------- a synthetic study
SYNTHETIC_SPACE = {
    "name": "synthetic",
    "base_model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "vocab_size": 512},
    "domains": {"math": {"source": "demo:math", "role": "target"}, "code": {"source": "demo:code", "role": "target"},
                "general": {"source": "demo:prose", "role": "general"}},
    "mixture": {"math": {"max": 0.7}, "code": {"max": 0.6}, "general": {"min": 0.1}, "floors": {"general": 0.1}},
    "schedule": {"kind": ["wsd", "cosine"], "peak_lr": {"low": 3e-4, "high": 1e-2, "log": True},
                 "decay_fraction": {"low": 0.1, "high": 0.6}, "warmup_fraction": 0.05},
    "proxy": {"tokens": 40 * 1024, "seq_len": 64, "batch_tokens": 1024},
    "evals": "suite.yaml",
    "objective": {"maximize": "target", "subject_to": "general >= base - 0.05"},
}
# the loss curves' law: train_log.jsonl follows it (plus 0.5 x the code share, plus noise)
SYNTHETIC_LAW = {"L0": 2.0, "A": 0.3, "alpha": 0.5, "B": 80.0, "C": 1.0, "beta": 0.5, "gamma": 0.5}


def make_study(root: Path, trials: int = 12, seed: int = 0, failed: int = 1) -> Path:
    """A finished study folder as ``autotune search`` leaves it (``SYNTHETIC_SPACE``, ``trials`` complete
    trials and ``failed`` failed ones), with known structure in the scores and loss curves of ``SYNTHETIC_LAW``."""
    from autotune.config.space import SearchSpace
    from autotune.extrapolate.schedule import LossCurve, MultiPowerLaw, schedule_lrs
    from autotune.search.simplex import SimplexMap

    law = MultiPowerLaw(**SYNTHETIC_LAW)
    space = SearchSpace.model_validate(SYNTHETIC_SPACE)
    identity = space.model_dump(mode="json")
    identity["search"] = {k: v for k, v in identity["search"].items() if k not in ("trials", "storage", "runs_dir")}
    root.mkdir(parents=True)
    (root / "space.json").write_text(json.dumps({"identity": identity, "digest": "synthetic0000000"}))
    smap = SimplexMap.from_space(space)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(trials):
        w = smap.to_weights(list(rng.random(smap.dims)))
        kind = ("wsd", "cosine")[i % 2]
        peak = float(10 ** rng.uniform(-3.5, -2))
        decay = float(rng.uniform(0.1, 0.6))
        target = 0.6 * math.sqrt(w["math"] + w["code"]) + 0.02 * math.log10(peak) + 0.01 * rng.standard_normal()
        general = -0.3 * (0.6 - w["general"]) + 0.005 * rng.standard_normal()
        run_dir = root / "trials" / f"t{i:03d}"
        run_dir.mkdir(parents=True)
        lrs = schedule_lrs(kind, 40, peak, 0.05, decay, 0.0)
        steps = np.arange(1, 40)
        loss = law.predict(LossCurve(lrs, steps, np.ones(39))) + 0.5 * w["code"] + 0.002 * rng.standard_normal(39)
        with open(run_dir / "train_log.jsonl", "w") as f:
            f.write(json.dumps({"step": 0, "lr": float(lrs[0]), "loss": 6.0, "tokens": 1024}) + "\n")
            for s, v in zip(steps, loss, strict=True):
                f.write(json.dumps({"step": int(s), "lr": float(lrs[s]), "loss": float(v), "tokens": int(s + 1) * 1024}) + "\n")
        rows.append({"trial": i, "state": "complete", "mixture": w, "seed": 0, "prior": False, "target": target,
                     "general": general, "feasible": general >= -0.05,
                     "schedule": {"kind": kind, "peak_lr": peak, "warmup_fraction": 0.05, "decay_fraction": decay,
                                  "final_lr_ratio": 0.0},
                     "metrics": {"bpb/math": 2.0 - w["math"], "bpb/code": 2.5 - w["code"] ** 0.5}, "run_dir": f"trials/t{i:03d}"})
    for j in range(failed):
        rows.append({"trial": trials + j, "state": "fail", "mixture": {}, "schedule": {}, "target": None, "general": None,
                     "metrics": {}, "run_dir": ""})
    (root / "summary.json").write_text(json.dumps({"base": {"bpb/math": 2.0, "bpb/code": 2.5}, "trials": rows}))
    return root


