"""Peak memory and time of packing a plain-text source whose one document is the whole file (issue 15 #9).

    python benchmarks/prepare_memory.py [--mb 500] [--workers 0] [--keep]

Two generated files of the same size under a temp folder, each packed by ``pack_domain`` in its own process
(a fresh ``AUTOTUNE_HOME``, so nothing is cached), with a small byte-level BPE trained on gsm8k questions:

* paragraphs (the baseline): gsm8k questions as documents separated by two blank lines, the common case;
* no separators: the same lines with no blank line anywhere, so the text format makes the whole file one
  document. Before pieces (``piece_bytes``) the reader joined it and the tokenizer held it whole: ~200 bytes
  of memory per byte of text (a 16 MB file peaked at 3.3 GB, a 20 MB JSON line at 3.9 GB).

Beside each file lies a small one of 300 paragraphs, so that a one-document file still makes a held-out split.

The table shows wall time, throughput and peak RSS (the packing process's VmHWM and its tokenizing
processes', the larger), and each row's ratio to the baseline. ``--workers 0`` lets ``tokenize_workers``
choose (one process per core above 64 MiB). The files are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
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
    import json, resource, sys, time
    from pathlib import Path
    from autotune.config.sources import PathSource
    from autotune.data.prepare import pack_domain
    from autotune.testing import own_peak_rss_kib
    if __name__ == "__main__":
        t0 = time.perf_counter()
        p = pack_domain(PathSource(path=sys.argv[1]), Path(sys.argv[2]), where="domains.bench",
                        workers=int(sys.argv[3]) or None)
        seconds = time.perf_counter() - t0
        m = p.manifest
        peak = max(own_peak_rss_kib(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        print(json.dumps({"seconds": seconds, "peak_kib": peak, "workers": m["tokenize"]["workers"],
                          "documents": sum(s["documents"] for s in m["splits"].values()),
                          "tokens": sum(s["tokens"] for s in m["splits"].values()),
                          "in_pieces": m["pieces"]["documents_in_pieces"]}))
""")


def _questions() -> list[str]:
    with open(GSM8K, encoding="utf-8") as f:
        return [json.loads(line)["question"].replace("\n", " ") for line in f]


def _tokenizer(out: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from autotune.data.prepare import EOS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts[:2000], trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS).save_pretrained(out)
    return out


def _write(path: Path, texts: list[str], size: int, separator: str) -> None:
    """``size`` bytes of the texts in a seeded shuffled order, one a line, joined by ``separator``."""
    rng = random.Random(0)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            block = texts[:]
            rng.shuffle(block)
            chunk = separator.join(block) + separator
            chunk = chunk[: size - written]
            f.write(chunk)
            written += len(chunk.encode())


def _pack(path: Path, tok: Path, home: Path, workers: int) -> dict:
    import os

    env = {**os.environ, "AUTOTUNE_HOME": str(home)}
    env.pop("AUTOTUNE_TOKENIZE_WORKERS", None)
    proc = subprocess.run([sys.executable, "-c", _PACK, str(path), str(tok), str(workers)], capture_output=True,
                          text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"packing {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500, help="size of each generated file, MB")
    ap.add_argument("--workers", type=int, default=0, help="tokenizing processes (0: tokenize_workers decides)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files and caches")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prepare-memory-"))
    try:
        texts = _questions()
        tok = _tokenizer(work / "tok", texts)
        size = args.mb * 1_000_000
        cases = [("paragraphs (baseline)", "\n\n\n"), ("no separators", "\n")]
        rows = []
        for name, sep in cases:
            folder = work / name.split()[0]
            folder.mkdir()
            _write(folder / "big.txt", texts, size, sep)
            (folder / "small.txt").write_text("\n\n\n".join(texts[:300]) + "\n", encoding="utf-8")
            r = _pack(folder, tok, work / f"home-{name.split()[0]}", args.workers)
            rows.append((name, r))
            shutil.rmtree(folder)
            shutil.rmtree(work / f"home-{name.split()[0]}", ignore_errors=True)
        base = rows[0][1]
        print(f"\npacking a {args.mb} MB plain-text file (tokenize workers: {base['workers']}; python {sys.version.split()[0]})\n")
        print(f"{'case':<24}{'documents':>11}{'in pieces':>11}{'tokens':>13}{'seconds':>9}{'MB/s':>7}"
              f"{'peak RSS MiB':>14}{'RSS ratio':>11}{'time ratio':>12}")
        for name, r in rows:
            print(f"{name:<24}{r['documents']:>11,}{r['in_pieces']:>11,}{r['tokens']:>13,}{r['seconds']:>9.1f}"
                  f"{args.mb / r['seconds']:>7.2f}{r['peak_kib'] / 1024:>14.0f}"
                  f"{r['peak_kib'] / base['peak_kib']:>11.2f}{r['seconds'] / base['seconds']:>12.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
