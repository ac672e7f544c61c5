"""What autotune's evaluator costs on top of lm-eval: `run_suite` vs `lm_eval.simple_evaluate`, one process.

    python benchmarks/eval_overhead.py [--checkpoint DIR] [--limit 100] [--repeats 3] [--batch-size 32]

Both sides load the same checkpoint (HF backend) and run the demo suite's lm-eval tasks (evals/demo.yaml,
bits-per-byte entries left out: they have no lm-eval counterpart) with one limit, inside the timed region:

* direct: ``simple_evaluate(model="hf", model_args=..., tasks=[...])`` with the best case TaskManager
  (only the demo task folder indexed; lm-eval's default indexes its ~14K YAMLs, 7-13 s here), run from the
  task folder so the YAMLs' relative ``data_files`` resolve; once with ``log_samples`` (what autotune
  needs: per-sample logs, continuous metrics) and once without;
* autotune: ``run_suite(Checkpoint(dir), suite)`` without the cache (checks, template hashes, the same
  ``simple_evaluate`` call, continuous metrics, stderrs, per-sample logs written, a cache record written);
* autotune cached: the same call again with the cache, and ``python -m autotune.cli.eval`` as a user runs it
  (wall clock including the interpreter start).

Repeats alternate the order; the table shows medians of wall clock and of CPU time (this process's threads and
its children) and their ratios to the direct call with log_samples. On a shared machine the CPU time is the
steadier measure of the work each side does.
Without --checkpoint the tiny test checkpoint (2 layers, 32 wide) is built under $AUTOTUNE_HOME.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# spinning OpenMP threads burn CPU time while they wait: on a shared machine that is noise, not work
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the steadiest measurement)")
    args = ap.parse_args()

    import yaml

    from autotune.testing import set_offline, tiny_checkpoint

    set_offline()
    work = Path(tempfile.mkdtemp(prefix="eval-overhead-"))
    os.environ.setdefault("AUTOTUNE_HOME", str(work / "home"))
    ckpt = (args.checkpoint or tiny_checkpoint()).resolve()
    os.environ["AUTOTUNE_HOME"] = str(work / "home")  # a fresh result cache: the first run below fills it

    demo = yaml.safe_load((REPO / "evals" / "demo.yaml").read_text())
    task_dir = (REPO / "evals" / demo["task_dirs"][0]).resolve()
    keep = {g: [{**e, "limit": args.limit} for e in demo.get(g, []) if "task" in e] for g in ("target", "general", "report")}
    suite_doc = {"name": "overhead", "batch_size": args.batch_size, "task_dirs": [str(task_dir)], **keep}
    suite_path = work / "suite.yaml"
    suite_path.write_text(yaml.safe_dump(suite_doc, sort_keys=False))
    task_names = sorted({e["task"] for g in keep.values() for e in g})

    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(args.threads)

    from autotune.evaluate.backends import Checkpoint
    from autotune.evaluate.harness import EvalOptions, run_suite
    from autotune.evaluate.suite import load_suite

    suite = load_suite(suite_path)

    def direct(log_samples: bool) -> tuple[float, float]:
        cwd = os.getcwd()
        os.chdir(task_dir)
        try:
            t = _clock()
            lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={ckpt},dtype=auto", device="cpu",
                                    batch_size=args.batch_size, tasks=task_names, limit=args.limit,
                                    task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                                    log_samples=log_samples, bootstrap_iters=0)
            return _since(t)
        finally:
            os.chdir(cwd)

    def ours(cached: bool) -> tuple[float, float]:
        t = _clock()
        r = run_suite(Checkpoint(ckpt), suite, out_dir=work / "out", options=EvalOptions(use_cache=cached))
        assert r.meta["cached"] == cached
        return _since(t)

    def cli_cached() -> tuple[float, float]:
        t = _clock()
        subprocess.run([sys.executable, "-m", "autotune.cli.eval", str(ckpt), "--suite", str(suite_path), "--json"],
                       check=True, capture_output=True, env={**os.environ, "AUTOTUNE_HOME": os.environ["AUTOTUNE_HOME"]})
        return _since(t)

    # warm-up: imports, datasets' arrow cache, page cache; fills the result cache for the cached rows
    direct(True)
    run_suite(Checkpoint(ckpt), suite)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in ("direct", "direct_nolog", "ours", "cached", "cli")}
    for i in range(args.repeats):
        order = ["direct", "ours", "direct_nolog"] if i % 2 == 0 else ["ours", "direct_nolog", "direct"]
        for what in order:
            times[what].append({"direct": lambda: direct(True), "direct_nolog": lambda: direct(False),
                                "ours": lambda: ours(False)}[what]())
        times["cached"].append(ours(True))
        times["cli"].append(cli_cached())
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    fastest = {k: min(c for _, c in v) for k, v in times.items()}
    rows = [("lm_eval.simple_evaluate, log_samples=True", "direct"),
            ("lm_eval.simple_evaluate, log_samples=False", "direct_nolog"),
            ("autotune run_suite, no cache", "ours"),
            ("autotune run_suite, cached", "cached"),
            ("`python -m autotune.cli.eval ... --json`, cached (process wall)", "cli")]
    print(f"checkpoint {ckpt} ({_params(ckpt)}), {len(task_names)} tasks x limit {args.limit}, batch {args.batch_size}, "
          f"{args.repeats} repeats, {args.threads} torch thread(s), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, lm-eval {lm_eval.__version__}")
    print(f"| {'what':<66} | wall s (median) | CPU s (median) | CPU s (min) | ratio wall | ratio CPU | ratio CPU min |")
    print(f"|{'-' * 68}|----------------:|---------------:|------------:|-----------:|----------:|--------------:|")
    for label, k in rows:
        print(f"| {label:<66} | {wall[k]:15.3f} | {cpu[k]:14.3f} | {fastest[k]:11.3f} | {wall[k] / wall['direct']:10.3f} | "
              f"{cpu[k] / cpu['direct']:9.3f} | {fastest[k] / fastest['direct']:13.3f} |")
    print("runs (wall s / CPU s): " + "; ".join(f"{k} " + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in v)
                                                for k, v in times.items()))
    return 0


def _clock() -> tuple[float, float]:
    """Wall clock and CPU time of this process (all threads) and its finished children."""
    t = os.times()
    return time.perf_counter(), t.user + t.system + t.children_user + t.children_system


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def _params(ckpt: Path) -> str:
    import json

    cfg = json.loads((ckpt / "config.json").read_text())
    return f"{cfg.get('num_hidden_layers')} layers x {cfg.get('hidden_size')} wide, vocab {cfg.get('vocab_size')}"


if __name__ == "__main__":
    sys.exit(main())
