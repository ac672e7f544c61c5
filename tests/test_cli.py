"""The command line's one error path (``autotune.cli.errors``: bad input 2, regression or a study that cannot
go on 1, evaluation failed 3, Ctrl-C 130, each in one line without a traceback) and the study commands'
argument: a study folder or its search-space file, alike (``autotune.cli.resolve``). Fast: no training, no
model load."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from autotune.cli import app
from autotune.cli.errors import EXIT_CODES, cli_errors, guarded
from autotune.cli.resolve import resolve_study
from autotune.errors import UserError
from autotune.testing import REPO, tiny_space, write_space

STUDY_COMMANDS = ("status", "export", "ladder", "report", "extrapolate")


def _err_lines(output: str) -> list[str]:
    return [x for x in output.splitlines() if x.strip()]


# ----------------------------------------------------------------------------------------------- exit codes
def _guarded(fn, interrupted=None) -> tuple[int, str]:
    buf = io.StringIO()
    code = guarded(fn, interrupted=interrupted, err_console=Console(file=buf, width=80))
    return code, buf.getvalue()


def test_every_error_has_one_exit_code():
    from autotune.evaluate.checkpoint import EvalFailed
    from autotune.search.study import Interrupted, StudyFailed

    def raising(e):
        def fn():
            raise e
        return fn

    long = "x" * 300  # one line however long, and never rich markup
    code, out = _guarded(raising(UserError(f"bad [value] {long}", file="a.yaml", field="f")))
    assert code == 2 and _err_lines(out) == [f"error: a.yaml: f: bad [value] {long}"]
    code, out = _guarded(raising(EvalFailed("ckpt: would not start")))
    assert code == 3 and _err_lines(out) == ["error: evaluation failed: ckpt: would not start"]
    code, out = _guarded(raising(EvalFailed("ckpt: RuntimeError: boom", detail="Traceback (most recent call last):\n  x\n")))
    assert code == 3 and out.startswith("Traceback") and _err_lines(out)[-1] == "error: evaluation failed: ckpt: RuntimeError: boom"
    code, out = _guarded(raising(StudyFailed("preparing the data failed")))
    assert code == 1 and _err_lines(out) == ["error: preparing the data failed"]
    for e in (KeyboardInterrupt(), Interrupted()):
        code, out = _guarded(raising(e), interrupted="run it again to resume.")
        assert code == 130 and _err_lines(out) == ["interrupted: run it again to resume."]
    assert _guarded(lambda: 1) == (1, "")  # a command's own code (the gate's regression)
    assert _guarded(lambda: None) == (0, "")
    assert _guarded(raising(typer.Exit(4))) == (4, "")
    with pytest.raises(ZeroDivisionError):  # a bug of ours keeps its traceback
        _guarded(raising(ZeroDivisionError()))


def test_decorated_command_exits_with_the_code():
    demo = typer.Typer()

    @demo.command()
    @cli_errors(interrupted="nothing was changed.")
    def run(what: str) -> int:
        """Raise what is asked."""
        if what == "bad":
            raise UserError("no such thing", field="WHAT", value=what)
        if what == "stop":
            raise KeyboardInterrupt
        return 1 if what == "fail" else 0

    runner = CliRunner()
    assert runner.invoke(demo, ["ok"]).exit_code == 0
    assert runner.invoke(demo, ["fail"]).exit_code == 1
    r = runner.invoke(demo, ["bad"])
    assert r.exit_code == 2 and _err_lines(r.output) == ["error: WHAT: no such thing (got 'bad')"]
    r = runner.invoke(demo, ["stop"])
    assert r.exit_code == 130 and _err_lines(r.output) == ["interrupted: nothing was changed."]
    assert "Raise what is asked" in runner.invoke(demo, ["--help"]).output  # the signature and help survive


def test_help_lists_the_exit_codes():
    r = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0 and EXIT_CODES in " ".join(r.output.split())


@pytest.mark.parametrize("command", ["validate", "search", *STUDY_COMMANDS])
def test_a_missing_space_file_is_bad_input_for_every_command(tmp_path, command):
    missing = tmp_path / "nope.yaml"
    r = CliRunner().invoke(app, [command, str(missing)])
    assert r.exit_code == 2, r.output
    lines = _err_lines(r.output)
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope.yaml" in lines[0] and "not found" in lines[0]
    assert "Traceback" not in r.output


def test_bad_input_of_eval_and_gate_exits_2(tmp_path):
    suite = REPO / "evals" / "demo.yaml"
    for args in (["eval", str(tmp_path / "nockpt"), "--suite", str(suite)],
                 ["gate", str(tmp_path / "nockpt"), "--suite", str(suite), "--baseline", str(tmp_path / "b.json")]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "no config.json" in r.output and "Traceback" not in r.output, r.output


def test_the_console_script_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "status", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert _err_lines(proc.stderr) == [f"error: {tmp_path / 'nope.yaml'}: search space file not found"]


# ----------------------------------------------------------------------------------------------- study or space
def _started_study(tmp_path: Path, **space_over) -> tuple[Path, Path]:
    """A study folder as ``autotune search`` starts it (space.json + space.yaml) and no trials yet."""
    from autotune.config.space import load_space
    from autotune.search.study import StudyPaths, check_space, study_dir

    spec = tiny_space("clitest", search={"sampler": "tpe", "trials": 2, "storage": "sqlite",
                                         "runs_dir": str(tmp_path / "runs")}, **space_over)
    path = write_space(tmp_path / "spaces", spec)
    space = load_space(path)
    check_space(StudyPaths(study_dir(space)), space)
    return path, study_dir(space)


def test_status_and_report_take_a_study_folder_or_its_space_file(tmp_path):
    space_file, folder = _started_study(tmp_path)
    assert (folder / "space.json").is_file() and (folder / "space.yaml").is_file()
    runner = CliRunner()
    for arg in (space_file, folder):
        r = runner.invoke(app, ["status", str(arg)], env={"COLUMNS": "200"})
        assert r.exit_code == 0 and "study clitest" in r.output and "Traceback" not in r.output, r.output
        out = tmp_path / f"report-{arg.name}"
        r = runner.invoke(app, ["report", str(arg), "-o", str(out)])
        assert r.exit_code == 0 and (out / "index.html").is_file(), r.output
    # the same resolution: the space is the study's, the folder is the study's
    space, root = resolve_study(folder)
    assert space.name == "clitest" and root == folder
    assert resolve_study(space_file)[1] == folder and resolve_study(folder, need_space=False) == (None, folder)


def test_a_study_folder_resolves_from_any_working_directory(tmp_path, monkeypatch):
    from autotune.search.study import study_dir

    space_file, folder = _started_study(tmp_path)
    text = space_file.read_text().replace(str(tmp_path / "runs"), "runs")  # runs_dir relative to the cwd
    space_file.write_text(text)
    monkeypatch.chdir(tmp_path / "spaces")  # where runs/ is not
    space, root = resolve_study(folder)
    assert study_dir(space) == folder and root == folder


def test_a_study_folder_whose_source_file_is_gone_uses_its_space_yaml(tmp_path):
    space_file, folder = _started_study(tmp_path, evals=str(tmp_path / "spaces" / "suite.yaml"))  # absolute paths
    space_file.unlink()
    space, _ = resolve_study(folder)
    assert space.name == "clitest" and Path(space.source_file) == folder / "space.yaml"
    r = CliRunner().invoke(app, ["status", str(folder)])
    assert r.exit_code == 0 and "study clitest" in r.output, r.output


def test_a_study_folder_whose_space_cannot_be_rebuilt_names_it(tmp_path):
    space_file, folder = _started_study(tmp_path)  # evals: suite.yaml, relative to the space file
    space_file.unlink()
    for command in ("status", "export", "ladder"):
        r = CliRunner().invoke(app, [command, str(folder)])
        assert r.exit_code == 2 and "this is a study folder" in r.output and str(folder) in r.output, r.output
        assert "give the search-space YAML" in r.output and len(_err_lines(r.output)) == 1
    r = CliRunner().invoke(app, ["report", str(folder), "-o", str(tmp_path / "rep")])  # needs no space
    assert r.exit_code == 0, r.output


def test_neither_a_space_nor_a_study_is_bad_input_naming_the_path(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    cases = {tmp_path / "plain": "no space.json", tmp_path / "nowhere": "study folder not found",
             tmp_path / "notes.txt": "neither a search-space YAML"}
    for path, words in cases.items():
        with pytest.raises(UserError, match=words) as e:
            resolve_study(path)
        assert e.value.file == str(path)
        for command in STUDY_COMMANDS:
            r = CliRunner().invoke(app, [command, str(path)])
            assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, (command, r.output)


def test_a_space_file_whose_study_has_not_run(tmp_path):
    path = write_space(tmp_path, tiny_space("neverrun", search={"sampler": "tpe", "trials": 2, "storage": "sqlite",
                                                                 "runs_dir": str(tmp_path / "runs")}))
    for command in ("status", "export", "report", "extrapolate"):
        r = CliRunner().invoke(app, [command, str(path)])
        assert r.exit_code == 2 and "no study has run for this space yet" in r.output and "neverrun" in r.output, r.output
