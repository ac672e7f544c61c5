"""Where a source checkout keeps what tests read: the repository, the demo tasks, ../shared/data."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_TASKS = REPO / "evals" / "tasks" / "demo"
SHARED_DATA = REPO.parent / "shared" / "data"
BENCHMARKS = SHARED_DATA / "benchmarks"  # lm-eval benchmark files (GSM8K, ...), read in place
ANCHORS = SHARED_DATA / "anchors"  # published runs, read in place
REGMIX = ANCHORS / "regmix"
MPL = ANCHORS / "multipowerlaw_lr_schedules"
