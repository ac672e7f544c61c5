"""Terminal output: progress bars for trials, training steps and evaluation; the end-of-study table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class _Bar:
    """One bar fed by worker progress events: ``{"phase", "total"}`` restarts it, ``{"advance"}`` moves it."""

    def __init__(self, progress: Progress | None, label: str) -> None:
        self.progress, self.label = progress, label
        self.task = progress.add_task(label, total=None) if progress else None

    def update(self, event: dict[str, Any]) -> None:
        if self.progress is None:
            return
        if "phase" in event:
            self.progress.reset(self.task, total=event.get("total"), description=f"{self.label}: {event['phase']}")
        if "advance" in event:
            self.progress.advance(self.task, event["advance"])

    def close(self) -> None:
        if self.progress is not None:
            self.progress.remove_task(self.task)


class Bars:
    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) if enabled else None

    def task(self, label: str) -> _Bar:
        return _Bar(self.progress, label)

    def __enter__(self) -> Bars:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()


def _fmt(x: float | None, spec: str = "+.4f") -> str:
    return "-" if x is None else format(x, spec)


def print_summary(console: Console, study) -> list:  # study: autotune.search.study.Study
    """The study's trials as a table, its noise floor and best feasible trial; returns the trials shown
    (``TrialRecord``s)."""
    ctl = study.controller()
    rows = study.rows(ctl)
    dead = _dead_running(ctl)
    domains = list(study.space.domains)
    table = Table(title=f"study {study.space.name}: target and general are improvements over the base model (base = 0)")
    for col in ("trial", "state", *domains, "schedule", "seed", "target", "general", "feasible", "time"):
        table.add_column(col, justify="left" if col in ("state", "schedule") else "right")
    for r in rows:
        mix = [f"{r.mixture.get(d, 0):.2f}" if r.mixture else "-" for d in domains]
        sched = r.schedule
        kind = f"{sched.get('kind', '-')} {sched['peak_lr']:.1e}" if "peak_lr" in sched else "-"
        if isinstance(study.space.schedule.decay_shape, list) and sched.get("kind") == "wsd":
            kind += f" {sched.get('decay_shape')}"
        ctx = r.context
        if ctx:
            kind += " " + " ".join(f"{'T' if k == 'seq_len' else 'θ'}={v:.3g}" for k, v in sorted(ctx.items()))
        if r.state == "running" and r.number in dead:
            state = "interrupted: its controller is gone (rerun search)"
        elif r.state == "complete" or not (r.status or r.reason):
            state = r.state
        else:
            state = f"{r.status or r.state}: {r.reason[:40]}"
        table.add_row(f"{r.number}{'p' if r.prior else ''}", state, *mix, kind, str(r.seed), _fmt(r.target),
                      _fmt(r.general), {True: "yes", False: "no"}.get(r.feasible, "-"),
                      f"{r.duration_s:.0f}s" if r.duration_s is not None else "-")
    console.print(table)
    console.print("p: the prior mixture (its replicates with other seeds measure the noise); schedule: kind and peak LR"
                  + (" (and searched decay shape, context T and RoPE base θ)" if study.space.context.seq_len or
                     study.space.context.rope_theta or isinstance(study.space.schedule.decay_shape, list) else ""),
                  style="dim")
    done = [r for r in rows if r.complete]
    prior = [r for r in done if r.prior]
    if len(prior) >= 2:
        spread_t = max(r.target for r in prior) - min(r.target for r in prior)
        spread_g = max(r.general for r in prior) - min(r.general for r in prior)
        console.print(f"seed noise (prior mixture, {len(prior)} seeds): target spread {spread_t:.4f}, general spread {spread_g:.4f}")
    noise = {k: v for k, v in study.noise(ctl).items() if k not in ("target", "general")}
    if noise:
        shown = ", ".join(f"{k} {v.std:.4f}" for k, v in list(noise.items())[:10])
        console.print(f"noise floor (seed std per metric over {next(iter(noise.values())).n} prior runs): {shown}",
                      highlight=False)
    feasible = [r for r in done if r.feasible]
    if feasible:
        best = max(feasible, key=lambda r: r.target)
        mix = ", ".join(f"{d} {best.mixture[d]:.2f}" for d in domains)
        console.print(f"best feasible: trial {best.number}: target {best.target:+.4f}, general {best.general:+.4f} "
                      f"({mix}; {best.schedule.get('kind')} peak_lr {best.schedule.get('peak_lr', 0):.2e})",
                      highlight=False)
    elif done:
        console.print("no trial met the general-retention constraint", style="yellow")
    tables = [p for p in (study.paths.root / "ratios.csv", study.paths.root / "metrics.csv") if p.is_file()]
    if tables:  # written at the end of a search: a study that never finished one has none
        console.print(f"tables: {', '.join(map(str, tables))}", highlight=False)
    return rows


def _dead_running(ctl) -> set[int]:
    """Numbers of RUNNING trials whose controller is gone: on this host, its pid has exited; on any host, its
    heartbeat is older than ``search.grace_s`` (RDB storages). Their state in the storage says running until
    a search recovers them, which status must not repeat."""
    dead = {t.number for t in ctl.dead_owner_trials()}
    try:
        from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
        from optuna.trial import TrialState

        if isinstance(ctl.storage, BaseHeartbeat) and is_heartbeat_enabled(ctl.storage):
            stale = set(ctl.storage._get_stale_trial_ids(ctl.study._study_id))
            dead |= {t.number for t in ctl.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                     if t._trial_id in stale}
    except Exception:  # noqa: BLE001  (optuna's private heartbeat API moved: the pid check still holds)
        pass
    return dead
