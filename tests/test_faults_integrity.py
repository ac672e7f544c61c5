"""Integrity under faults (issue 15, findings 4, 12, 13, 16, 17): a killed trial resumes although its train
log's last line is cut; every JSON file a study reads names itself when it is damaged (exit 2, or a recompute
with a warning); a train log with bad bytes does not stop `autotune extrapolate`; a study's space file is found
from any working directory; everything autotune writes follows the user's umask.

Everything runs for real: the CLI in a subprocess on the tiny space, real SIGKILLs, real truncated files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autotune.testing import run_cli, tiny_space, wait_for, write_space
from autotune.testing.studies import SYNTHETIC_SPACE, alive, make_study

pytestmark = pytest.mark.faults


def _cut(path: Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its bytes, as a kill or a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------- 4: train log
def test_truncate_log_drops_a_cut_last_line_and_undecodable_lines(tmp_path):
    """The log of a run killed mid-write: whole lines of steps in the state stay, a cut last line and a line
    of bad bytes are dropped (they raised JSONDecodeError / UnicodeDecodeError and failed the trial)."""
    from autotune.train.state import truncate_log

    log = tmp_path / "train_log.jsonl"
    lines = [json.dumps({"step": s, "lr": 1e-3, "loss": 3.0}).encode() for s in range(6)]
    lines[2] = b'{"step": 2, "lr": 0.001, "loss": 3.\xff\xfe}'
    log.write_bytes(b"\n".join(lines) + b'\n{"step": 6, "lr": 0.0')  # the cut last line
    truncate_log(log, 5)
    kept = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in kept] == [0, 1, 3, 4]


def _worker_pid(folder: Path) -> int | None:
    try:
        return int((folder / "worker.pid").read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_a_sigkilled_trial_with_a_cut_log_line_resumes_and_finishes_ok(tmp_path, finished):
    """A real trial is SIGKILLed (worker and controller) after it saved a train state; its log must hold only
    whole lines (each line is flushed). The log's last line is then cut by hand, as an OOM kill in the middle of
    a write (or a log written before this fix) leaves it; `autotune search` again resumes the trial from its
    state and it finishes ``ok`` with one whole log line per step. Run under umask 022, the study folder then
    holds 0644 files and 0755 folders only. (A copy of ``finished``'s cache: no data or base to build.)"""
    home = tmp_path / "home"
    shutil.copytree(finished / "home", home, symlinks=True)
    name = "killed"
    proxy = {"tokens": 163840, "seq_len": 64, "batch_tokens": 1024, "seed": 0, "save_state_every_s": 0.5}
    space = write_space(tmp_path / "work", tiny_space(name, trials=1, proxy=proxy))
    proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", "search", str(space), "--quiet"], cwd=space.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "AUTOTUNE_HOME": str(home)}, preexec_fn=lambda: os.umask(0o022))
    trials = space.parent / "runs" / name / "trials"

    def state_saved_and_training() -> bool:
        return any((p.parent / "train_state" / "state.pt").exists() and _worker_pid(p.parent)
                   for p in trials.glob("*/train_log.jsonl"))

    try:
        wait_for(state_saved_and_training, timeout=240, proc=proc)
        time.sleep(0.3)  # some steps after the state, not yet in it
        folder = next(p.parent for p in trials.glob("*/train_log.jsonl"))
        worker = _worker_pid(folder)
        os.kill(proc.pid, signal.SIGSTOP)  # no retry by the controller in between
        os.kill(worker, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert wait_until_dead(worker)
    log = folder / "train_log.jsonl"
    raw = log.read_bytes()
    assert raw.endswith(b"\n"), raw[-200:]  # flushed line by line: a kill leaves no half line
    steps = [json.loads(x)["step"] for x in raw.decode().splitlines()]
    assert steps == list(range(len(steps))) and 0 < len(steps) < 160
    log.write_bytes(raw + b'{"step": %d, "lr": 0.00' % len(steps))  # cut mid-line

    resumed = _cli("search", str(space), "--quiet", cwd=space.parent, umask=0o022)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "ok", result
    assert result["train"]["resumed_from"] > 0  # it resumed from the state, not from scratch
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == list(range(160))
    _check_umask(_modes(space.parent / "runs", space.parent / "reports"), 0o022)


def wait_until_dead(pid: int, timeout: float = 30) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


# ----------------------------------------------------------------------------------------------- 12, 17: a finished study
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-trial tiny study and its report, run under umask 002 with a fresh ``AUTOTUNE_HOME``
    (``home/``: tokens, demo tokenizer and base, eval cache), in a folder of its own (copied by each test)."""
    folder = tmp_path_factory.mktemp("finished")
    write_space(folder / "work", tiny_space("fin", trials=1))
    for args in (["search", "space.yaml", "--quiet"], ["report", "runs/fin"]):
        proc = _cli(*args, cwd=folder / "work", umask=0o002)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder


def _cli(*args: str, cwd: Path, umask: int = 0o002) -> subprocess.CompletedProcess:
    """``autotune ARGS`` in ``cwd`` with the ``home/`` beside the study (``finished``) as ``AUTOTUNE_HOME``, under
    umask 002 as the study was made (what it adds to the shared home is checked too)."""
    home = next(p / "home" for p in [cwd, *cwd.parents] if (p / "work").is_dir())
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=400, env={**os.environ, "COLUMNS": "200", "AUTOTUNE_HOME": str(home)},
                          preexec_fn=lambda: os.umask(umask))


def _copy(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished study's working folder beside the shared ``home/``; returns the copy."""
    dest = finished / "copies" / tmp_path.name / "work"
    shutil.copytree(finished / "work", dest, symlinks=True)
    (dest.parent / "home").symlink_to(finished / "home")
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("where", ["space.json", "space.json-bytes"])
def test_a_damaged_space_json_is_named_by_every_command(finished, tmp_path, where):
    cwd = _copy(finished, tmp_path)
    path = cwd / "runs" / "fin" / "space.json"
    if where == "space.json":
        _cut(path)
    else:
        path.write_bytes(b'{"identity": "\xff\xfe"}')
    for args in (["search", "space.yaml", "--quiet"], ["report", "runs/fin"],
                 ["extrapolate", "runs/fin", "--tokens", "1e6"], ["extrapolate", "runs/fin"]):
        proc = _cli(*args, cwd=cwd)
        _no_traceback(proc)
        assert proc.returncode == 2, (args, proc.stdout + proc.stderr)
        assert "space.json" in proc.stderr and "damaged" in proc.stderr, (args, proc.stderr)


@pytest.mark.slow
def test_a_damaged_base_result_is_recomputed_with_a_warning(finished, tmp_path):
    cwd = _copy(finished, tmp_path)
    base = next((cwd / "runs" / "fin" / "base").glob("*/result.json"))
    _cut(base)
    proc = _cli("search", "space.yaml", "--quiet", "--trials", "1", cwd=cwd)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(base) in proc.stdout + proc.stderr and "recomput" in proc.stdout + proc.stderr
    assert json.loads(base.read_text())["status"] == "ok"


@pytest.mark.slow
def test_damaged_trial_result_and_summary_are_named_or_survived(finished, tmp_path):
    cwd = _copy(finished, tmp_path)
    root = cwd / "runs" / "fin"
    trial = next((root / "trials").glob("*/result.json"))
    _cut(trial)
    _cut(root / "summary.json")
    report = _cli("report", "runs/fin", cwd=cwd)
    _no_traceback(report)
    assert report.returncode == 0, report.stdout + report.stderr
    status = _cli("status", "space.yaml", cwd=cwd)
    _no_traceback(status)
    assert status.returncode == 0, status.stdout + status.stderr
    extrapolate = _cli("extrapolate", "runs/fin", "--tokens", "1e6", cwd=cwd)
    _no_traceback(extrapolate)
    assert extrapolate.returncode == 2 and "summary.json" in extrapolate.stderr
    assert "damaged" in extrapolate.stderr, extrapolate.stderr


def test_read_json_names_the_file_and_what_to_do(tmp_path):
    from autotune.errors import UserError
    from autotune.records import read_json, read_result

    path = tmp_path / "x.json"
    path.write_text('{"a": [1, 2')
    with pytest.raises(UserError) as e:
        read_json(path, fix="delete it to recompute")
    assert str(path) in str(e.value) and "delete it to recompute" in str(e.value)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(UserError, match="not UTF-8"):
        read_json(path)
    path.write_text('{"status": "ok", "metr')
    result = read_result(path)  # a worker's damaged result: the run failed, it is not the user's input
    assert result.status == "crashed" and str(path) in result.reason


# ----------------------------------------------------------------------------------------------- 13: bad bytes
def test_extrapolate_skips_a_train_log_line_of_bad_bytes_with_a_warning(tmp_path):
    """Bad bytes where a number should be: the line is skipped, with a warning naming file and line; bad
    bytes inside a string: the line is kept (decoded with U+FFFD). Either way the recipe is written."""
    root = make_study(tmp_path / "runs" / "synthetic", trials=4)
    log = root / "trials" / "t000" / "train_log.jsonl"
    lines = log.read_bytes().split(b"\n")
    lines[5] = b'{"step": 5, "lr": 0.001, "loss": 3.\xff\xfe}'
    lines[6] = lines[6][:-1] + b', "note": "caf\xe9"}'
    log.write_bytes(b"\n".join(lines))
    proc = run_cli("extrapolate", "runs/synthetic", "--tokens", "1e6", cwd=tmp_path)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(log.relative_to(tmp_path)) in proc.stderr and "line 6" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------------------------- 16: source_file
def _synthetic_with_section(tmp_path: Path) -> tuple[Path, Path]:
    """The synthetic study (two trials), its space.json written by the real ``check_space`` from a space file
    (with an ``extrapolate:`` section) loaded by a relative path, as ``autotune search space.yaml`` does."""
    from autotune.config.space import load_space
    from autotune.search.study import StudyPaths, check_space

    project = tmp_path / "project"
    root = make_study(project / "runs" / "synthetic", trials=2)
    (root / "space.json").unlink()
    (project / "suite.yaml").write_text("name: s\ntarget: [{bpb: math}]\n")
    (project / "space.yaml").write_text(yaml.safe_dump({**SYNTHETIC_SPACE, "extrapolate": {"tokens": 2e6}}))
    here = Path.cwd()
    os.chdir(project)
    try:
        check_space(StudyPaths(root), load_space("space.yaml"))
    finally:
        os.chdir(here)
    return project, root


def _extrapolate_found_the_section(proc: subprocess.CompletedProcess) -> None:
    """`extrapolate` without --tokens went past the section (two trials: it stops at the fit, which needs 3);
    without the section it stops before, asking for --tokens."""
    _no_traceback(proc)
    assert "token budget" not in proc.stderr, proc.stderr
    assert proc.returncode == 2 and "needs at least 3 complete trials" in proc.stderr, proc.stderr


def test_extrapolate_from_another_directory_keeps_the_extrapolate_section(tmp_path):
    project, root = _synthetic_with_section(tmp_path)
    assert Path(json.loads((root / "space.json").read_text())["source_file"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _extrapolate_found_the_section(run_cli("extrapolate", str(root), cwd=elsewhere))


def test_an_old_relative_source_file_is_found_beside_the_runs_folder(tmp_path):
    project, root = _synthetic_with_section(tmp_path)
    record = json.loads((root / "space.json").read_text())
    (root / "space.json").write_text(json.dumps({**record, "source_file": "space.yaml"}))  # as older studies
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _extrapolate_found_the_section(run_cli("extrapolate", str(root), cwd=elsewhere))


# ----------------------------------------------------------------------------------------------- 17: permissions
def _modes(*tops: Path) -> dict[Path, int]:
    out = {}
    for top in tops:
        for p in [top, *top.rglob("*")]:
            if not p.is_symlink():
                out[p] = stat.S_IMODE(p.lstat().st_mode)
    return out


def _check_umask(modes: dict[Path, int], umask: int) -> None:
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    bad = {str(p): oct(m) for p, m in modes.items()
           if (m & ~0o111 if p.is_file() else m) != (want_dir if p.is_dir() else want_file)}
    assert not bad, f"not following umask {umask:03o}: {bad}"


@pytest.mark.slow
def test_a_study_its_report_and_its_caches_under_umask_002_are_group_writable(finished):
    """Under umask 002 (a group-shared folder) every file and folder of the study, its report and a fresh
    ``AUTOTUNE_HOME`` is 0664 / 0775 (executables 0775); umask 022 is checked by the SIGKILL test above."""
    work = finished / "work"
    _check_umask(_modes(work / "runs", work / "reports", finished / "home"), 0o002)


# ----------------------------------------------------------------------------------------------- base records
@pytest.mark.slow  # ~14 s: the study's prepare job tokenizes the demo domains first
def test_a_base_with_a_cut_pretrain_log_or_a_damaged_trainer_state(tmp_path, caplog):
    """What a base run ended at (``schedule.start_lr: base``): a cut last line of ``pretrain_log.jsonl`` is
    skipped with a warning naming the file (the last whole line's lr is used); a cut ``trainer_state.json``
    stops the study's prepare job with exit 2 naming the file, no traceback."""
    from autotune.testing import tiny_checkpoint
    from autotune.train.model import base_final_lr

    logged = tmp_path / "logged"
    logged.mkdir()
    (logged / "pretrain_log.jsonl").write_text('{"step": 1, "lr": 0.003}\n{"step": 2, "lr": 0.002}\n{"step": 3, "l')
    assert base_final_lr(logged) == 0.002
    err = "\n".join(r.getMessage() for r in caplog.records if r.name == "autotune.records")  # logged as a warning
    assert str(logged / "pretrain_log.jsonl") in err and "skipped 1 line" in err, err

    base = tmp_path / "base"
    shutil.copytree(tiny_checkpoint(), base)
    (base / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": i, "learning_rate": 1e-3}
                                                                         for i in range(20)]}))
    _cut(base / "trainer_state.json")
    space = write_space(tmp_path / "s", tiny_space("cutstate", trials=1, base_model=str(base)))
    proc = run_cli("search", str(space), "--quiet", cwd=tmp_path / "s")
    _no_traceback(proc)
    assert proc.returncode == 2 and str(base / "trainer_state.json") in proc.stderr, proc.stdout + proc.stderr
