"""The analysis of ``autotune verify``: the recommended mixture and its baselines, each trained at the
verification budget with several seeds, against what the recipe's models predicted for them.

``autotune.search.verify`` runs the sub-study and writes ``runs/<study>/verify/verify.json`` (the candidates
and where their runs are); ``load_verify`` reads it with each run's scores; ``analyze`` (pure) turns scores and
predictions into the ``Verification`` section of recipe.yaml:

- per candidate and metric: the mean over seeds and the seed spread (sample standard deviation);
- the seed noise per metric: the within-candidate standard deviation pooled over every candidate;
- per baseline and metric: recommendation minus baseline, paired over seeds (the mean of the per-seed
  differences, oriented so that positive is better), tested one-sided against the seed noise: se =
  sd * sqrt(2 / n), sd pooled over every verified mixture (df = the sum of n - 1); ``better`` / ``worse``
  when the p-value is below ``alpha``, else ``within noise``; a zero seed noise tests nothing;
- the candidates ranked by the study's objective (feasible first: mean general at the objective's floor);
- predicted vs realised: the recipe's models predict proxy-scale scores (``proxy.tokens``), so an interval
  is checked against realised values only when the verification runs at that scale (``tokens_factor: 1``);
  at other scales the section says so, and gives the rank agreement (Spearman) between the predicted and the
  realised means, which does not need the scales to match.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import Field

from autotune.config.base import Frozen as _Frozen
from autotune.config.identity import proposal_key as run_key
from autotune.errors import UserError
from autotune.extrapolate.ladder import higher_is_better
from autotune.records import FIX_SUMMARY, read_json

VERIFY_DIR = "verify"
VERIFY_MANIFEST = f"{VERIFY_DIR}/verify.json"
GROUPS = ("target", "general")
Kind = Literal["recommended", "prior", "best_trial", "uniform", "natural", "target_only"]
KINDS = get_args(Kind)


class Predicted(_Frozen):
    """The recipe's model at this candidate's mixture and peak LR: a proxy-scale score with its interval."""

    value: float
    low: float | None
    high: float | None
    level: float


class Candidate(_Frozen):
    """One verified mixture: its runs' scores per seed and their summary."""

    label: str
    kind: Kind
    trial: int | None = Field(None, description="the study trial it repeats (prior, best_trial)")
    mixture: dict[str, float]
    schedule: dict[str, Any]
    inside_space: bool = Field(description="inside the space's bounds and floors (outside, the models extrapolate)")
    seeds: list[int]
    values: dict[str, list[float | None]] = Field(description="per metric, per seed (None: the run failed)")
    mean: dict[str, float | None]
    spread: dict[str, float | None] = Field(description="per metric, the sample standard deviation over seeds")
    feasible: bool | None = Field(description="mean general at or above the objective's floor (None: no floor)")
    predicted: dict[str, Predicted] = Field(description="'target' and 'general' at proxy scale")


class Comparison(_Frozen):
    """Recommendation minus one baseline on one metric, paired over seeds (positive: the recommendation is better)."""

    baseline: str
    metric: str
    seeds: int = Field(description="seeds both have a value for")
    diff: float | None = Field(description="mean over seeds of the oriented difference")
    se: float | None
    t: float | None
    df: int
    p_better: float | None = Field(description="one-sided p-value of 'the recommendation is better'")
    verdict: Literal["better", "worse", "within noise", "not tested"]


class Verification(_Frozen):
    """recipe.yaml's ``verification``: the recommendation against baselines at the verification budget."""

    tokens: int = Field(description="tokens per verification run")
    proxy_tokens: int = Field(description="tokens per proxy run of the study (the scale of every prediction)")
    scale: str = Field(description="the realised values' scale label")
    predicted_scale: str = Field(description="the predictions' scale label")
    seeds: list[int]
    alpha: float
    objective: str = Field(description="how the candidates are ranked")
    candidates: list[Candidate]
    seed_noise: dict[str, float | None] = Field(description="per metric: within-candidate seed std, pooled")
    comparisons: list[Comparison]
    ranking: list[str] = Field(description="labels, best first by the objective")
    rank: int | None = Field(description="the recommendation's place in ranking (1: best)")
    wins: bool = Field(description="the recommendation is feasible (or unconstrained) and better than every baseline "
                                   "on the maximised score beyond the seed noise")
    rank_agreement: dict[str, float | None] = Field(
        description="per group: Spearman rho between predicted and realised means over the candidates")
    coverage: dict[str, Any] | None = Field(description="realised values inside the predicted intervals; None when "
                                                        "the scales differ (the intervals are of proxy-scale scores)")
    summary: str
    directory: str = Field(description="the verification sub-study, relative to the study folder")


@dataclass(frozen=True)
class VerifyData:
    """``verify.json`` with each candidate's scores per seed (``values[label][metric]``: a list over seeds)."""

    manifest: dict[str, Any]
    values: dict[str, dict[str, list[float | None]]]


def load_verify(study_dir: str | Path) -> VerifyData | None:
    """``runs/<study>/verify/verify.json`` and its sub-study's scores, or None when the study has none."""
    root = Path(study_dir)
    path = root / VERIFY_MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path, fix="rerun autotune verify to rewrite it")
    try:
        seeds = [int(s) for s in manifest["seeds"]]
        int(manifest["tokens"]), int(manifest["proxy_tokens"])
        cands = list(manifest["candidates"])
        for c in cands:
            shares = {str(d): float(w) for d, w in dict(c["mixture"]).items()}
            if c["kind"] not in KINDS or not str(c["label"]) or not float(c["schedule"]["peak_lr"]) > 0 or not shares:
                raise ValueError(f"candidate {c.get('label')!r}: a kind, a label, shares and a positive peak_lr")
        sub = root / str(manifest["dir"])
        keys = {c["label"]: [run_key(c["mixture"], c["schedule"], s, c.get("context") or None) for s in seeds]
                for c in cands}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"verify.json is malformed ({type(e).__name__}: {e}); rerun autotune verify", file=path) from None
    summary_path = sub / "summary.json"
    rows = []
    if summary_path.exists():
        summary = read_json(summary_path, fix=FIX_SUMMARY)
        rows = summary.get("trials") or [] if isinstance(summary, dict) else []
    found: dict[str, dict] = {}
    for row in rows:
        if isinstance(row, dict) and row.get("state") == "complete" and row.get("mixture"):
            key = run_key(row["mixture"], row.get("schedule") or {}, row.get("seed"), row.get("context") or None)
            found.setdefault(_k(key), row)
    values: dict[str, dict[str, list[float | None]]] = {}
    for c in cands:
        per: dict[str, list[float | None]] = {}
        hits = [found.get(_k(k)) for k in keys[c["label"]]]
        names = sorted({m for h in hits if h for m in (h.get("metrics") or {})})
        for metric in [*GROUPS, *names]:
            per[metric] = [_value(h, metric) for h in hits]
        values[c["label"]] = per
    return VerifyData(manifest, values)


def _k(key: dict) -> str:
    import json

    return json.dumps(key, sort_keys=True)


def _value(row: dict | None, metric: str) -> float | None:
    if row is None:
        return None
    v = row.get(metric) if metric in GROUPS else (row.get("metrics") or {}).get(metric)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


# ----------------------------------------------------------------------------------------------- statistics
def _mean(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else None


def _sd(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.std(v, ddof=1)) if len(v) >= 2 else None


def pooled_sd(groups: list[list[float | None]]) -> tuple[float | None, int]:
    """The within-group standard deviation pooled over ``groups`` (None values dropped), and its df."""
    ss, df = 0.0, 0
    for g in groups:
        v = np.array([x for x in g if x is not None], dtype=float)
        if len(v) >= 2:
            ss += float(np.sum((v - v.mean()) ** 2))
            df += len(v) - 1
    return (math.sqrt(ss / df) if df else None), df


def paired_tests(rec: list[float | None], baselines: dict[str, list[float | None]], *, higher: bool,
                 alpha: float, metric: str, noise: tuple[float | None, int]) -> list[Comparison]:
    """Recommendation minus each baseline, paired over seeds (the mean of the per-seed differences), against
    the seed noise ``noise`` = (sd, df): the within-mixture standard deviation pooled over every verified
    mixture (``pooled_sd``; independent sums of squares, df = the sum of n - 1). The difference of two
    independent runs has variance 2 sd^2, so se = sd * sqrt(2 / n); one-sided t tests in the direction of
    'better'. A zero or unknown seed noise tests nothing (a verdict would be certain by construction)."""
    from scipy import stats

    sign = 1.0 if higher else -1.0
    sd, df = noise
    out = []
    for b, vals in baselines.items():
        d = [sign * (r - v) for r, v in zip(rec, vals, strict=True) if r is not None and v is not None]
        mean = float(np.mean(d)) if d else None
        if not d or sd is None or sd <= 0 or df == 0:
            out.append(Comparison(baseline=b, metric=metric, seeds=len(d), diff=mean, se=None, t=None, df=df,
                                  p_better=None, verdict="not tested"))
            continue
        se = sd * math.sqrt(2.0 / len(d))
        t = mean / se
        p = float(stats.t.sf(t, df))
        verdict = "better" if p < alpha else "worse" if 1 - p < alpha else "within noise"
        out.append(Comparison(baseline=b, metric=metric, seeds=len(d), diff=mean, se=se, t=t, df=df, p_better=p,
                              verdict=verdict))
    return out


def _spearman(a: list[float | None], b: list[float | None]) -> float | None:
    from scipy import stats

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    x, y = zip(*pairs, strict=True)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rho = stats.spearmanr(x, y).statistic
    return float(rho) if math.isfinite(rho) else None


# ----------------------------------------------------------------------------------------------- analysis
def analyze(data: VerifyData, predicted: dict[str, dict[str, Any]], *, maximize: str, floor: float | None,
            inside_space: dict[str, bool], alpha: float | None = None) -> Verification:
    """The ``Verification`` section from the runs' scores and the models' predictions (``predicted[label]``:
    {'target': Prediction-like, 'general': ...} with value/low/high/level).

    ``maximize``: the score the study maximises; ``floor``: the general score's floor (None: unconstrained)."""
    m = data.manifest
    alpha = float(m.get("alpha", 0.05) if alpha is None else alpha)
    seeds = [int(s) for s in m["seeds"]]
    cands = list(m["candidates"])
    rec = next((c for c in cands if c["kind"] == "recommended"), None)
    if rec is None:
        raise UserError("verify.json has no recommended mixture; rerun autotune verify", file=VERIFY_MANIFEST)
    metrics = [*GROUPS, *sorted({k for v in data.values.values() for k in v} - set(GROUPS))]
    out_cands = []
    for c in cands:
        vals = data.values.get(c["label"], {})
        mean = {k: _mean(vals.get(k, [])) for k in metrics}
        feasible = None if floor is None or mean.get("general") is None else bool(mean["general"] >= floor - 1e-12)
        pred = {g: Predicted(value=p["value"], low=p.get("low"), high=p.get("high"), level=p.get("level", 0.9))
                for g, p in (predicted.get(c["label"]) or {}).items()}
        out_cands.append(Candidate(label=c["label"], kind=c["kind"], trial=c.get("trial"), mixture=c["mixture"],
                                   schedule=c["schedule"], inside_space=inside_space.get(c["label"], True),
                                   seeds=seeds, values={k: list(vals.get(k, [None] * len(seeds))) for k in metrics},
                                   mean=mean, spread={k: _sd(vals.get(k, [])) for k in metrics}, feasible=feasible,
                                   predicted=pred))
    pooled = {k: pooled_sd([c.values[k] for c in out_cands]) for k in metrics}
    noise = {k: v[0] for k, v in pooled.items()}
    comparisons = []
    by_label = {c.label: c for c in out_cands}
    r = by_label[rec["label"]]
    others = {c.label: c for c in out_cands if c.label != r.label}
    for k in metrics:
        higher = True if k in GROUPS else higher_is_better(k)
        comparisons += paired_tests(r.values[k], {b: c.values[k] for b, c in others.items()}, higher=higher,
                                    alpha=alpha, metric=k, noise=pooled[k])

    def order(c: Candidate) -> tuple:
        v = c.mean.get(maximize)
        return (c.feasible is not False, v is not None, v if v is not None else -math.inf)

    ranking = [c.label for c in sorted(out_cands, key=order, reverse=True)]
    rank = ranking.index(r.label) + 1 if r.mean.get(maximize) is not None else None
    on_max = [c for c in comparisons if c.metric == maximize]
    wins = bool(on_max) and all(c.verdict == "better" for c in on_max) and r.feasible is not False
    agreement = {g: _spearman([c.predicted[g].value if g in c.predicted else None for c in out_cands],
                              [c.mean.get(g) for c in out_cands]) for g in GROUPS}
    tokens, proxy_tokens = int(m["tokens"]), int(m["proxy_tokens"])
    coverage = _coverage(out_cands) if tokens == proxy_tokens else None
    from autotune.extrapolate.recipe_model import scale_label, tokens_text

    verdicts = {c.baseline: c.verdict for c in on_max}
    beaten = [b for b, v in verdicts.items() if v == "better"]
    lost = [b for b, v in verdicts.items() if v == "worse"]
    place = (f"ranks {rank} of {len(out_cands)} on {maximize}" if rank is not None else
             "is not ranked: it has no complete run")
    summary = (f"at {tokens_text(tokens)} tokens, {len(seeds)} seeds: the recommendation {place}"
               + (" (infeasible: mean general below the floor)" if r.feasible is False else "")
               + f"; better beyond the seed noise than {len(beaten)} of {len(verdicts)} baselines"
               + (f" ({', '.join(beaten)})" if beaten else "")
               + (f", worse than {', '.join(lost)}" if lost else ""))
    return Verification(
        tokens=tokens, proxy_tokens=proxy_tokens, scale=f"at {tokens_text(tokens)} tokens per run "
        f"({tokens / proxy_tokens:.3g}x the proxy)", predicted_scale=scale_label("proxy", proxy_tokens), seeds=seeds,
        alpha=alpha, objective=f"mean {maximize} over seeds" + (f", feasible first (general >= {floor:g})"
                                                                 if floor is not None else ""),
        candidates=out_cands, seed_noise=noise, comparisons=comparisons, ranking=ranking, rank=rank, wins=wins,
        rank_agreement=agreement, coverage=coverage, summary=summary, directory=str(m["dir"]))


def _coverage(cands: list[Candidate]) -> dict[str, Any]:
    """Realised values (each seed) inside the predicted interval, per group."""
    out: dict[str, Any] = {}
    for g in GROUPS:
        inside = n = 0
        for c in cands:
            p = c.predicted.get(g)
            if p is None or p.low is None or p.high is None:
                continue
            for v in c.values.get(g, []):
                if v is not None:
                    n += 1
                    inside += int(p.low <= v <= p.high)
        out[g] = {"inside": inside, "n": n, "level": next((c.predicted[g].level for c in cands if g in c.predicted),
                                                          0.9)}
    return out


def section_for(study_dir: str | Path, space, mixture: dict[str, float], schedule: dict[str, Any],
                predict: Callable[[list[tuple[dict[str, float], float]]], list[dict[str, Any]]]
                ) -> tuple[Verification | None, list[str]]:
    """The ``Verification`` of the study at ``study_dir`` when its verify.json verified ``mixture`` (the
    recipe's shares) with ``schedule``'s kind and peak LR, with ``predict`` giving the recipe's models'
    predictions at each candidate's mixture and peak LR; (None, [a warning]) when it verified another
    recommendation; (None, []) without verify.json."""
    data = load_verify(study_dir)
    if data is None:
        return None, []
    rec = next((c for c in data.manifest.get("candidates", []) if c.get("kind") == "recommended"), None)
    verified = (rec or {}).get("requested_mixture") or (rec or {}).get("mixture") or {}
    sched = (rec or {}).get("schedule") or {}
    same = (set(verified) == set(mixture) and all(abs(float(verified[d]) - float(mixture[d])) <= 1e-6 for d in mixture)
            and sched.get("kind") == schedule.get("kind")
            and math.isclose(float(sched.get("peak_lr") or 0), float(schedule.get("peak_lr") or 0), rel_tol=1e-9))
    if not same:
        return None, [f"verify.json verified another recommendation ({_shares(verified)}; {sched.get('kind')}, peak "
                      f"LR {sched.get('peak_lr')}) than this recipe's ({_shares(mixture)}; {schedule.get('kind')}, "
                      f"peak LR {schedule.get('peak_lr')}); run autotune verify again"]
    cands = data.manifest["candidates"]
    preds = predict([(c["mixture"], float(c["schedule"]["peak_lr"])) for c in cands])
    predicted = {c["label"]: {g: (p.model_dump() if hasattr(p, "model_dump") else dict(p)) for g, p in pr.items()}
                 for c, pr in zip(cands, preds, strict=True)}
    inside = {}
    for c in cands:
        try:
            space.check_mixture(c["mixture"], c["label"])
            inside[c["label"]] = True
        except ValueError:
            inside[c["label"]] = False
    objective = space.objective
    maximize = objective.maximize or "target"
    floor = 0.0 if objective.pareto else objective.general_floor
    return analyze(data, predicted, maximize=maximize, floor=floor if maximize == "target" else None,
                   inside_space=inside), []


def _shares(m: dict[str, Any]) -> str:
    return ", ".join(f"{d} {float(v):.3f}" for d, v in m.items())
