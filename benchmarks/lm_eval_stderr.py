"""What lm-eval's standard errors cost: its bootstrap (a process pool, pure Python) vs autotune's exact
vectorised twin, on the same per-document values, one process.

    python benchmarks/lm_eval_stderr.py [--docs 20,200,1000] [--iters 100000]   # eval, gate
    python benchmarks/lm_eval_stderr.py --iters 1000                            # a study's trials

lm-eval computes ``<metric>_stderr`` only with ``bootstrap_iters > 0`` (autotune passed 0 before issue 16):
then mean metrics get the closed form ``mean_stderr`` (one pass over the documents, shown as ``mean``), and
``perplexity`` (LAMBADA), median, F1, MCC, BLEU... a bootstrap of ``iters`` resamples
(``lm_eval.api.metrics.bootstrap_stderr``: ``mp.Pool(cpu_count)``, chunks of 1000 seeded 0, 1, ...).
``autotune.evaluate.lm_eval_format.exact_bootstrap`` draws the same resamples with numpy (same seeds, same
indices) for perplexity and median: the table shows seconds, the ratio to lm-eval's pool, and the relative
difference of the two values (0 up to rounding: the same replicates).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", default="20,200,1000", help="comma-separated document counts")
    ap.add_argument("--iters", type=int, default=100_000, help="bootstrap resamples (lm-eval's CLI default)")
    args = ap.parse_args()
    from lm_eval.api.metrics import bootstrap_stderr, mean_stderr, perplexity

    from autotune.evaluate.lm_eval_format import exact_bootstrap

    print(f"{'docs':>6} {'statistic':>22} {'seconds':>9} {'vs lm-eval':>10} {'rel. diff':>10}")
    for n in (int(x) for x in args.docs.split(",")):
        rnd = random.Random(n)
        lls = [-rnd.expovariate(0.4) for _ in range(n)]  # per-document log-likelihoods
        t = time.perf_counter()
        ref = bootstrap_stderr(perplexity, lls, args.iters)
        base = time.perf_counter() - t
        t = time.perf_counter()
        ours = exact_bootstrap(perplexity, lls, args.iters)
        fast = time.perf_counter() - t
        t = time.perf_counter()
        mean_stderr([float(x > -2.5) for x in lls])
        closed = time.perf_counter() - t
        print(f"{n:>6} {'perplexity, lm-eval':>22} {base:>9.3f} {1.0:>10.2f} {'':>10}")
        print(f"{n:>6} {'perplexity, exact twin':>22} {fast:>9.3f} {fast / base:>10.3f} "
              f"{abs(ours - ref) / ref:>10.1e}")
        print(f"{n:>6} {'mean (closed form)':>22} {closed:>9.5f} {closed / base:>10.5f} {'':>10}")
        assert math.isclose(ours, ref, rel_tol=1e-9)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
