"""Helpers for autotune's tests and for users' own tests (like ``optuna.testing``): not part of the tuner.

- a tiny search space that runs the whole loop in seconds on a CPU (``TINY_BASE``, ``tiny_space``,
  ``tiny_suite``, ``write_space``), the CLI in a subprocess (``run_cli``, ``study_trials``) and waits
  (``wait_for``, ``wait_until``, ``alive``);
- the evaluator's tiny real checkpoint and offline switches (``tiny_checkpoint``, ``set_offline``,
  ``demo_suite``);
- a finished synthetic study folder with known structure (``make_study``);
- published runs as ground truth (``../shared/data/anchors``, read in place): RegMix's mixture runs, an
  oracle fitted on them to benchmark samplers without training (``Oracle``, ``find_optimum``,
  ``benchmark_sampler``; ``benchmarks/search_efficiency.py``), and the Multi-Power Law schedule curves
  (``mpl_curve``, ``mpl_table``; ``benchmarks/extrapolation.py``).

Paths (``REPO``, ``DEMO_TASKS``, ``BENCHMARKS``, ``ANCHORS``) are those of a source checkout. Importing this
module is cheap: numpy and the standard library only; torch, transformers, optuna, pandas, scikit-learn
and autotune's own heavier modules are imported by the helpers that use them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import FloatDistribution

    from autotune.config.space import SearchSpace
    from autotune.extrapolate.schedule import LossCurve
    from autotune.search.simplex import SimplexMap

REPO = Path(__file__).resolve().parents[1]
DEMO_TASKS = REPO / "evals" / "tasks" / "demo"
SHARED_DATA = REPO.parent / "shared" / "data"
BENCHMARKS = SHARED_DATA / "benchmarks"  # lm-eval benchmark files (GSM8K, ...), read in place
ANCHORS = SHARED_DATA / "anchors"  # published runs, read in place
REGMIX = ANCHORS / "regmix"
MPL = ANCHORS / "multipowerlaw_lr_schedules"
STANDIN = REPO / "tests" / "standin_vllm_server.py"  # a stand-in vLLM server (vLLM's HTTP API, lm-eval behind it)


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


def tiny_checkpoint() -> Path:
    """A tiny real checkpoint under $AUTOTUNE_HOME/test-models (built on first use, about 5 s).

    A 2-layer, 32-wide Llama (random init, seed 0, 512 positions) with a byte-level BPE tokenizer trained
    on the demo eval files: real weights and a real tokenizer that lm-eval loads like any other, small
    enough that GSM8K's 256-token generations run in seconds. Built once per AUTOTUNE_HOME.
    """
    home = Path(os.environ["AUTOTUNE_HOME"])
    final = home / "test-models" / f"tiny-eval-v{TINY_VERSION}"
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
    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
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


# ----------------------------------------------------------------------------------------------- RegMix runs by split
def _read_csv(path: Path) -> tuple[list[str], dict[int, list[float]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    return header[1:], {int(r[0]): [float(v) for v in r[1:]] for r in rows[1:]}


def load_regmix_split(split: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """``split``: ``train_1m`` (512 runs), ``test_1m`` (256), ``test_60m`` (the same 256 at 60M) or
    ``test_1B`` (64 runs at 1B x 25B tokens). Returns shares (runs x 17), losses (runs x 13), domain
    names, target names; rows joined on the index column."""
    kind, scale = split.split("_")
    wcols, weights = _read_csv(REGMIX / f"{kind}_mixture_{scale}.csv")
    lcols, losses = _read_csv(REGMIX / f"{kind}_pile_loss_{scale}.csv")
    idx = sorted(set(weights) & set(losses))
    domains = [c.removeprefix("train_the_pile_") for c in wcols]
    targets = [c.removeprefix("metric/the_pile_").removesuffix("_val_loss") for c in lcols]
    return (np.array([weights[i] for i in idx]), np.array([losses[i] for i in idx]), domains, targets)



# ----------------------------------------------------------------------------------------------- Multi-Power Law curves
MPL_TRAIN = ("cosine_24000", "constant_24000", "wsdcon_9")
MPL_TEST = ("cosine_72000", "constant_72000", "wsd_20000_24000", "wsdld_20000_24000", "wsdcon_3", "wsdcon_18")
MPL_SIZES = (25, 100, 400)


def mpl_lrs(name: str) -> np.ndarray:
    """Per-step LRs of the MPL paper's schedules (PROVENANCE.md): 2160 linear warm-up steps from 0 to
    3e-4; cosine to 3e-5; WSD exponential / linear decay 20k -> 24k to 3e-5; wsdcon_X: 3e-4 until step
    8000, then X e-5 until 16k. ``mpl_curve`` checks them against the logged LR column."""
    warm, peak, end = 2160, 3e-4, 3e-5
    up = np.linspace(0.0, peak, warm)
    if name.startswith(("cosine_", "constant_")):
        total = int(name.split("_")[1])
        s = np.arange(warm, total)
        if name.startswith("constant"):
            return np.concatenate([up, np.full(total - warm, peak)])
        return np.concatenate([up, end + 0.5 * (peak - end) * (1 + np.cos(np.pi * (s - warm) / (total - warm)))])
    if name.startswith("wsdcon_"):
        low = int(name.split("_")[1]) * 1e-5
        return np.concatenate([up, np.full(8000 - warm, peak), np.full(8000, low)])
    s = np.arange(20000, 24000)
    frac = (s - 20000) / 4000
    decay = peak ** (1 - frac) * end ** frac if name.startswith("wsd_") else peak * (1 - frac) + end * frac
    return np.concatenate([up, np.full(20000 - warm, peak), decay])


def mpl_curve(size: int, name: str, every: int = 1) -> LossCurve:
    """One published loss curve (``MPL/csv_<size>/<name>.csv``), every ``every``-th logged step, with its LRs."""
    from autotune.extrapolate.schedule import LossCurve

    with open(MPL / f"csv_{size}" / f"{name}.csv", newline="") as f:
        rows = [(int(float(r["step"])), float(r["lr"]), float(r["loss"])) for r in csv.DictReader(f)]
    lrs = mpl_lrs(name)
    rows = [r for r in rows if r[0] < len(lrs)][::every]
    steps = np.array([r[0] for r in rows])
    logged = np.array([r[1] for r in rows])
    if np.max(np.abs(lrs[steps] - logged) / logged) > 1e-6:
        raise ValueError(f"{name}: the reconstructed LR schedule does not match the logged LRs")
    return LossCurve(lrs, steps, np.array([r[2] for r in rows]), warmup_steps=2160)


def mpl_table(sizes=MPL_SIZES, train=MPL_TRAIN, test=MPL_TEST, every: int = 1) -> list[dict]:
    """Per model size: the law fitted on ``train``, its mean relative error per ``test`` curve, mean and worst."""
    from autotune.extrapolate.schedule import fit_multi_power_law, relative_errors

    out = []
    for size in sizes:
        t0 = time.time()
        law = fit_multi_power_law([mpl_curve(size, n, every) for n in train])
        errs = {n: relative_errors(law, mpl_curve(size, n)) for n in test}
        out.append({"size": size, "law": law, "seconds": time.time() - t0,
                    "per_curve": {n: float(e.mean()) for n, e in errs.items()},
                    "mean": float(np.mean([e.mean() for e in errs.values()])),
                    "worst": float(max(e.max() for e in errs.values()))})
    return out


# ----------------------------------------------------------------------------------------------- the RegMix oracle: its data
OBJECTIVES = ("pile_cc", "mean13")
# make_sampler reads search.trials only for TPE (its n_startup_trials); every other sampler is run once at
# the largest budget and read at each budget: its first n trials are those of an n-trial run (same seed,
# same history; tests/test_search_efficiency.py checks it).
_BUDGET_DEPENDENT = {"tpe"}
# Shares below this count as absent in the features: RegMix writes shares to 3 decimals.
_LOG_EPS = 1e-3


@dataclass(frozen=True)
class RegMixRuns:
    """RegMix's 1M-parameter runs: shares [N, K] over ``domains`` (rows sum to 1) and the objective [N]."""

    domains: tuple[str, ...]
    shares: np.ndarray
    loss: np.ndarray
    objective: str

    @property
    def max_share(self) -> np.ndarray:
        """Per domain, the largest share RegMix sampled, rounded up to 0.01: the search bounds."""
        return np.minimum(1.0, np.ceil(self.shares.max(axis=0) * 100 - 1e-9) / 100)


def load_regmix(objective: str = "pile_cc", domains: Sequence[str] | None = None, root: Path = REGMIX) -> RegMixRuns:
    """All 768 runs (train and test files joined on ``index`` within each split).

    ``domains``: keep only these (rows renormalised; rows with none of them dropped), for small tests.
    """
    import pandas as pd

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} (got {objective!r})")
    frames = []
    for split in ("train", "test"):
        mix = pd.read_csv(root / f"{split}_mixture_1m.csv")
        loss = pd.read_csv(root / f"{split}_pile_loss_1m.csv")
        frames.append(mix.merge(loss, on="index", validate="one_to_one"))
    runs = pd.concat(frames, ignore_index=True)
    mix_cols = [c for c in runs if c.startswith("train_the_pile_")]
    names = tuple(c.removeprefix("train_the_pile_") for c in mix_cols)
    keep = list(domains) if domains is not None else list(names)
    if missing := set(keep) - set(names):
        raise ValueError(f"not RegMix domains: {sorted(missing)}")
    shares = runs[[f"train_the_pile_{n}" for n in keep]].to_numpy(float)
    total = shares.sum(axis=1)
    rows = total > 0
    shares = shares[rows] / total[rows, None]  # RegMix's rows sum to 0.996-1.003 (3 decimals)
    if objective == "pile_cc":
        loss = runs["metric/the_pile_pile_cc_val_loss"].to_numpy(float)[rows]
    else:
        loss = runs[[c for c in runs if c.startswith("metric/")]].to_numpy(float).mean(axis=1)[rows]
    return RegMixRuns(domains=tuple(keep), shares=shares, loss=loss, objective=objective)


# ----------------------------------------------------------------------------------------------- the RegMix oracle: the model
def _log_shares(w: np.ndarray) -> np.ndarray:
    return np.log(w + _LOG_EPS)


def make_regressor():
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures, StandardScaler

    return make_pipeline(FunctionTransformer(_log_shares), StandardScaler(), PolynomialFeatures(2),
                         StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))


@dataclass(frozen=True)
class CvFit:
    r2: float
    rmse: float
    spearman: float


class Oracle:
    """The fitted landscape: loss of a mixture (rows of shares over the runs' domains)."""

    def __init__(self, runs: RegMixRuns) -> None:
        self.runs = runs
        self.model = make_regressor().fit(runs.shares, runs.loss)

    def __call__(self, shares: np.ndarray) -> np.ndarray:
        return self.model.predict(np.atleast_2d(shares))

    def cv_fit(self, folds: int = 5) -> CvFit:
        from scipy.stats import spearmanr
        from sklearn.model_selection import KFold, cross_val_predict

        y = self.runs.loss
        pred = cross_val_predict(make_regressor(), self.runs.shares, y, cv=KFold(folds, shuffle=True, random_state=0))
        r2 = 1 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
        return CvFit(r2=r2, rmse=float(np.sqrt(((pred - y) ** 2).mean())), spearman=float(spearmanr(pred, y)[0]))


@dataclass(frozen=True)
class Optimum:
    loss: float
    shares: np.ndarray
    random_points: int


def find_optimum(oracle: Oracle, simplex: SimplexMap, seed: int = 12345, random_points: int = 200_000,
                 starts: int = 16, climb_steps: int = 150) -> Optimum:
    """The oracle's minimum inside the bounds: random points over the whole simplex map, then a batched
    hill-climb from the best ``starts`` with a shrinking step, then L-BFGS-B (finite differences) from each."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)

    def f(u: np.ndarray) -> np.ndarray:
        return oracle(simplex.to_weights_batch(u))

    u = rng.random((random_points, simplex.dims))
    v = np.concatenate([f(chunk) for chunk in np.array_split(u, max(1, random_points // 50_000))])
    best_u, best_v = u[np.argsort(v)[:starts]], np.sort(v)[:starts]
    per_start = 128
    for step in np.geomspace(0.2, 0.002, climb_steps):
        cand = np.clip(best_u[:, None, :] + step * rng.standard_normal((starts, per_start, simplex.dims)), 0, 1)
        cv = f(cand.reshape(-1, simplex.dims)).reshape(starts, per_start)
        j = cv.argmin(axis=1)
        better = cv[np.arange(starts), j] < best_v
        best_u[better] = cand[np.arange(starts), j][better]
        best_v[better] = cv[np.arange(starts), j][better]

    h = 1e-6

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        pts = np.vstack([x, np.clip(x + h * np.eye(len(x)), 0, 1)])
        vals = f(pts)
        return float(vals[0]), (vals[1:] - vals[0]) / np.maximum(pts[1:] - x, 1e-300).sum(axis=1)

    results = [minimize(value_and_grad, x0, jac=True, method="L-BFGS-B", bounds=[(0, 1)] * simplex.dims)
               for x0 in best_u]
    xs = np.array([r.x for r in results] + list(best_u))
    vals = f(xs)
    i = int(vals.argmin())
    return Optimum(loss=float(vals[i]), shares=simplex.to_weights_batch(xs[i])[0], random_points=random_points)


# ----------------------------------------------------------------------------------------------- the RegMix oracle: a search
def benchmark_space(domains: Sequence[str], max_share: Sequence[float], sampler: str, trials: int) -> SearchSpace:
    """A search space over the RegMix domains; sources and evals only validate (nothing is trained)."""
    from autotune.config.space import SearchSpace

    return SearchSpace.model_validate({
        "name": "regmix-oracle",
        "domains": {n: {"source": "demo:prose", "role": "target"} for n in domains},
        "mixture": {n: {"min": 0.0, "max": float(m)} for n, m in zip(domains, max_share, strict=True)},
        "proxy": {"tokens": 4096},
        "evals": "unused.yaml",
        "objective": {"maximize": "target"},
        "search": {"sampler": sampler, "trials": trials},
    })


def mixture_distributions(simplex: SimplexMap) -> dict[str, FloatDistribution]:
    """``Controller.distributions()`` for a space whose schedule is fixed (tests check they agree)."""
    from optuna.distributions import FloatDistribution

    return {f"mix.{n}": FloatDistribution(0.0, 1.0) for n in simplex.domains[:-1]}


def prior_params(simplex: SimplexMap) -> dict[str, float]:
    """``Controller.prior_params()`` for a space with no prior and a fixed schedule: every coordinate 0.5."""
    return {f"mix.{n}": 0.5 for n in simplex.domains[:-1]}


@dataclass(frozen=True)
class SearchRun:
    losses: np.ndarray  # [trials], in trial order
    shares: np.ndarray  # [trials, K]
    seconds: float

    def best_at(self, n: int) -> float:
        return float(self.losses[:n].min())


def run_search(space: SearchSpace, oracle: Callable[[np.ndarray], np.ndarray], seed: int, trials: int,
               prior: bool = True) -> SearchRun:
    """One study, in memory, ask/tell: the sampler ``make_sampler`` builds for ``space``."""
    import optuna

    from autotune.search.controller import make_sampler
    from autotune.search.simplex import SimplexMap

    simplex = SimplexMap.from_space(space)
    dists = mixture_distributions(simplex)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(direction="minimize", sampler=make_sampler(space, seed))
    if prior:
        study.enqueue_trial(prior_params(simplex))
    losses, shares = [], []
    t0 = time.perf_counter()
    for _ in range(trials):
        trial = study.ask(dists)
        w = simplex.to_weights([trial.params[f"mix.{n}"] for n in simplex.domains[:-1]])
        row = np.array([w[n] for n in simplex.domains])
        loss = float(oracle(row)[0])
        study.tell(trial, loss)
        losses.append(loss)
        shares.append(row)
    return SearchRun(np.array(losses), np.array(shares), time.perf_counter() - t0)


@dataclass
class SamplerResult:
    regrets: dict[int, list[float]]  # budget -> one regret per seed
    seconds: dict[int, float]  # budget -> mean seconds of sampler + oracle per seed (the run read at it)
    runs: list[SearchRun]


def benchmark_sampler(sampler: str, runs: RegMixRuns, oracle: Oracle, optimum: float, seeds: Sequence[int],
                      budgets: Sequence[int], prior: bool = True, max_trials: int | None = None) -> SamplerResult:
    """Regret per budget and seed. ``max_trials`` caps a slow sampler: budgets above it are not run."""
    budgets = sorted(b for b in budgets if max_trials is None or b <= max_trials)
    out = SamplerResult(regrets={b: [] for b in budgets}, seconds={}, runs=[])
    groups = [[b] for b in budgets] if sampler in _BUDGET_DEPENDENT else [budgets]
    for group in groups:
        space = benchmark_space(runs.domains, runs.max_share, sampler, max(group))
        times = []
        for seed in seeds:
            run = run_search(space, oracle, seed, max(group), prior)
            out.runs.append(run)
            times.append(run.seconds)
            for b in group:
                out.regrets[b].append(run.best_at(b) - optimum)
        for b in group:
            out.seconds[b] = statistics.fmean(times)
    return out


# ----------------------------------------------------------------------------------------------- sampling speed
@dataclass(frozen=True)
class SamplingSpeed:
    simplex_s: float
    rejection_s: float
    rejection_draws: int
    rejection_accepted: int
    all_in_bounds: bool

    @property
    def acceptance(self) -> float:
        return self.rejection_accepted / self.rejection_draws


def rejection_sample(lo: np.ndarray, hi: np.ndarray, n: int, rng: np.random.Generator,
                     max_draws: int = 5_000_000, chunk: int = 100_000) -> tuple[np.ndarray, int]:
    """Uniform Dirichlet draws kept when inside [lo, hi]; stops after ``max_draws`` draws. (kept, draws)."""
    kept, draws, got = [], 0, 0
    while got < n and draws < max_draws:
        w = rng.dirichlet(np.ones(len(lo)), size=chunk)
        ok = w[np.all((w >= lo) & (w <= hi), axis=1)]
        kept.append(ok)
        got += len(ok)
        draws += chunk
    return np.concatenate(kept)[:n], draws


def sampling_speed(simplex: SimplexMap, n: int = 10_000, seed: int = 0, repeats: int = 3) -> SamplingSpeed:
    lo, hi = np.array(simplex.lo), np.array(simplex.hi)
    rng = np.random.default_rng(seed)
    best_simplex = best_rejection = float("inf")
    for _ in range(repeats):  # best of a few, both in this process
        t = time.perf_counter()
        w = simplex.to_weights_batch(rng.random((n, simplex.dims)))
        best_simplex = min(best_simplex, time.perf_counter() - t)
        t = time.perf_counter()
        r, draws = rejection_sample(lo, hi, n, rng)
        best_rejection = min(best_rejection, time.perf_counter() - t)
    tol = 1e-9
    ok = all(bool(np.all((x >= lo - tol) & (x <= hi + tol)) and np.allclose(x.sum(axis=1), 1)) for x in (w, r))
    return SamplingSpeed(best_simplex, best_rejection, draws, len(r), ok)
