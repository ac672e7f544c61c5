"""Export a study's trials as tables: ``trials`` (every trial: state, params, values, duration, reason),
``ratios`` + ``metrics`` (finished trials, one row each, the layout OLMix reads). CSV or parquet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from autotune.errors import UserError


def trial_frames(study, ctl=None) -> dict[str, pd.DataFrame]:  # study: autotune.search.study.Study
    rows = study.rows(ctl or study.controller())
    domains = list(study.space.domains)
    keys = [e.key for e in study.suite.entries]
    trials = []
    for t in rows:
        row = {"trial": t.number, "state": t.state, "status": t.status, "reason": t.reason, "duration_s": t.duration_s,
               "seed": t.seed, "prior": t.prior, "retry_of": t.retry_of, "target": t.target, "general": t.general,
               "feasible": t.feasible, "run": t.run_dir.split("/")[-1]}
        row.update({f"mix.{d}": t.mixture.get(d) for d in domains})
        row.update({f"schedule.{k}": v for k, v in t.schedule.items()})
        row.update({k: t.metrics.get(k) for k in keys})
        trials.append(row)
    df = pd.DataFrame(trials)
    done = df[df["state"] == "complete"] if len(df) else df
    ratios = done[["run", "trial", *[f"mix.{d}" for d in domains]]].rename(columns={f"mix.{d}": d for d in domains}) \
        if len(done) else pd.DataFrame(columns=["run", "trial", *domains])
    metrics = done[["run", "trial", *keys, "target", "general", "feasible"]] if len(done) else \
        pd.DataFrame(columns=["run", "trial", *keys, "target", "general", "feasible"])
    return {"trials": df, "ratios": ratios, "metrics": metrics}


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
