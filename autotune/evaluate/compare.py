"""Do two backends score a checkpoint alike? ``autotune eval CHECKPOINT --suite S --compare-backends hf,vllm``.

Users meet this (lm-eval #2851 "Significantly different results with different backends", #3150 an HF vs
vLLM gap on gsm8k_cot). The suite runs once per backend; then, per task entry, both values and, document by
document (aligned on lm-eval's ``doc_id``), the differences:

* log-likelihood tasks: every choice's log-probability (largest relative difference, documents beyond
  ``rel_tol``) and the document's metric (documents where it differs, e.g. a flipped ``acc``);
* generation tasks: the generated text (documents where it differs) and the document's metric, for the
  entry's filter.

An entry disagrees when its value differs by more than ``abs_tol``, or any document's metric differs, or
any log-probability differs by more than ``rel_tol``. Generated texts that differ are counted, not flagged:
greedy decoding may part at a near-tie of two tokens and still reach the same answer. Settings that make backends differ on purpose are
named as notes (``dtype: auto``: vLLM downcasts a float32 checkpoint to bfloat16, HF keeps float32).
Held-out bits-per-byte always runs on the HF model, so those entries are not compared.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotune.errors import UserError


@dataclass
class EntryComparison:
    key: str
    task: str
    metric: str
    values: dict[str, float]
    docs: int = 0  # documents scored by both
    metric_differs: int = 0  # documents whose per-document metric differs
    answer_differs: int = 0  # generation: documents whose filtered answer differs
    logprob_differs: int = 0  # log-likelihood: documents with a log-probability beyond rel_tol
    max_rel_logprob: float | None = None
    disagree: bool = False
    why: list[str] = field(default_factory=list)


def _read_samples(folder: Path, rel: str | None) -> dict[tuple[int, str], dict]:
    """A task's logged samples by (doc_id, filter): a generation task logs one per filter (GSM8K: two)."""
    if not rel or not (folder / rel).exists():
        return {}
    rows = [json.loads(line) for line in (folder / rel).read_text(encoding="utf-8").splitlines() if line.strip()]
    return {(int(r["doc_id"]), str(r.get("filter"))): r for r in rows}


def _logprobs(sample: dict) -> list[float] | None:
    """Per-request log-probabilities of a log-likelihood sample (``resps``: [[[logprob, greedy]], ...])."""
    out = []
    for resp in sample.get("resps") or []:
        first = resp[0] if isinstance(resp, list) and resp else None
        if isinstance(first, list) and first and isinstance(first[0], int | float):
            out.append(float(first[0]))
        elif isinstance(first, int | float) and not isinstance(first, bool):
            out.append(float(first))
        else:
            return None
    return out or None


LOGPROB_FLOOR = 1e-3  # relative differences of log-probabilities nearer 0 than this are taken against it


def _same(a: Any, b: Any, rel_tol: float) -> bool:
    """A document's metric on both sides: equal (accuracy, exact match), or within ``rel_tol`` for a
    continuous one (a per-document perplexity or log-probability rounds differently across backends)."""
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int | float) or not isinstance(b, int | float):
        return a == b
    if float(a).is_integer() and float(b).is_integer() and abs(a) <= 1 and abs(b) <= 1:
        return a == b  # 0/1 per-document scores
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)


def _samples_by_entry(meta: dict) -> dict[str, str | None]:
    return {key: task["samples"] for task in meta.get("tasks", {}).values() for key in task["entries"]}


def compare_docs(cmp: EntryComparison, a: dict[tuple[int, str], dict], b: dict[tuple[int, str], dict], metric: str,
                 filt: str, rel_tol: float) -> None:
    worst = 0.0
    seen_logprobs = False
    for (doc_id, f), sa in a.items():
        sb = b.get((doc_id, f))
        if sb is None or f != filt:
            continue
        cmp.docs += 1
        if metric in sa and metric in sb and not _same(sa[metric], sb[metric], rel_tol):
            cmp.metric_differs += 1
        la, lb = _logprobs(sa), _logprobs(sb)
        if la is not None and lb is not None and len(la) == len(lb):
            seen_logprobs = True
            rel = max((abs(x - y) / max(abs(x), LOGPROB_FLOOR) for x, y in zip(la, lb, strict=True)), default=0.0)
            worst = max(worst, rel)
            if rel > rel_tol:
                cmp.logprob_differs += 1
        elif sa.get("resps") != sb.get("resps"):  # a generation: the raw greedy text
            cmp.answer_differs += 1
    cmp.max_rel_logprob = worst if seen_logprobs else None


def dtype_notes(suite, backends: list[str]) -> list[str]:
    notes = []
    dtypes = {b: (suite.hf.dtype if b == "hf" else suite.vllm.dtype) for b in backends}
    if "auto" in dtypes.values() and len(set(backends) & {"hf", "vllm", "vllm-server"}) > 1:
        notes.append(f"dtype auto ({', '.join(f'{b}: {d}' for b, d in dtypes.items())}): vLLM downcasts a float32 "
                     "checkpoint to bfloat16 where HF keeps float32; set hf.dtype and vllm.dtype to the same value "
                     "to compare like with like")
    elif len(set(dtypes.values())) > 1:
        notes.append(f"the backends run different dtypes: {dtypes}")
    if suite.batch_size > 1:
        notes.append("batch size > 1: padded batches (HF) and per-sequence scoring (vLLM) round differently; "
                     "differences near 1e-6 relative are rounding")
    return notes


def compare_backends(checkpoint: Path, suite_path: Path, backends: list[str], *, output: Path | None = None,
                     abs_tol: float = 1e-3, rel_tol: float = 1e-3, space_path: Path | None = None,
                     allow_code_execution: bool = False, no_cache: bool = False) -> dict[str, Any]:
    """Run the suite through each backend; return the comparison (``to_json``-ready). The first backend is
    the reference the others are compared with."""
    from autotune.config.suite import BACKENDS
    from autotune.evaluate.checkpoint import evaluate_checkpoint
    from autotune.evaluate.suite import load_suite

    if len(backends) < 2 or len(set(backends)) != len(backends):
        raise UserError("give two or more different backends, comma-separated (e.g. hf,vllm)",
                        field="--compare-backends", value=",".join(backends))
    for b in backends:
        if b not in BACKENDS:
            raise UserError(f"unknown backend (choose {', '.join(BACKENDS)})", field="--compare-backends", value=b)
    with tempfile.TemporaryDirectory(prefix="autotune-compare-") as tmp:
        root = output or Path(tmp)
        results = {b: evaluate_checkpoint(checkpoint, suite_path, b, root / b, allow_code_execution, space_path, no_cache)
                   for b in backends}
        suite = load_suite(suite_path)
        ref = backends[0]
        rows: list[EntryComparison] = []
        samples = {b: _samples_by_entry(r.meta) for b, r in results.items()}
        for row in results[ref].rows:
            if row["task"].startswith("bpb:"):
                continue
            key = row["key"]
            cmp = EntryComparison(key=key, task=row["task"], metric=row["metric"],
                                  values={b: results[b].metrics[key] for b in backends})
            a = _read_samples(root / ref, samples[ref].get(key))
            for other in backends[1:]:
                b = _read_samples(root / other, samples[other].get(key))
                compare_docs(cmp, a, b, row["metric"], row.get("filter") or "none", rel_tol)
                diff = abs(cmp.values[other] - cmp.values[ref])
                if not math.isfinite(diff) or diff > abs_tol:
                    cmp.why.append(f"{other} - {ref} = {cmp.values[other] - cmp.values[ref]:+.4g}")
            if cmp.docs == 0:
                cmp.why.append("no document could be compared (samples missing on one side)")
            if cmp.metric_differs:
                cmp.why.append(f"{cmp.metric_differs} document(s) score differently")
            if cmp.logprob_differs:
                cmp.why.append(f"{cmp.logprob_differs} document(s) with log-probabilities beyond {rel_tol:g} relative")
            cmp.disagree = bool(cmp.why)
            rows.append(cmp)
    return {"checkpoint": str(Path(checkpoint).resolve()), "suite": str(Path(suite_path).resolve()),
            "backends": backends, "reference": ref, "abs_tol": abs_tol, "rel_tol": rel_tol,
            "agree": not any(r.disagree for r in rows), "notes": dtype_notes(suite, backends),
            "seconds": {b: r.meta["seconds"] for b, r in results.items()},
            "entries": [asdict(r) for r in rows]}
