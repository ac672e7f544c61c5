"""Secrets and storages (issue 15, findings 1, 7 and 14), on the real parts: a real PostgreSQL server
(127.0.0.1:5432, database `test`, trust authentication: any password is accepted, so a password in the URL
connects and must then never be written), real tiny studies and the real CLI.

- No storage password in any file a study writes (runs/<name>/, the report), nor on the console: given
  with ``--storage``, in the space's ``search.storage``, or in the URL's query string (``?password=``).
- ``status`` / ``export`` / ``report`` read a storage, never create or migrate one: a 0-byte ``study.db``
  is named, a mistyped ``--storage`` is refused (exit 2) and nothing is created there.
- The missing-driver hint names the driver the URL needs (``postgresql://`` is psycopg 3 with SQLAlchemy 2.x).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from autotune.redact import redact, redact_data
from autotune.testing import tiny_space, write_space
from autotune.testing.studies import tiny_suite

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"  # what the tests below connect to (trust auth)
PASSWORD = "s3cretPW"


def _pg_or_skip() -> None:
    try:
        import psycopg2

        psycopg2.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=3).close()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 ({type(e).__name__}); .ci/run starts the local server")


def _cli(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "250"})


def _drop_pg_study(name: str) -> None:
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=PG)
    except KeyError:
        pass


def _files_holding(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` whose bytes hold ``secret`` (binary files too: a checkpoint, a database)."""
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and secret.encode() in p.read_bytes()]


# ----------------------------------------------------------------------------------------------- the one redaction
@pytest.mark.parametrize("text,shown", [
    ("postgresql+psycopg2://postgres:s3cretPW@127.0.0.1:5432/test", "postgresql+psycopg2://postgres:***@127.0.0.1:5432/test"),
    ("postgresql://u@h/db?password=s3cretPW&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("postgresql://u@h/db?sslmode=require&PASSWORD=s3cretPW", "postgresql://u@h/db?sslmode=require&PASSWORD=***"),
    ("autotune search s.yaml --storage 'mysql+pymysql://bob:s3c@retPW@db:3306/x' -q",
     "autotune search s.yaml --storage 'mysql+pymysql://bob:***@db:3306/x' -q"),  # an unencoded @: hidden whole
    ('{"storage": "postgresql://u:s3cretPW@h/db"}', '{"storage": "postgresql://u:***@h/db"}'),
    ("--set search.storage=postgresql://u:s3cretPW@h/db", "--set search.storage=postgresql://u:***@h/db"),
    ("storage: postgresql://u:s3cretPW@h/db\nname: x\n", "storage: postgresql://u:***@h/db\nname: x\n"),
])
def test_redact_hides_every_password(text, shown):
    assert redact(text) == shown
    assert "s3cret" not in redact(text) and redact(redact(text)) == redact(text)


@pytest.mark.parametrize("text", ["sqlite", "sqlite:////abs/runs/x/study.db", "journal:/shared/study.log",
                                  "postgresql://postgres@127.0.0.1:5432/test", "postgresql://h:5432/db",
                                  "https://huggingface.co/HuggingFaceTB/SmolLM2-135M", "a=b c=d", ""])
def test_redact_leaves_text_without_a_password_alone(text):
    assert redact(text) == text


def test_redact_data_reaches_every_string():
    data = {"search": {"storage": "postgresql://u:pw1@h/db", "trials": 3}, "list": ["x://a:pw2@h", 1.5, None]}
    assert redact_data(data) == {"search": {"storage": "postgresql://u:***@h/db", "trials": 3},
                                 "list": ["x://a:***@h", 1.5, None]}
    assert data["search"]["storage"] == "postgresql://u:pw1@h/db"  # a copy: the original is what connects


# ----------------------------------------------------------------------------------------------- real studies
def _secret_space(tmp_path: Path, name: str, trials: int, storage: str = "sqlite", **over) -> Path:
    """The tiny space on a lighter suite (one multiple-choice task, bits-per-byte): what is written matters here."""
    spec = tiny_space(name, trials=trials, **over)
    spec["search"]["storage"] = storage
    suite = {**tiny_suite(limit=8), "target": [tiny_suite(limit=8)["target"][0], {"bpb": "math"}, {"bpb": "code"}],
             "general": [{"bpb": "general"}]}
    return write_space(tmp_path, spec, suite)


def _assert_no_secret(tmp_path: Path, name: str, secret: str, *procs: subprocess.CompletedProcess) -> None:
    for p in procs:
        assert secret not in p.stdout + p.stderr, p.stdout + p.stderr
    written = [*_files_holding(tmp_path / "runs" / name, secret), *_files_holding(tmp_path / "reports", secret)]
    assert not written, f"the password is written in {written}"
    import optuna

    study = optuna.load_study(study_name=name, storage=PG)  # nor in the study's own records
    assert secret not in repr([(t.user_attrs, t.system_attrs) for t in study.get_trials(deepcopy=False)])
    assert secret not in repr((study.user_attrs, study._storage.get_study_system_attrs(study._study_id)))


@pytest.mark.slow
def test_a_password_given_with_storage_is_written_nowhere(tmp_path):
    """``--storage URL`` with a password, three trials and an ``extrapolate:`` section (so recipe.yaml and its
    header, the command line, are written): no file under runs/<name>/, nor the report, nor the console holds
    the password; the study folder reads back with the URL given again."""
    _pg_or_skip()
    name = f"secret-a-{uuid.uuid4().hex[:8]}"
    url = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:5432/test"
    space = _secret_space(tmp_path, name, 3, extrapolate={"tokens": 1e6})
    try:
        first = _cli(tmp_path, "search", str(space), "--storage", url, "--quiet")
        assert first.returncode == 0, first.stdout + first.stderr
        recipe = tmp_path / "runs" / name / "recipe.yaml"
        assert recipe.is_file(), first.stdout + first.stderr
        assert recipe.read_text().startswith("# ") and "--storage postgresql+psycopg2://postgres:***@" in recipe.read_text()
        assert (tmp_path / "reports" / name / "index.html").is_file()
        status = _cli(tmp_path, "status", str(tmp_path / "runs" / name), "--storage", url)
        assert status.returncode == 0 and status.stdout.count("complete") == 3, status.stdout + status.stderr
        _assert_no_secret(tmp_path, name, PASSWORD, first, status)
    finally:
        _drop_pg_study(name)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["space-file", "query-string"])
def test_a_password_in_the_space_is_written_nowhere(tmp_path, where):
    """A password in the space file's ``search.storage`` (user info), or in a ``--set search.storage=`` URL's
    query string: ``validate`` does not print it; space.yaml, every job.json, the logs and the report do not
    hold it; the study folder reads from the user's space file, which does (space.yaml's copy is redacted);
    rerunning the same command resumes the study (the password given again)."""
    _pg_or_skip()
    from autotune.cli.resolve import resolve_study

    name = f"secret-{where[0]}-{uuid.uuid4().hex[:8]}"
    if where == "space-file":
        url = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:5432/test"
        space, extra = _secret_space(tmp_path, name, 1, storage=url), []
    else:
        url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/test?password={PASSWORD}"
        space, extra = _secret_space(tmp_path, name, 1), ["--set", f"search.storage={url}"]
    try:
        shown = _cli(tmp_path, "validate", str(space), *extra)
        assert shown.returncode == 0 and "storage: postgresql+psycopg2://postgres" in shown.stdout, shown.stdout + shown.stderr
        run = _cli(tmp_path, "search", str(space), "--quiet", *extra)
        assert run.returncode == 0 and "complete" in run.stdout, run.stdout + run.stderr
        jobs = list((tmp_path / "runs" / name).rglob("job.json"))
        assert len(jobs) >= 3  # prepare, base, the trial
        _assert_no_secret(tmp_path, name, PASSWORD, shown, run)
        folder = tmp_path / "runs" / name
        if where == "space-file":  # the study folder resolves to the user's file: the real password connects
            assert resolve_study(folder)[0].search.storage == url
            status = _cli(tmp_path, "status", str(folder))
            assert status.returncode == 0 and "complete" in status.stdout, status.stdout + status.stderr
            assert PASSWORD not in status.stdout + status.stderr
        else:  # resumes: the trial is kept, nothing left to run
            again = _cli(tmp_path, "search", str(space), "--quiet", *extra)
            assert again.returncode == 0 and again.stdout.count("complete") == 1, again.stdout + again.stderr
            _assert_no_secret(tmp_path, name, PASSWORD, again)
    finally:
        _drop_pg_study(name)


# ----------------------------------------------------------------------------------------------- readers write nothing
def _started(tmp_path: Path, name: str, **search) -> tuple[Path, Path]:
    """A study folder as ``autotune search`` starts it (space.json, space.yaml), no storage opened yet."""
    from autotune.config.space import load_space
    from autotune.search.study import StudyPaths, check_space, study_dir

    path = write_space(tmp_path / "spaces", tiny_space(name, search={"sampler": "tpe", "trials": 2, "storage": "sqlite",
                                                                     "runs_dir": str(tmp_path / "runs"), **search}))
    space = load_space(path)
    check_space(StudyPaths(study_dir(space)), space)
    return path, study_dir(space)


@pytest.mark.faults
def test_readers_name_an_empty_study_db_and_leave_it_empty(tmp_path):
    """A 0-byte study.db (a full disk, a cut copy): status and export refuse it naming the file (exit 2); the
    report is written from what else is there and says so; the file stays 0 bytes (no schema put in it)."""
    space_file, folder = _started(tmp_path, "emptydb")
    db = folder / "study.db"
    db.write_bytes(b"")
    for command in ("status", "export"):
        for arg in (space_file, folder):
            r = _cli(tmp_path, command, str(arg))
            assert r.returncode == 2 and str(db) in r.stderr and "empty (0 bytes)" in r.stderr, (command, r.stderr)
            assert "Traceback" not in r.stderr and db.stat().st_size == 0
    r = _cli(tmp_path, "report", str(folder), "-o", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "empty (0 bytes)" in (tmp_path / "rep" / "index.html").read_text()
    assert db.stat().st_size == 0


def test_status_of_a_study_without_study_db_creates_none(tmp_path):
    """A study folder whose storage was never opened: status shows no trials with a warning naming the file
    and pointing at --storage, and does not create study.db."""
    _, folder = _started(tmp_path, "nodb")
    r = _cli(tmp_path, "status", str(folder))
    assert r.returncode == 0 and "study nodb" in r.stdout, r.stdout + r.stderr
    assert str(folder / "study.db") in r.stderr and "--storage" in r.stderr
    assert not (folder / "study.db").exists()


def test_a_mistyped_storage_is_refused_and_nothing_is_created(tmp_path):
    """``status`` / ``export`` with a ``--storage`` that holds no such study: exit 2 naming it; a SQLite file
    or journal that is not there is not created, PostgreSQL gets no study of that name."""
    _pg_or_skip()
    import optuna

    space_file, folder = _started(tmp_path, f"typo-{uuid.uuid4().hex[:8]}")
    name = folder.name
    # the PostgreSQL case is a database that holds Optuna's tables but not this study (a database without the
    # tables is the next test's): make the tables exist whatever ran before on this server
    other = f"other-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=other, storage=PG)
    optuna.delete_study(study_name=other, storage=PG)
    typo_db, typo_log = tmp_path / "tpyo.db", tmp_path / "tpyo.log"
    cases = {f"sqlite:///{typo_db}": "does not exist", f"journal:{typo_log}": "does not exist",
             PG: f"no study named '{name}'"}
    for url, words in cases.items():
        for command in ("status", "export"):
            r = _cli(tmp_path, command, str(space_file), "--storage", url)
            assert r.returncode == 2 and words in r.stderr and "--storage" in r.stderr, (url, command, r.stderr)
            assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not typo_db.exists() and not typo_log.exists()
    assert name not in optuna.get_all_study_names(PG)


def test_a_database_without_optuna_tables_gets_none(tmp_path):
    """``status --storage`` on a real, empty PostgreSQL database: refused (exit 2), and no table is made."""
    _pg_or_skip()
    import psycopg2

    db = f"h1empty_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/test")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {db}")
    try:
        space_file, _ = _started(tmp_path, "notables")
        r = _cli(tmp_path, "status", str(space_file), "--storage", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}")
        assert r.returncode == 2 and "holds no Optuna study" in r.stderr, r.stderr
        conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{db}")
        try:
            cur = conn.cursor()
            cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            assert cur.fetchone()[0] == 0
        finally:
            conn.close()
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {db}")
        admin.close()


# ----------------------------------------------------------------------------------------------- the driver hint
def test_the_readme_postgres_url_names_the_driver_it_needs(tmp_path):
    """The README's ``--storage postgresql://user@host/db`` against the real server: with SQLAlchemy 2.x the
    bare scheme selects psycopg (3). Without it installed the error says so and how to use the installed
    psycopg2 instead; it never tells to install the psycopg2-binary that is there."""
    _pg_or_skip()
    from sqlalchemy.engine import make_url

    space_file, _ = _started(tmp_path, "driver")
    driver = make_url("postgresql://x").get_dialect().driver
    r = _cli(tmp_path, "status", str(space_file), "--storage", "postgresql://postgres@127.0.0.1:5432/test")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    if importlib.util.find_spec(driver) is None:  # the resolved driver is missing (here: psycopg 3)
        assert f"driver {driver}" in r.stderr and "postgresql+psycopg2://" in r.stderr, r.stderr
        assert "pip install psycopg2-binary" not in r.stderr
        if driver == "psycopg":
            assert "pip install 'psycopg[binary]'" in r.stderr
    else:  # it is installed: the URL connects and holds no such study
        assert "no study named 'driver'" in r.stderr, r.stderr
    mysql = _cli(tmp_path, "status", str(space_file), "--storage", "mysql://u:pw@127.0.0.1:1/x")
    if importlib.util.find_spec("MySQLdb") is None:
        assert "mysqlclient" in mysql.stderr and "psycopg" not in mysql.stderr, mysql.stderr
    pymysql = _cli(tmp_path, "status", str(space_file), "--storage", "mysql+pymysql://u:pw@127.0.0.1:1/x")
    if importlib.util.find_spec("pymysql") is None:
        assert "pip install pymysql" in pymysql.stderr and "psycopg" not in pymysql.stderr, pymysql.stderr
    assert "pw@" not in mysql.stderr + pymysql.stderr
