"""Continuous metrics from lm-eval's per-sample log-likelihoods, and chance levels.

At proxy scale accuracy is mostly noise (Marin: signal-to-noise 1-2 for accuracy against 8-22 for held-out
bits-per-byte); DataDecide found continuous likelihood metrics predict large-scale rankings best. These
read what lm-eval already computed for every document (``filtered_resps``: one ``(loglikelihood,
is_greedy)`` per choice) and cost no extra model call:

* ``gold_prob``: probability mass of the gold choice among the choices, ``p(gold) / sum_c p(c)``;
* ``gold_logprob``: its log (a log-softmax over the choices' log-likelihoods); higher is better, <= 0;
* ``gold_bpb``: bits per UTF-8 byte of the gold continuation, ``-sum ll / ln 2 / sum bytes`` over all
  documents (multiple-choice and plain log-likelihood tasks such as LAMBADA); lower is better.

``chance`` is the mean of ``1 / number of choices``: what ``acc`` / ``gold_prob`` score by guessing.
Also here: standard errors of mean metrics from the per-sample values (lm-eval's ``mean_stderr``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def gold_indices(sample: dict[str, Any], n_choices: int) -> list[int]:
    gold = sample.get("target")
    if isinstance(gold, bool):
        gold = int(gold)
    if isinstance(gold, int):
        return [gold]
    if isinstance(gold, list) and all(isinstance(g, int) for g in gold):
        return list(gold)
    if isinstance(gold, str):  # a task whose doc_to_target gives the choice text
        conts = [str(a[1]).strip() for a in sample.get("arguments", [])]
        if gold.strip() in conts:
            return [conts.index(gold.strip())]
        if gold.strip().isdigit() and int(gold) < n_choices:
            return [int(gold)]
    raise ValueError(f"cannot read the gold choice from target {gold!r}")


def continuation(arg: Any) -> str:
    """The continuation string of a log-likelihood request's arguments ``(context, continuation)``."""
    if isinstance(arg, list | tuple) and len(arg) >= 2:
        return str(arg[1])
    raise ValueError(f"not a log-likelihood request: {arg!r}")


def derived_metrics(output_type: str | None, samples: Iterable[dict[str, Any]]) -> dict[str, float]:
    """``{gold_prob, gold_logprob, gold_bpb, chance, *_stderr}`` for a task's samples (filter ``none``)."""
    rows = [s for s in samples if s.get("filter", "none") == "none"]
    if not rows or output_type not in ("multiple_choice", "loglikelihood"):
        return {}
    logprobs, probs, chance = [], [], []
    nll_bits = 0.0
    n_bytes = 0
    for s in rows:
        resps = s["filtered_resps"]
        lls = [float(r[0]) if isinstance(r, list | tuple) else float(r) for r in resps]
        args = s["arguments"]
        if output_type == "loglikelihood":
            nll_bits -= lls[0] / math.log(2)
            n_bytes += len(continuation(args[0]).encode("utf-8"))
            continue
        gold = gold_indices(s, len(lls))
        lp = logsumexp([lls[g] for g in gold]) - logsumexp(lls)
        logprobs.append(lp)
        probs.append(math.exp(lp))
        chance.append(1.0 / len(lls))
        nll_bits -= lls[gold[0]] / math.log(2)
        n_bytes += len(continuation(args[gold[0]]).encode("utf-8"))
    out: dict[str, float] = {"n": float(len(rows))}
    if n_bytes:
        out["gold_bpb"] = nll_bits / n_bytes
    if logprobs:
        out["gold_logprob"] = sum(logprobs) / len(logprobs)
        out["gold_prob"] = sum(probs) / len(probs)
        out["chance"] = sum(chance) / len(chance)
        for name, vals in (("gold_logprob", logprobs), ("gold_prob", probs)):
            se = mean_stderr(vals)
            if se is not None:
                out[f"{name}_stderr"] = se
    return out


def mean_stderr(values: list[float]) -> float | None:
    """Standard error of a mean: sample standard deviation / sqrt(n) (lm-eval's ``mean_stderr``)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1) / n)


def sample_stderr(samples: Iterable[dict[str, Any]], metric: str, filter_: str, value: float) -> float | None:
    """Stderr of ``metric`` from its per-sample values, when the metric is their mean (not e.g. perplexity)."""
    vals = [float(s[metric]) for s in samples if s.get("filter", "none") == filter_
            and isinstance(s.get(metric), int | float)]
    if len(vals) < 2 or abs(sum(vals) / len(vals) - value) > 1e-9 * max(1.0, abs(value)):
        return None
    return mean_stderr(vals)


def chance_corrected(value: float, chance: float) -> float:
    """``(value - chance) / (1 - chance)``: 0 at chance, 1 at perfect."""
    return (value - chance) / (1.0 - chance)
