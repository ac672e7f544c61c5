"""The Python API (``import autotune``): a notebook loads a space, runs or resumes a study, reads its trials
as pandas, evaluates, extrapolates and reports; the library logs (``logging``) instead of printing, and
leaves the caller's Optuna logging as the caller set it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

import autotune
from autotune.testing import tiny_space, write_space
from autotune.testing.studies import make_study


def test_import_autotune_is_light_and_its_exports_resolve():
    """``import autotune`` and ``autotune.__all__`` import no torch, optuna, lm_eval, transformers or pandas;
    each export resolves to a documented object."""
    code = ("import sys, autotune\n"
            "names = list(autotune.__all__)\n"
            "heavy = [m for m in ('torch', 'optuna', 'lm_eval', 'transformers', 'pandas') if m in sys.modules]\n"
            "print(json.dumps({'names': names, 'heavy': heavy, 'dir': sorted(set(names) - set(dir(autotune)))}))")
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["heavy"] == [] and got["dir"] == [], got
    assert set(got["names"]) == {"__version__", *autotune._EXPORTS}
    for name in ("load_space", "Study", "trials_dataframe", "evaluate_checkpoint", "build_recipe", "extrapolate_study",
                 "write_report"):
        assert name in got["names"]
    for name in autotune.__all__:
        obj = getattr(autotune, name)
        assert name == "__version__" or (obj.__doc__ or "").strip(), f"autotune.{name} has no docstring"
    with pytest.raises(AttributeError, match="no_such_thing"):
        autotune.no_such_thing  # noqa: B018


def test_a_callers_optuna_verbosity_and_stdout_are_left_alone(tmp_path, monkeypatch, capsys, caplog):
    """A caller sets Optuna's verbosity to DEBUG; building a Study, its controller, reading its trials and the
    report's Optuna figures leave it at DEBUG. A reader of a study that has not run says so to the logger,
    not on stdout."""
    import optuna

    from autotune.records import load_trials
    from autotune.report.figures import display_study
    from autotune.report.load import load_study_data
    from autotune.search.study import check_space

    monkeypatch.chdir(tmp_path)
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    try:
        space = autotune.load_space(write_space(tmp_path, tiny_space("quiet")))
        caplog.set_level(logging.INFO, logger="autotune")
        autotune.Study(space, read_only=True).controller()  # no study.db yet: a note
        assert capsys.readouterr().out == ""
        assert any("no trial recorded yet" in r.getMessage() and r.name.startswith("autotune.") for r in caplog.records)
        study = autotune.Study(space)
        check_space(study.paths, space)
        study.controller()
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
        load_trials(study.paths.root)
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
        display_study(load_study_data(study.paths.root))
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        optuna.logging.set_verbosity(before)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_cli_keeps_optunas_info_lines_quiet(tmp_path, monkeypatch):
    """``autotune report`` builds in-memory Optuna studies for its figures: Optuna's "A new study created"
    INFO lines, which a Python caller sees by Optuna's default, do not pass Optuna's logger (in process: the
    command's ``main`` is what the console script runs; the caller's verbosity is put back after)."""
    import optuna
    from typer.testing import CliRunner

    from autotune.cli import app

    monkeypatch.chdir(tmp_path)
    make_study(tmp_path / "runs" / "synthetic", trials=3, failed=0)  # the figures' in-memory studies need 2
    seen, logger, before = _Records(), logging.getLogger("optuna"), optuna.logging.get_verbosity()
    logger.addHandler(seen)
    try:
        optuna.logging.set_verbosity(optuna.logging.INFO)  # Optuna's default, what a Python caller sees
        optuna.create_study()  # (the handler sees Optuna's INFO lines at this verbosity)
        assert any("A new study created" in r.getMessage() for r in seen.records)
        seen.records.clear()
        result = CliRunner().invoke(app, ["report", "runs/synthetic"])
    finally:
        logger.removeHandler(seen)
        optuna.logging.set_verbosity(before)
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "reports").glob("*/index.html")), result.output
    assert [r.getMessage() for r in seen.records if r.levelno < logging.WARNING] == []


def test_trials_dataframe_of_a_study_object_creates_nothing(tmp_path, monkeypatch):
    """A ``Study`` that never ran: its table is empty and no storage (study.db) is made by reading it."""
    monkeypatch.chdir(tmp_path)
    study = autotune.Study(autotune.load_space(write_space(tmp_path, tiny_space("unrun"))))
    db = study.paths.root / "study.db"
    assert not db.exists()
    df = autotune.trials_dataframe(study)
    assert len(df) == 0
    assert not db.exists()


def test_library_warnings_go_to_the_logger_and_the_cli_handler_shows_them(tmp_path, caplog):
    """A warning of library code (a train log's cut last line) is a log record; ``autotune`` the command shows
    it on stderr, as the line it printed before."""
    from autotune.records import read_jsonl

    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1}\n{"st')
    with caplog.at_level(logging.WARNING, logger="autotune"):
        assert read_jsonl(log, warn=True) == [{"step": 1}]
    assert [r.name for r in caplog.records] == ["autotune.records"]
    assert "skipped 1 line(s)" in caplog.records[0].getMessage()

    code = ("import sys; from autotune.logs import to_stderr; to_stderr()\n"
            "from autotune.records import read_jsonl; read_jsonl(sys.argv[1], warn=True)")
    out = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, check=True)
    assert out.stdout == "" and out.stderr.startswith(f"autotune: warning: {log}: skipped 1 line(s)"), out.stderr


@pytest.mark.slow  # 1-6 min on 2 busy cores: a prepare job, the base's evaluation and two tiny proxy runs
def test_the_first_trials_of_a_study_from_python(tmp_path, monkeypatch, capsys, caplog):
    """The issue's check: a study's first trials run from Python, its trials come back as a DataFrame with
    the mixture shares and the scores; the library printed nothing to stdout, the logger had the progress;
    its MLflow tracking left the caller's tracking URI, active run and MLFLOW_ALLOW_FILE_STORE as they were.
    (A worker's warnings still reach its worker.log: tests/test_faults_data.py, the damaged cache end to end.)"""
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="autotune")
    spec = tiny_space("api", trials=2)
    ours = (tmp_path / "mlruns").as_uri()  # tracked in an MLflow file store: the caller's MLflow stays as it was
    spec["search"]["tracking"] = {"kind": "mlflow", "uri": ours}
    path = write_space(tmp_path, spec)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    mine = f"sqlite:///{tmp_path / 'notebook.db'}"
    mlflow.set_tracking_uri(mine)
    try:
        study = autotune.Study(autotune.load_space(path))
        study.search()
        assert mlflow.get_tracking_uri() == mine and mlflow.active_run() is None
        assert "MLFLOW_ALLOW_FILE_STORE" not in __import__("os").environ
    finally:
        mlflow.set_tracking_uri(None)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading our file store back
    client = MlflowClient(ours)
    runs = client.search_runs([client.get_experiment_by_name("api").experiment_id])
    assert {r.info.run_name for r in runs} == {"api-study", "api-trial-0", "api-trial-1"}
    assert capsys.readouterr().out == ""
    messages = [r.getMessage() for r in caplog.records if r.name == "autotune.search.study"]
    assert any(m.startswith("trial 0 complete: target ") for m in messages), messages
    assert any(m.startswith("trial 1 ") for m in messages), messages
    assert any(m.startswith("trial 0: train") for m in messages), messages  # progress, without bars

    for source in (study, path, study.paths.root):  # a Study, its space file, its folder: the same table
        df = autotune.trials_dataframe(source)
        assert list(df["trial"]) == [0, 1], df
        shares = df[[f"share.{d}" for d in ("math", "code", "general")]]
        assert shares.notna().all().all() and (shares.sum(axis=1) - 1).abs().max() < 1e-6, shares
        assert df["target"].notna().all() and df["general"].notna().all()
        assert {"schedule.kind", "schedule.peak_lr", "feasible"} <= set(df.columns)
