"""The CI regression gate: a checkpoint's scores against a baseline's, per suite entry -> pass / regress.

Pure (numpy, pydantic; no torch, no lm_eval): per-document values read from the evaluator's sample logs,
the paired bootstrap, the tolerance rules, the baseline record and the check that two records are
comparable. ``autotune/gate/run.py`` runs the evaluations, ``render.py`` writes the outputs.

The test, per entry (an lm-eval task's metric, or held-out bits-per-byte on a domain):

* Every score here is ``transform(sum(num) / sum(den))`` over documents (``DocValues``): a mean metric has
  ``den = 1``; a ratio (``gold_bpb``, held-out bits-per-byte over windows, lm-eval's ``bits_per_byte``) has
  the bytes as ``den``; perplexity is ``exp(-mean log-likelihood)``. A metric that is none of these
  (corpus BLEU, a group's aggregate) has no per-document form: the entry is reported as skipped.
* The drop is how much worse the checkpoint is, in the metric's unit, positive = worse (``baseline -
  checkpoint`` when higher is better). The same documents are resampled for both (a paired bootstrap:
  differences between documents cancel, only the models' difference remains); ``low`` / ``high`` are the
  one-sided bounds at ``confidence``: P(drop > low) = confidence. They are BCa bounds by default
  (``gate.interval: bca``, by scipy), percentile bounds with ``interval: percentile`` or where BCa is
  undefined (``bootstrap_bounds``). Measured on skewed synthetic drops at 16-64 documents
  (``benchmarks/gate_coverage.py --reps 2000 --resamples 1000``), the worst case is left-skewed at 16
  documents: the percentile lower bound lies above the true drop in 19.6% of samples instead of 5% (a gate
  failing checkpoints that are exactly at the tolerance), BCa's in 15.5%; BCa is closer to nominal on every
  skewed case measured (lognormal either way, windowed bits-per-byte, accuracy: its worse bound 0.51-0.86x
  as far off); on normal data the two agree within noise.
* The entry fails when ``low > threshold``: the drop exceeds the tolerance with that confidence. A
  tolerance is absolute (``0.01``) or relative to the baseline's value (``"1%"``). The bootstrap covers the
  choice of documents only, not training noise: two seeds of one recipe differ by more than document noise,
  so the tolerance is what must absorb seed-to-seed differences (``DEFAULT_TOLERANCE``).
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from autotune.config.gate import GateConfig, Interval, Rule, Tolerance
from autotune.errors import UserError
from autotune.evaluate.continuous import continuation, gold_indices, logsumexp
from autotune.evaluate.metrics import CONTINUOUS_METRICS, LIKELIHOOD_METRICS

BASELINE_FORMAT = "autotune-gate-baseline/1"

# Defaults when no rule matches. One accuracy point and 1% of a likelihood metric: the demo's replicate
# proxies (same mixture, seeds 0 and 1) differ by about 0.01 in target score, and a CI gate should not
# fire on seed noise; a drop of a point is what a mid-training regression worth a look starts at.
DEFAULT_TOLERANCE = {"bounded": 0.01, "likelihood": "1%"}
# Below this many documents the percentile bootstrap's bounds are too optimistic to lean on.
FEW_DOCUMENTS = 20
INTERVALS = get_args(Interval)  # "bca", "percentile": the bounds ``bootstrap_bounds`` computes
# BCa's acceleration is a jackknife estimate of skewness; below this many documents it is itself noise, and
# the gate says so and uses the percentile bounds.
BCA_MIN_DOCUMENTS = 8


class NotGateable(Exception):
    """The entry's score has no per-document form the bootstrap can resample (a reason for the report)."""


# ----------------------------------------------------------------------------------------------- tolerance
def default_tolerance(metric: str) -> Tolerance:
    kind = "likelihood" if metric in LIKELIHOOD_METRICS else "bounded"
    return Tolerance.parse(DEFAULT_TOLERANCE[kind])


def tolerance_for(key: str, metric: str, rules: Sequence[Rule]) -> tuple[Tolerance, str]:
    """The first rule whose pattern matches ``key``, else the metric's default; and where it came from."""
    for rule in rules:
        if fnmatch.fnmatchcase(key, rule.pattern):
            return rule.tolerance, rule.where
    return default_tolerance(metric), "default"


def check_patterns(patterns: Iterable[tuple[str, str, str | None]], keys: Sequence[str]) -> None:
    """Every (pattern, field, file) must match an entry key: a pattern that matches nothing is most likely a typo."""
    for pattern, field, file in patterns:
        if not any(fnmatch.fnmatchcase(k, pattern) for k in keys):
            raise UserError(f"matches no entry of the suite (entries: {', '.join(keys)})", file=file, field=field,
                            value=pattern)


# ----------------------------------------------------------------------------------------------- documents
@dataclass(frozen=True)
class DocValues:
    """One entry's score decomposed over documents: ``transform(sum(num) / sum(den))``.

    ``ids`` name the documents (lm-eval's ``doc_id``; a window index for bits-per-byte) and ``hashes``
    their content (lm-eval's ``doc_hash``) when known; ``transform`` is ``identity`` or ``exp_neg``
    (perplexity).
    """

    ids: tuple[str, ...]
    num: np.ndarray
    den: np.ndarray
    transform: Literal["identity", "exp_neg"] = "identity"
    hashes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def value(self) -> float:
        return float(_apply(self.transform, np.asarray(self.num.sum() / self.den.sum())))

    def to_json(self) -> dict[str, Any]:
        unit_den = bool(np.all(self.den == 1.0))
        return {"ids": list(self.ids), "hashes": list(self.hashes) if self.hashes else None,
                "num": self.num.tolist(), "den": None if unit_den else self.den.tolist(), "transform": self.transform}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DocValues:
        num = np.asarray(d["num"], dtype=np.float64)
        den = np.ones_like(num) if d.get("den") is None else np.asarray(d["den"], dtype=np.float64)
        transform = d.get("transform", "identity")
        if len(d["ids"]) != len(num) or len(den) != len(num) or transform not in ("identity", "exp_neg"):
            raise ValueError("ids, num and den differ in length, or an unknown transform")
        return cls(tuple(str(i) for i in d["ids"]), num, den, transform, tuple(d["hashes"]) if d.get("hashes") else None)

    def aligned_to(self, other: DocValues) -> DocValues:
        """These values reordered to ``other``'s documents; a ValueError (saying how) when the sets differ."""
        if set(self.ids) != set(other.ids) or len(self.ids) != len(other.ids):
            mine, theirs = set(self.ids), set(other.ids)
            raise ValueError(f"{len(self.ids)} documents against {len(other.ids)}; "
                             f"{len(mine - theirs)} only in one, {len(theirs - mine)} only in the other")
        pos = {d: i for i, d in enumerate(self.ids)}
        order = np.array([pos[d] for d in other.ids], dtype=np.int64)
        hashes = tuple(self.hashes[i] for i in order) if self.hashes else None
        if hashes and other.hashes:
            changed = [d for d, a, b in zip(other.ids, hashes, other.hashes, strict=True) if a != b]
            if changed:
                raise ValueError(f"{len(changed)} documents have the same id but different content "
                                 f"(first: doc_id {changed[0]})")
        return DocValues(other.ids, self.num[order], self.den[order], self.transform, hashes)


def _apply(transform: str, ratio: np.ndarray) -> np.ndarray:
    return np.exp(-ratio) if transform == "exp_neg" else ratio


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))


def task_doc_values(metric: str, filter_: str, normalize: str, output_type: str | None,
                    samples: list[dict[str, Any]], raw_value: float) -> DocValues:
    """Per-document values of a task entry from lm-eval's per-sample log; checked to reproduce ``raw_value``
    (the score before chance correction). Raises ``NotGateable`` with a reason."""
    want = "none" if metric in CONTINUOUS_METRICS else filter_
    rows = [s for s in samples if s.get("filter", "none") == want]
    if not rows:
        raise NotGateable(f"no per-document records for filter {want!r} (a group or a task without sample logs)")
    ids = tuple(str(s["doc_id"]) for s in rows)
    if len(set(ids)) != len(ids):
        raise NotGateable("a document appears more than once in the sample log (repeats > 1?)")
    # lm-eval's doc_hash (sha256 of the document), shortened: 64 bits tell a changed document apart
    hashes = tuple(str(s["doc_hash"])[:16] for s in rows) if all(s.get("doc_hash") for s in rows) else None
    n = len(rows)
    transform = "identity"
    if metric in CONTINUOUS_METRICS:
        num, den = _continuous(metric, output_type, rows)
    else:
        vals = [s.get(metric) for s in rows]
        if all(isinstance(v, int | float) for v in vals):
            num, den = np.asarray(vals, dtype=np.float64), np.ones(n)
            candidates = [("identity", num, den), ("exp_neg", num, den)]  # a mean; lm-eval's perplexity
        elif all(isinstance(v, list | tuple) and len(v) == 2 for v in vals):
            ll = np.asarray([float(v[0]) for v in vals])
            w = np.asarray([float(v[1]) for v in vals])
            # lm-eval's weighted_perplexity (exp(-sum ll / sum w)) and bits_per_byte (-sum ll / sum w / ln 2)
            candidates = [("exp_neg", ll, w), ("identity", -ll / math.log(2), w)]
        else:
            raise NotGateable(f"metric {metric!r} has no numeric per-document values")
        for transform, num, den in candidates:
            if _close(float(_apply(transform, np.asarray(num.sum() / den.sum()))), raw_value):
                break
        else:
            raise NotGateable(f"metric {metric!r} is not a mean, ratio or perplexity of per-document values "
                              "(a corpus-level metric): the bootstrap cannot resample it")
    docs = DocValues(ids, num, den, transform, hashes)  # type: ignore[arg-type]
    if metric in CONTINUOUS_METRICS and not _close(docs.value(), raw_value):
        raise NotGateable(f"the per-document {metric} values give {docs.value():.6g}, the score is {raw_value:.6g}")
    if normalize == "chance":
        if transform != "identity" or not np.all(den == 1.0):
            raise NotGateable("chance correction applies to mean metrics only")
        chance = float(np.mean([1.0 / len(s["filtered_resps"]) for s in rows]))
        docs = DocValues(ids, (num - chance) / (1.0 - chance), den, "identity", hashes)
    return docs


def _continuous(metric: str, output_type: str | None, rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-document parts of gold_logprob / gold_prob (means) and gold_bpb (bits over bytes); the same
    reading of lm-eval's samples as ``autotune.evaluate.continuous.derived_metrics``."""
    num, den = [], []
    for s in rows:
        lls = [float(r[0]) if isinstance(r, list | tuple) else float(r) for r in s["filtered_resps"]]
        if output_type == "loglikelihood":
            if metric != "gold_bpb":
                raise NotGateable(f"{metric} needs a multiple-choice task")
            num.append(-lls[0] / math.log(2))
            den.append(len(continuation(s["arguments"][0]).encode("utf-8")))
            continue
        gold = gold_indices(s, len(lls))
        if metric == "gold_bpb":
            num.append(-lls[gold[0]] / math.log(2))
            den.append(len(continuation(s["arguments"][gold[0]]).encode("utf-8")))
        else:
            lp = logsumexp([lls[g] for g in gold]) - logsumexp(lls)
            num.append(lp if metric == "gold_logprob" else math.exp(lp))
            den.append(1.0)
    return np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)


def bpb_doc_values(windows: list[dict[str, Any]], value: float) -> DocValues:
    """Held-out bits-per-byte over its scored windows (``samples/bpb/<domain>.jsonl``)."""
    if not windows:
        raise NotGateable("no per-window losses (evaluated before they were kept)")
    num = np.asarray([float(w["nll"]) / math.log(2) for w in windows])
    den = np.asarray([float(w["bytes"]) for w in windows])
    docs = DocValues(tuple(str(w["window"]) for w in windows), num, den)
    if not _close(docs.value(), value):
        raise NotGateable(f"the windows give {docs.value():.6g} bits per byte, the score is {value:.6g}")
    return docs


# ----------------------------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class DropInterval:
    """The drop (positive = the checkpoint is worse) and its one-sided bounds at ``confidence``.

    ``interval`` is the method that gave the bounds (``bca`` or ``percentile``); ``fallback`` says why it is
    not the one asked for (None when it is).
    """

    drop: float
    low: float
    high: float
    confidence: float
    resamples: int
    interval: str = "percentile"
    fallback: str | None = None


@dataclass(frozen=True)
class Bounds:
    """``bootstrap_bounds``'s answer: bounds of shape ``batch`` and, per element, the method used and why."""

    low: np.ndarray
    high: np.ndarray
    interval: np.ndarray  # str per element: "bca" | "percentile"
    fallback: np.ndarray  # str per element: "" when the method asked for was used


def _resample_chunk(shape: tuple[int, ...]) -> int:
    """Resamples per chunk: bounds memory to about 2M gathered values per part."""
    return max(1, (1 << 21) // math.prod(shape))


def bootstrap_bounds(parts: np.ndarray, statistic, *, confidence: float, resamples: int, seed: int,
                     interval: str = "bca") -> Bounds:
    """One-sided bounds at ``confidence`` of ``statistic`` over a paired bootstrap of documents.

    ``parts`` is ``[k, *batch, n]``: k per-document parts (numerators, denominators, of both models) of
    ``batch`` independent comparisons over n documents; ``statistic(*sums)`` maps the k parts' sums over
    documents (each of shape ``[*batch, m]`` or ``[*batch]``) to the statistic. Every resample draws the same
    documents for all parts (the pairing). ``low`` is the ``1 - confidence`` quantile, ``high`` the
    ``confidence`` quantile of the resampled statistic (``percentile``), or the same quantiles BCa-corrected
    (``bca``: bias-corrected and accelerated, Efron 1987, by ``scipy.stats.bootstrap``; its skewness
    correction matters at the gate's 16-64 windows, where the percentile bounds are too narrow).

    BCa falls back to the percentile bounds of the same resamples, saying why, when it is undefined: fewer
    than ``BCA_MIN_DOCUMENTS`` documents, resampled statistics that are all equal (identical per-document
    differences), or a NaN from scipy (a degenerate jackknife). The resamples are the same for both methods
    at one seed, so a fallback gives exactly what ``interval="percentile"`` gives.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, not {interval!r}")
    parts = np.asarray(parts, dtype=np.float64)
    batch, n = parts.shape[1:-1], parts.shape[-1]
    if n == 0:
        raise ValueError("no documents")
    chunk = _resample_chunk(parts.shape[1:])
    if interval == "bca" and n >= BCA_MIN_DOCUMENTS:
        from scipy import stats

        def stat(*resampled, axis=-1):
            return statistic(*(r.sum(axis=axis) for r in resampled))

        # two-sided at 2 * confidence - 1: each tail holds 1 - confidence, the one-sided bounds the gate uses
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # handled below: NaN -> percentile
            res = stats.bootstrap(tuple(parts), stat, paired=True, vectorized=True, axis=-1, method="BCa",
                                  confidence_level=2 * confidence - 1, n_resamples=resamples, batch=chunk,
                                  rng=np.random.default_rng(seed))
        drops = np.asarray(res.bootstrap_distribution, dtype=np.float64).reshape(*batch, resamples)
        low = np.asarray(res.confidence_interval.low, dtype=np.float64).reshape(batch)
        high = np.asarray(res.confidence_interval.high, dtype=np.float64).reshape(batch)
    else:
        rng = np.random.default_rng(seed)
        drops = np.empty((*batch, resamples))
        for start in range(0, resamples, chunk):
            m = min(chunk, resamples - start)
            idx = rng.integers(0, n, size=(m, n))  # the same draws as scipy's at this seed and chunk
            drops[..., start:start + m] = statistic(*parts[..., idx].sum(axis=-1))  # parts: [k, *batch, m]
        low = high = np.full(batch, np.nan)
    with np.errstate(invalid="ignore"):
        p_low, p_high = np.quantile(drops, [1.0 - confidence, confidence], axis=-1)
    method = np.full(batch, interval, dtype=object)
    why = np.full(batch, "", dtype=object)
    if interval == "bca":
        # every resample gives the same drop (up to rounding): no skewness to correct; scipy's BCa is NaN at
        # exact ties and rounding noise otherwise
        with np.errstate(invalid="ignore"):
            flat = np.ptp(drops, axis=-1) <= 1e-12 * np.maximum(1.0, np.abs(drops).max(axis=-1))
        nan = ~(np.isfinite(low) & np.isfinite(high)) | flat
        why[nan] = "BCa undefined (a degenerate jackknife)"
        why[nan & flat] = "every resample gives the same drop (the documents differ by the same amount)"
        if n < BCA_MIN_DOCUMENTS:
            why[...] = f"BCa needs at least {BCA_MIN_DOCUMENTS} documents"
        method[nan] = "percentile"
        low, high = np.where(nan, p_low, low), np.where(nan, p_high, high)
    else:
        low, high = p_low, p_high
    return Bounds(np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64), method, why)


def paired_bootstrap(base: DocValues, cand: DocValues, *, higher_is_better: bool, confidence: float = 0.95,
                     resamples: int = 2000, seed: int = 0, interval: str = "percentile") -> DropInterval:
    """Resample documents with replacement, the same draw for both models, and recompute the drop each time.

    ``low`` / ``high`` are the one-sided bounds at ``confidence`` by ``interval`` (``bootstrap_bounds``:
    ``percentile`` quantiles of the resampled drops, the default here, or ``bca``, the gate's default:
    ``GateConfig.interval``, ``decide``). ``cand`` must be aligned to ``base``
    (``DocValues.aligned_to``). Identical values give a zero-width interval at 0.
    """
    if base.ids != cand.ids:
        raise ValueError("align the documents first (DocValues.aligned_to)")
    if len(base) == 0:
        raise ValueError("no documents")
    sign = 1.0 if higher_is_better else -1.0

    def drop(sum_nb, sum_db, sum_nc, sum_dc):
        return sign * (_apply(base.transform, sum_nb / sum_db) - _apply(cand.transform, sum_nc / sum_dc))

    point = float(drop(base.num.sum(), base.den.sum(), cand.num.sum(), cand.den.sum()))
    b = bootstrap_bounds(np.stack([base.num, base.den, cand.num, cand.den]), drop, confidence=confidence,
                         resamples=resamples, seed=seed, interval=interval)
    # + 0.0 turns the -0.0 of a lower-is-better metric's zero drop into 0.0
    return DropInterval(point + 0.0, float(b.low) + 0.0, float(b.high) + 0.0, confidence, resamples,
                        str(b.interval[()]), str(b.fallback[()]) or None)


# ----------------------------------------------------------------------------------------------- decision
@dataclass(frozen=True)
class Verdict:
    """One entry's outcome: ``pass``, ``fail`` (a regression) or ``skip`` (not gated; ``note`` says why)."""

    key: str
    group: str
    metric: str
    higher_is_better: bool
    status: Literal["pass", "fail", "skip"]
    baseline: float | None
    value: float | None
    n: int = 0
    drop: float | None = None
    low: float | None = None
    high: float | None = None
    tolerance: str | None = None
    tolerance_from: str | None = None
    threshold: float | None = None
    note: str = ""
    interval: str | None = None  # the bootstrap interval that gave low / high: "bca" or "percentile"

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}


def decide(key: str, group: str, metric: str, higher_is_better: bool, base: DocValues, cand: DocValues, *,
           tolerance: Tolerance, tolerance_from: str = "default", confidence: float = 0.95,
           resamples: int = 2000, seed: int = 0, interval: str = "bca") -> Verdict:
    """Fail when the drop's lower bound at ``confidence`` exceeds the tolerance's threshold.

    ``interval``: the bootstrap bounds (``bootstrap_bounds``; ``bca`` is ``GateConfig.interval``'s default);
    the verdict records the one used and, in its note, why BCa fell back to percentile bounds.
    """
    base_value, value = base.value(), cand.value()
    common = {"key": key, "group": group, "metric": metric, "higher_is_better": higher_is_better,
              "baseline": base_value, "value": value, "n": len(base), "tolerance": str(tolerance),
              "tolerance_from": tolerance_from}
    if not (np.all(np.isfinite(base.num)) and np.all(np.isfinite(base.den)) and math.isfinite(base_value)):
        return Verdict(**common, status="skip", note="the baseline has non-finite per-document values")
    threshold = tolerance.threshold(base_value)
    if not (np.all(np.isfinite(cand.num)) and np.all(np.isfinite(cand.den)) and math.isfinite(value)):
        return Verdict(**common, status="fail", threshold=threshold,
                       note="the checkpoint has non-finite per-document values (diverged weights?)")
    ci = paired_bootstrap(base, cand, higher_is_better=higher_is_better, confidence=confidence,
                          resamples=resamples, seed=seed, interval=interval)
    failed = ci.low > threshold
    notes = []
    if failed:
        notes.append(f"worse by more than {tolerance} with {confidence:.0%} confidence")
    elif ci.drop > threshold:
        notes.append(f"possible regression: the drop exceeds {tolerance} but not with {confidence:.0%} confidence")
    elif ci.high < 0:
        notes.append("better than the baseline")
    if len(base) < FEW_DOCUMENTS:
        notes.append(f"only {len(base)} documents: the interval is rough")
    if ci.fallback:
        notes.append(f"percentile bounds: {ci.fallback}")
    return Verdict(**common, status="fail" if failed else "pass", drop=ci.drop, low=ci.low, high=ci.high,
                   threshold=threshold, note="; ".join(notes), interval=ci.interval)


# ----------------------------------------------------------------------------------------------- records
def snapshot(checkpoint: Path, suite, meta: dict[str, Any], rows: list[dict[str, Any]],
             docs: dict[str, DocValues | str]) -> dict[str, Any]:
    """What a baseline file holds (and what a fresh evaluation is compared as): identity + per-document values.

    ``docs`` maps each entry key to its ``DocValues`` or the reason it has none.
    """
    task_by_entry = {k: t for t in meta.get("tasks", {}).values() for k in t["entries"]}
    entries: dict[str, Any] = {}
    for row in rows:
        key = row["key"]
        if row["task"].startswith("bpb:"):
            domain = row["task"].removeprefix("bpb:")
            b = meta["bpb"][domain]
            identity = {"heldout": b["heldout"], "seq_len": b["seq_len"], "tokens": b["tokens"]}
        else:
            t = task_by_entry[key]
            identity = {"task": row["task"], "version": t.get("version"), "num_fewshot": t.get("n_shot"),
                        "template_hash": t.get("template_hash"), "limit": t.get("limit"),
                        "filter": row.get("filter"), "normalize": row.get("normalize")}
        d = docs.get(key, "no per-document values")
        entries[key] = {"group": row["group"], "task": row["task"], "metric": row["metric"],
                        "higher_is_better": row["higher_is_better"], "value": row["value"], "identity": identity,
                        "docs": d.to_json() if isinstance(d, DocValues) else None,
                        "not_gateable": d if isinstance(d, str) else None}
    return {"format": BASELINE_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "checkpoint": str(Path(checkpoint).resolve()), "model_hash": meta.get("model_hash"),
            "suite": {"name": suite.name, "digest": meta.get("suite_digest"), "file": suite.source_file},
            "backend": meta.get("backend_fingerprint"), "lm_eval_version": meta.get("lm_eval_version"),
            "entries": entries}


_IDENTITY_WORDS = {"task": "task", "version": "task version", "num_fewshot": "few-shot count",
                   "template_hash": "prompt template or task data (template hash)", "limit": "document limit",
                   "filter": "filter", "normalize": "normalisation", "heldout": "held-out tokens (text or tokenizer)",
                   "seq_len": "window length", "tokens": "number of held-out tokens"}
_REDO = "not comparable; write a new baseline (autotune gate BASELINE_CHECKPOINT --suite ... --write-baseline FILE)"


def read_baseline(path: Path) -> dict[str, Any]:
    """A baseline file written by ``--write-baseline``; a UserError naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("baseline file not found", file=path) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"not a JSON file ({e})", file=path) from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"not a gate baseline (expected format {BASELINE_FORMAT!r}; write one with --write-baseline)",
                        file=path, field="format", value=got)
    for field in ("suite", "backend", "entries"):
        if not isinstance(data.get(field), dict):
            raise UserError("missing or not a mapping", file=path, field=field, value=data.get(field))
    for key, e in data["entries"].items():
        if not isinstance(e, dict) or not isinstance(e.get("identity"), dict):
            raise UserError("damaged entry", file=path, field=f"entries[{key}]")
        if e.get("docs") is not None:
            try:
                docs = DocValues.from_json(e["docs"])
            except (KeyError, TypeError, ValueError) as err:
                raise UserError(f"damaged per-document values ({err})", file=path,
                                field=f"entries[{key}].docs") from None
            check_finite_baseline(key, docs, file=path)
    return data


def check_finite_baseline(key: str, docs: DocValues, *, file: str | Path | None) -> None:
    """Refuse (UserError, exit 2) baseline values that are not finite numbers: a damaged or tampered file, or
    a diverged baseline model. Compared, such an entry could only be skipped, and a baseline whose entries
    are all skipped would turn the gate off."""
    bad = int(np.count_nonzero(~(np.isfinite(docs.num) & np.isfinite(docs.den))))
    with np.errstate(all="ignore"):
        finite_score = math.isfinite(docs.value())
    if bad or not finite_score:
        what = f"the values of {bad} of {len(docs)} documents are" if bad else f"the score ({docs.value()}) is"
        raise UserError(f"damaged baseline: {what} not finite (NaN or infinite), so this entry cannot be "
                        f"compared; {_REDO.removeprefix('not comparable; ')}", file=file, field=f"entries[{key}].docs")


def check_comparable(baseline: dict[str, Any], current: dict[str, Any], *, file: str | Path | None) -> None:
    """Refuse (UserError, exit 2) a baseline made with another suite, backend, lm-eval version, task
    version, few-shot count, template, limit or held-out text: its scores do not measure the same thing."""
    def refuse(field: str, what: str, theirs: Any, ours: Any) -> None:
        raise UserError(f"the baseline was made with {what} {theirs!r}, this run uses {ours!r}: {_REDO}",
                        file=file, field=field)

    if baseline["suite"].get("name") != current["suite"]["name"]:
        refuse("suite.name", "suite", baseline["suite"].get("name"), current["suite"]["name"])
    b_backend, c_backend = baseline.get("backend") or {}, current.get("backend") or {}
    for k in sorted(set(b_backend) | set(c_backend), key=lambda k: k != "backend"):  # the backend's name first
        if b_backend.get(k) != c_backend.get(k):
            refuse(f"backend.{k}", "backend" if k == "backend" else f"backend setting {k}", b_backend.get(k),
                   c_backend.get(k))
    if baseline.get("lm_eval_version") != current.get("lm_eval_version"):
        refuse("lm_eval_version", "lm-eval", baseline.get("lm_eval_version"), current.get("lm_eval_version"))
    missing = [k for k in current["entries"] if k not in baseline["entries"]]
    extra = [k for k in baseline["entries"] if k not in current["entries"]]
    if missing or extra:
        parts = ([f"entries not in the baseline: {', '.join(missing)}"] if missing else []) + \
                ([f"baseline entries not in this suite: {', '.join(extra)}"] if extra else [])
        raise UserError(f"the baseline was made with a different version of suite {current['suite']['name']!r} "
                        f"({'; '.join(parts)}): {_REDO}", file=file, field="entries")
    for key, cur in current["entries"].items():
        theirs = baseline["entries"][key]["identity"]
        for k, ours in cur["identity"].items():
            if theirs.get(k) != ours:
                refuse(f"entries[{key}].identity.{k}", _IDENTITY_WORDS.get(k, k), theirs.get(k), ours)


def compare(baseline: dict[str, Any], current: dict[str, Any], config: GateConfig, rules: Sequence[Rule], *,
            file: str | Path | None) -> list[Verdict]:
    """One verdict per entry of ``current`` (in suite order); call ``check_comparable`` first."""
    out = []
    for key, cur in current["entries"].items():
        common = {"key": key, "group": cur["group"], "metric": cur["metric"],
                  "higher_is_better": cur["higher_is_better"], "value": cur["value"]}
        base = baseline["entries"][key]
        if cur["group"] not in config.groups:
            out.append(Verdict(**common, status="skip", baseline=base["value"],
                               note=f"group {cur['group']} is not gated (gate config: groups)"))
            continue
        skip = next((p for p in config.skip if fnmatch.fnmatchcase(key, p)), None)
        if skip is not None:
            out.append(Verdict(**common, status="skip", baseline=base["value"], note=f"skipped by pattern {skip!r}"))
            continue
        if cur["docs"] is None or base.get("docs") is None:
            reason = cur.get("not_gateable") or base.get("not_gateable") or "no per-document values"
            out.append(Verdict(**common, status="skip", baseline=base["value"], note=f"not gateable: {reason}"))
            continue
        b_docs, c_docs = DocValues.from_json(base["docs"]), DocValues.from_json(cur["docs"])
        check_finite_baseline(key, b_docs, file=file)  # a baseline checkpoint folder's values come unchecked
        try:
            c_docs = c_docs.aligned_to(b_docs)
        except ValueError as e:
            raise UserError(f"the baseline scored other documents for this entry ({e}): {_REDO}", file=file,
                            field=f"entries[{key}].docs") from None
        tol, where = tolerance_for(key, cur["metric"], rules)
        out.append(decide(key, cur["group"], cur["metric"], cur["higher_is_better"], b_docs, c_docs, tolerance=tol,
                          tolerance_from=where, confidence=config.confidence, resamples=config.resamples,
                          seed=config.seed, interval=config.interval))
    check_compared(out, file=file)
    return out


def check_compared(verdicts: Sequence[Verdict], *, file: str | Path | None) -> None:
    """A gate that compared no entry (all skipped: groups, skip patterns, no per-document values) would
    pass whatever the checkpoint is: refuse it (UserError, exit 2), saying why each entry was skipped."""
    if any(v.status != "skip" for v in verdicts):
        return
    reasons = "; ".join(f"{v.key}: {v.note}" for v in verdicts[:4]) + ("; ..." if len(verdicts) > 4 else "")
    raise UserError(f"the gate compared no entry, so it would pass any checkpoint: all {len(verdicts)} entries were "
                    f"skipped ({reasons or 'the suite has no entries'}); gate at least one entry (gate config "
                    "groups and skip, --skip) or write a new baseline", file=file, field="entries")
