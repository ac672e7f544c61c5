"""Tokenizing a source in-process with and without the tokenizer's own Rust threads, and with a pool (issue 16 #6).

    python benchmarks/tokenizer_parallelism.py [--mb 50] [--repeats 2] [--keep]

The trial worker sets ``TOKENIZERS_PARALLELISM=false`` before the prepare job (with the offline switches), so a
source below ``PARALLEL_MIN_BYTES`` (64 MiB: tokenized in-process, no pool) was tokenized on one core. This packs
the same generated plain-text file (gsm8k questions as paragraphs, ``--mb`` MB) with ``pack_domain``, each
setting in its own process with a fresh ``AUTOTUNE_HOME`` (nothing cached) and ``TOKENIZERS_PARALLELISM=false``
as the worker has it, settings interleaved ``--repeats`` times in this one session (the best time of each is
shown):

* in-process, one thread (``threads=False``): the behaviour before this change (the baseline);
* in-process, the tokenizer's own threads around each batch (``pack_domain``'s default for one worker now,
  ``prepare.tokenizer_threads``): Rayon batch-encodes each 1 MB chunk on every core;
* a pool of one process per core (what sources above 64 MiB get), one thread each.

Every setting must give the same token files (their blake2b is compared; the script fails otherwise). The table
shows seconds, tokens per second and the time ratio to the baseline, and the machine's load average before and
after (other processes share its cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GSM8K = REPO.parent / "shared" / "data" / "benchmarks" / "gsm8k" / "train.jsonl"

_PACK = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from autotune.config.sources import PathSource
    from autotune.data.prepare import pack_domain
    if __name__ == "__main__":
        t0 = time.perf_counter()
        threads = {"off": False, "default": None}[sys.argv[4]]
        p = pack_domain(PathSource(path=sys.argv[1]), Path(sys.argv[2]), where="domains.bench",
                        workers=int(sys.argv[3]) or None, threads=threads)
        seconds = time.perf_counter() - t0
        m = p.manifest
        print(json.dumps({"seconds": seconds, "workers": m["tokenize"]["workers"], "threads": m["tokenize"]["threads"],
                          "tokens": sum(s["tokens"] for s in m["splits"].values()),
                          "integrity": {k: v.get("blake2b") for k, v in m["integrity"].items()}}))
""")


def _questions() -> list[str]:
    with open(GSM8K, encoding="utf-8") as f:
        return [json.loads(line)["question"].replace("\n", " ") for line in f]


def _write(path: Path, texts: list[str], size: int) -> None:
    """``size`` bytes of the texts in a seeded shuffled order, separated by two blank lines (one a document)."""
    rng = random.Random(0)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            block = texts[:]
            rng.shuffle(block)
            chunk = ("\n\n\n".join(block) + "\n\n\n")[: size - written]
            f.write(chunk)
            written += len(chunk.encode())


def _pack(path: Path, tok: Path, home: Path, workers: int, threads: str) -> dict:
    env = {**os.environ, "AUTOTUNE_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}  # as in the worker
    env.pop("AUTOTUNE_TOKENIZE_WORKERS", None)
    proc = subprocess.run([sys.executable, "-c", _PACK, str(path), str(tok), str(workers), threads],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"packing {path} failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(home, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=50, help="size of the generated file, MB")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each setting (interleaved); the best is shown")
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    args = ap.parse_args()
    from autotune.testing import small_bpe_tokenizer

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = [("in-process, one thread (before)", 1, "off"),
                ("in-process, tokenizer threads (now)", 1, "default"),
                (f"pool of {cores} processes, one thread each", cores, "default")]
    work = Path(tempfile.mkdtemp(prefix="tokenizer-parallelism-"))
    load_before = os.getloadavg()
    try:
        texts = _questions()
        tok = small_bpe_tokenizer(texts[:2000], work / "tok", vocab_size=2000)
        src = work / "src"
        src.mkdir()
        _write(src / "big.txt", texts, args.mb * 1_000_000)
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in settings}
        for i in range(args.repeats):
            for name, workers, threads in settings:
                r = _pack(src, tok, work / f"home-{i}", workers, threads)
                runs[name].append(r)
                print(f"  run {i + 1}: {name}: {r['seconds']:.1f} s", file=sys.stderr, flush=True)
        load_after = os.getloadavg()
        first = runs[settings[0][0]][0]
        same = all(r["integrity"] == first["integrity"] for rs in runs.values() for r in rs)
        base = min(r["seconds"] for r in runs[settings[0][0]])
        print(f"\npacking a {args.mb} MB plain-text file, {first['tokens']:,} tokens; {cores} cores; python "
              f"{sys.version.split()[0]}; best of {args.repeats}; load average before {load_before[0]:.2f}, "
              f"after {load_after[0]:.2f} (1 min)\n")
        print(f"{'setting':<46}{'threads':>8}{'seconds':>9}{'tokens/s':>12}{'time ratio':>12}")
        for name, _, _ in settings:
            best = min(r["seconds"] for r in runs[name])
            print(f"{name:<46}{str(runs[name][0]['threads']):>8}{best:>9.1f}{first['tokens'] / best:>12,.0f}"
                  f"{best / base:>12.2f}")
        print(f"\nsame token files in every run: {'yes' if same else 'NO'}")
        return 0 if same else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
