"""Faults in what reads a study or a baseline (issue 15, findings 6, 7, 10 and 17's status cosmetics), each
against the real part: a baseline written by the real ``autotune gate --write-baseline`` and then damaged;
a real tiny study on SQLite continued on the real PostgreSQL server; real loss curves that overflow the
Multi-Power Law's starts; a real controller process that died with its trial running."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from autotune.testing import DEMO_TASKS, run_cli, set_offline, tiny_space, write_space
from autotune.testing.studies import make_study, tiny_checkpoint

set_offline()
PG_URL = os.environ.get("AUTOTUNE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def _pg_or_skip() -> None:
    try:
        import psycopg2

        psycopg2.connect(PG_URL.replace("+psycopg2", ""), connect_timeout=3).close()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} ({type(e).__name__}); .ci/run starts the local server")


# ----------------------------------------------------------------------------------------------- gate (finding 6)
GATE_SUITE = {"name": "faults-gate", "batch_size": 16, "task_dirs": [str(DEMO_TASKS)],
              "target": [{"task": "demo_math_mc", "metric": "acc", "limit": 20}],
              "general": [{"task": "demo_prose_next_word", "metric": "acc", "limit": 20}]}


def _gate(*args) -> SimpleNamespace:
    from autotune.cli import app

    r = CliRunner().invoke(app, ["gate", *map(str, args)])
    return SimpleNamespace(code=r.exit_code, out=r.output)


@pytest.fixture(scope="module")
def gate_env(tmp_path_factory):
    """The tiny checkpoint, a two-entry suite and its baseline, written by the real command."""
    folder = tmp_path_factory.mktemp("gate")
    suite = folder / "suite.yaml"
    suite.write_text(yaml.safe_dump(GATE_SUITE, sort_keys=False))
    ckpt = tiny_checkpoint()
    baseline = folder / "baseline.json"
    r = _gate(ckpt, "--suite", suite, "--write-baseline", baseline)
    assert r.code == 0, r.out
    return SimpleNamespace(ckpt=ckpt, suite=suite, baseline=baseline, folder=folder)


def _damaged(env, name: str, damage) -> Path:
    doc = json.loads(env.baseline.read_text())
    damage(doc["entries"])
    path = env.folder / name
    path.write_text(json.dumps(doc))  # json writes NaN as NaN, as a tampered or diverged baseline has it
    return path


def _one_error_line(r: SimpleNamespace) -> str:
    lines = [x for x in r.out.splitlines() if x.strip()]
    assert lines and lines[-1].startswith("error:") and "Traceback" not in r.out, r.out
    return lines[-1]


@pytest.mark.faults
def test_gate_refuses_a_baseline_whose_per_document_values_are_nan(gate_env):
    """Before: every entry `skip`, `PASS passed: 0 entries`, exit 0: a damaged baseline turned the gate off."""
    def all_nan(entries):
        for e in entries.values():
            e["docs"]["num"] = [math.nan] * len(e["docs"]["num"])

    bad = _damaged(gate_env, "nan.json", all_nan)
    r = _gate(gate_env.ckpt, "--suite", gate_env.suite, "--baseline", bad)
    assert r.code == 2, r.out
    line = _one_error_line(r)
    assert str(bad) in line and "entries[demo_math_mc/acc].docs" in line and "not finite" in line, line
    assert "PASS" not in r.out


@pytest.mark.faults
def test_gate_refuses_a_baseline_with_one_nan_document_in_one_entry(gate_env):
    """Partly damaged: one document of the second entry; the first entry would still be compared, the
    second silently skipped. The whole baseline is refused, naming that entry."""
    def one_nan(entries):
        entries["demo_prose_next_word/acc"]["docs"]["num"][3] = math.nan

    bad = _damaged(gate_env, "one-nan.json", one_nan)
    r = _gate(gate_env.ckpt, "--suite", gate_env.suite, "--baseline", bad)
    assert r.code == 2, r.out
    line = _one_error_line(r)
    assert "entries[demo_prose_next_word/acc].docs" in line and "1 of 20" in line, line


@pytest.mark.faults
def test_gate_that_compares_no_entry_fails(gate_env, tmp_path):
    """Every entry skipped (here by --skip patterns: the real command, a real baseline) compares nothing: a
    clear error, exit 2, never a pass."""
    r = _gate(gate_env.ckpt, "--suite", gate_env.suite, "--baseline", gate_env.baseline,
              "--skip", "demo_math_mc/*", "--skip", "demo_prose_next_word/*", "-o", tmp_path / "out")
    assert r.code == 2, r.out
    line = _one_error_line(r)
    assert "compared no entry" in line and "skipped by pattern" in line, line
    # one entry left: compared, passes against its own baseline
    r = _gate(gate_env.ckpt, "--suite", gate_env.suite, "--baseline", gate_env.baseline, "--skip", "demo_math_mc/*")
    assert r.code == 0 and "passed: 1 entries" in r.out, r.out


def test_compare_refuses_non_finite_baseline_values_from_a_baseline_checkpoint():
    """A baseline checkpoint folder is evaluated, not read from a file: its NaN values (a diverged baseline
    model) are refused the same way, naming the entry, instead of a `skip`."""
    from autotune.config.gate import GateConfig
    from autotune.errors import UserError
    from autotune.gate.compare import DocValues, compare

    good = DocValues(tuple("0123"), np.array([1.0, 0.0, 1.0, 1.0]), np.ones(4))
    bad = DocValues(tuple("0123"), np.array([1.0, math.nan, 1.0, 1.0]), np.ones(4))

    def snap(d):
        return {"entries": {"t/acc": {"group": "target", "metric": "acc", "higher_is_better": True, "value": 0.75,
                                      "docs": d.to_json(), "not_gateable": None}}}

    with pytest.raises(UserError, match=r"entries\[t/acc\]\.docs.*1 of 4") as e:
        compare(snap(bad), snap(good), GateConfig(), [], file="ckpt/base")
    assert "ckpt/base" in str(e.value)


# ----------------------------------------------------------------------------------------------- schedule (finding 10)
def _overflowing_curves(n_curves: int = 2) -> list:
    """Loss curves that jump between 50 and 2 at a peak LR of 1e-4 (a run that diverges and recovers): the
    simplified law's L-BFGS-B starts step to exponents above 709. Found by a search over random curves."""
    from autotune.extrapolate.schedule import LossCurve, schedule_lrs

    steps = np.arange(1, 20)
    return [LossCurve(schedule_lrs(("wsd", "cosine")[i % 2], 20, 1e-4, 0.05, 0.3, 0.0), steps,
                      np.where(steps % 2 == 0, 50.0, 2.0)) for i in range(n_curves)]


@pytest.mark.slow
def test_schedule_fit_on_overflowing_curves_raises_no_overflow_error():
    """Before: OverflowError: math range error (``math.exp`` in the simplified law's objective)."""
    from autotune.extrapolate.schedule import MultiPowerLaw, fit_multi_power_law

    try:
        law = fit_multi_power_law(_overflowing_curves(), max_nfev=20)
    except ValueError as e:  # the documented failure: the recipe falls back to the best trial's schedule
        assert "fit failed" in str(e)
    else:
        assert isinstance(law, MultiPowerLaw) and all(math.isfinite(v) for v in law.params().values())


def _overflowing_logs(root: Path) -> None:
    for i, d in enumerate(sorted((root / "trials").iterdir())):
        curve = _overflowing_curves(i + 1)[i]
        rows = [{"step": 0, "lr": float(curve.lrs[0]), "loss": 50.0, "tokens": 1024}]
        rows += [{"step": int(s), "lr": float(curve.lrs[s]), "loss": float(v), "tokens": int(s + 1) * 1024}
                 for s, v in zip(curve.steps, curve.loss, strict=True)]
        (d / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
@pytest.mark.faults
def test_extrapolate_with_overflowing_loss_curves_writes_a_recipe(tmp_path):
    """Before: `autotune extrapolate` ended in an OverflowError traceback (exit 1), no recipe."""
    root = make_study(tmp_path / "study", trials=4, failed=0)
    _overflowing_logs(root)
    r = run_cli("extrapolate", str(root), "--tokens", "1e6", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and (root / "recipe.yaml").is_file()


# ----------------------------------------------------------------------------------------------- a moved study (7, 10)
@pytest.fixture(scope="module")
def moved_study(tmp_path_factory):
    """A real tiny study: 2 trials on SQLite (runs/<name>/study.db), then continued on PostgreSQL with one
    more trial (the 2 finished runs are reused from their folders) and a recipe at the end."""
    _pg_or_skip()
    cwd = tmp_path_factory.mktemp("moved")
    name = f"moved_{uuid.uuid4().hex[:8]}"
    space = write_space(cwd, tiny_space(name, trials=2))
    r = run_cli("search", str(space), "--quiet", cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    more = ("--quiet", "--trials", "3", "--storage", PG_URL, "--set", "extrapolate.tokens=1e6")
    r = run_cli("search", str(space), *more, cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return SimpleNamespace(cwd=cwd, name=name, space=space, root=cwd / "runs" / name, more=more)


@pytest.mark.slow
@pytest.mark.faults
def test_report_after_the_storage_moved_shows_every_trial_and_says_its_source(moved_study):
    """Before: the report read the old study.db: 2 trials shown, 3 in summary.json, no word about it."""
    from autotune.report.load import load_study_data

    root = moved_study.root
    assert len(json.loads((root / "summary.json").read_text())["trials"]) == 3
    data = load_study_data(root)
    assert sorted(t.number for t in data.trials) == [0, 1, 2]
    assert data.trials_source == "summary.json"
    said = " ".join(data.notes)
    assert "postgresql" in said and "study.db" in said, data.notes
    r = run_cli("report", str(root), "-o", str(moved_study.cwd / "rep"), cwd=moved_study.cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (moved_study.cwd / "rep" / "index.html").read_text()
    assert "trial 2" in page and "summary.json" in page

    # a summary.json from before summaries recorded their storage: the disagreement itself is noticed
    from autotune.records import load_trials

    old = moved_study.cwd / "old-format" / moved_study.name
    shutil.copytree(root, old)  # copy2: study.db stays older than summary.json
    summary = json.loads((old / "summary.json").read_text())
    del summary["storage"]
    stamp = (old / "summary.json").stat()
    (old / "summary.json").write_text(json.dumps(summary))
    os.utime(old / "summary.json", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    loaded = load_trials(old)
    assert loaded.source == "summary.json" and [t.number for t in loaded.records] == [0, 1, 2]
    assert "disagree" in " ".join(loaded.notes), loaded.notes
    # study.db written after summary.json (a later search on SQLite, still running): study.db is read
    os.utime(old / "study.db")
    assert load_trials(old).source == "study.db"


@pytest.mark.slow
@pytest.mark.faults
def test_search_writes_its_report_when_the_recipe_step_fails(moved_study):
    """The recipe step at the end of a search fails with an error that is no UserError (here a real one:
    recipe.yaml is a folder, so writing it raises IsADirectoryError; before the schedule fix, the
    OverflowError of finding 10 did the same): the search still exits 0, writes its report and says the
    recipe failed. Before: exit 1 with a traceback after the trials, no report."""
    root = moved_study.root
    report = moved_study.cwd / "reports" / moved_study.name / "index.html"
    report.unlink(missing_ok=True)
    (root / "recipe.yaml").unlink(missing_ok=True)
    (root / "recipe.yaml").mkdir()
    try:
        r = run_cli("search", str(moved_study.space), *moved_study.more, cwd=moved_study.cwd, timeout=600)
    finally:
        (root / "recipe.yaml").rmdir()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "recipe.yaml was not written" in r.stderr and "IsADirectoryError" in r.stderr, r.stderr
    assert report.is_file()


# ----------------------------------------------------------------------------------------------- status (17)
_DEAD_CONTROLLER = """
import sys, time
from pathlib import Path
from autotune.config.space import load_space
from autotune.search.controller import Controller
from autotune.search.study import StudyPaths, check_space, study_dir
space = load_space(sys.argv[1])
root = study_dir(space)
check_space(StudyPaths(root), space)
ctl = Controller(space, root)
asked = ctl.ask()
with ctl.heartbeat(asked.trial):
    time.sleep(0.2)
print(asked.number, flush=True)
"""


@pytest.mark.faults
@pytest.mark.parametrize("host", ["here", "elsewhere"])
def test_status_shows_a_dead_controllers_trial_as_interrupted_and_no_missing_tables(tmp_path, host):
    """A real controller process asks a trial (owner, heartbeat in the real SQLite storage) and exits
    without telling it. ``here``: its pid is gone on this host; ``elsewhere``: another host's controller
    (AUTOTUNE_HOST), known dead only by its stale heartbeat. Before: `running`, and a `tables:` line naming
    ratios.csv and metrics.csv, which no search had written."""
    space = write_space(tmp_path, tiny_space("deadctl", search={"sampler": "tpe", "trials": 2, "storage": "sqlite",
                                                                 "heartbeat_s": 1, "grace_s": 2}))
    env = {**os.environ, **({"AUTOTUNE_HOST": "other-machine"} if host == "elsewhere" else {})}
    out = subprocess.run([sys.executable, "-c", _DEAD_CONTROLLER, str(space)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=env, check=True).stdout
    assert out.strip() == "0"
    if host == "elsewhere":
        import time

        time.sleep(2.5)  # past grace_s
    r = run_cli("status", str(space), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    row = next(line for line in r.stdout.splitlines() if line.strip().startswith("│") and " 0 " in line)
    assert "running" not in row and "interrupted" in row, r.stdout
    assert "tables:" not in r.stdout and "ratios.csv" not in r.stdout
