"""Export a study's trials as tables: ``trials`` (every trial: state, shares ``share.<domain>``, schedule,
values, duration, reason), ``ratios`` + ``metrics`` (finished runs, one row each, the layout OLMix's
``olmix fit --from-csv`` reads). CSV or parquet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from autotune.errors import UserError
from autotune.records import Attr

# OLMix's CSV loader (olmix/fit/loaders.py, load_from_csv) joins ratios.csv and metrics.csv on ``run_id``, shows
# ``name``, and takes every other column as a domain weight (rows summing to 1) or a metric to fit (a number;
# a row with any NaN is dropped), so the tables hold only those: trials.csv has the rest.
OLMIX_ID = ["run_id", "name"]


def trial_frames(study, ctl=None) -> dict[str, pd.DataFrame]:  # study: autotune.search.study.Study
    rows = study.rows(ctl or study.controller())
    domains = list(study.space.domains)
    shares = [Attr.share(d) for d in domains]
    keys = [e.key for e in study.suite.entries]
    trials = []
    for t in rows:
        row = {"trial": t.number, "state": t.state, "status": t.status, "reason": t.reason, "duration_s": t.duration_s,
               "seed": t.seed, "prior": t.prior, "retry_of": t.retry_of, "target": t.target, "general": t.general,
               "feasible": t.feasible, "run": t.run_dir.split("/")[-1]}
        row.update({Attr.share(d): t.mixture.get(d) for d in domains})
        row.update({f"schedule.{k}": v for k, v in t.schedule.items()})
        row.update({k: t.metrics.get(k) for k in keys})
        trials.append(row)
    df = pd.DataFrame(trials)
    if len(df):
        # one row per run: a duplicate proposal's trial was answered from the earlier run (the same measurement)
        done = df[df["state"] == "complete"].copy()
        done["run_id"] = [r or f"trial-{n}" for r, n in zip(done["run"], done["trial"], strict=True)]
        done["name"] = [f"trial-{n}" for n in done["trial"]]
        done = done.drop_duplicates("run_id")
        ratios = done[[*OLMIX_ID, *shares]].rename(columns=dict(zip(shares, domains, strict=True)))
        metrics = done[[*OLMIX_ID, *keys, "target", "general"]]
    else:
        ratios = pd.DataFrame(columns=[*OLMIX_ID, *domains])
        metrics = pd.DataFrame(columns=[*OLMIX_ID, *keys, "target", "general"])
    return {"trials": df, "ratios": ratios.reset_index(drop=True), "metrics": metrics.reset_index(drop=True)}


def export(study, out_dir: Path, fmt: str = "csv") -> list[Path]:
    if fmt not in ("csv", "parquet"):
        raise UserError("format must be csv or parquet", field="--format", value=fmt)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in trial_frames(study).items():
        path = out_dir / f"{name}.{fmt}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        tmp.replace(path)
        written.append(path)
    return written
