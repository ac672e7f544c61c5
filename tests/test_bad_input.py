"""Bad input beyond the space schema (see test_spec.py for that): data files, storage, run folder, overrides,
suites. Each gets one clear line naming the file, field and value, exit 2, no traceback; secrets in storage
URLs are never printed; a finished study is left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from autotune.cli import app
from autotune.testing import REPO, tiny_space, write_space

runner = CliRunner()


def _search(space: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", "search", str(space), "--quiet", *args],
                          cwd=space.parent, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "250"})


def _path_space(tmp_path: Path, data: Path, **source) -> Path:
    spec = tiny_space("files")
    spec["domains"]["math"] = {"source": {"path": str(data), **source}, "role": "target"}
    return write_space(tmp_path, spec)


DATA_CASES = [
    ("empty-file", "math.jsonl", b"", {}, "empty file"),
    ("missing-text-field", "math.jsonl", b'{"body": "1 + 1 = 2"}\n' * 50, {}, "has no string field 'text'"),
    ("non-utf8", "math.jsonl", b'{"text": "caf\xe9"}\n', {}, "not UTF-8 text"),
    ("not-json", "math.jsonl", b'{"text": "ok"}\n{text: broken\n', {}, "line 2 is not JSON"),
    ("no-files-match", None, b"", {}, "no files match"),
    ("too-few-documents", "math.jsonl", b'{"text": "only one"}\n', {}, "too few documents"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case,name,content,source,expect", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_files(tmp_path, case, name, content, source, expect):
    data = tmp_path / "data"
    data.mkdir()
    if name:
        (data / name).write_bytes(content)
    space = _path_space(tmp_path, data / "*.jsonl", **source)
    proc = _search(space)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expect in proc.stderr and "domains.math.source" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    if case in ("empty-file", "missing-text-field", "non-utf8", "not-json"):
        assert str(data / name) in proc.stderr  # names the data file


def test_unreachable_storage_names_it_and_hides_the_password(tmp_path):
    space = write_space(tmp_path, tiny_space("store"))
    proc = _search(space, "--storage", "postgresql://alice:s3cret@127.0.0.1:1/test")
    assert proc.returncode == 2, proc.stderr
    assert "--storage" in proc.stderr and "cannot open the study storage" in proc.stderr
    assert "postgresql://alice:***@127.0.0.1:1/test" in proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("storage,expect", [("mysql+nodriver://x@localhost/db", "cannot open the study storage"),
                                            ("redis", "storage must be 'sqlite'"),
                                            ("journal:/no/such/folder/j.log", "journal file's folder does not exist")])
def test_bad_storage_specs(tmp_path, storage, expect):
    spec = tiny_space("store2")
    spec["search"]["storage"] = storage
    path = write_space(tmp_path, spec)
    proc = _search(path)
    assert proc.returncode == 2 and expect in proc.stderr and "search.storage" in proc.stderr, proc.stderr


def test_unwritable_runs_dir(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    spec = tiny_space("nowhere")
    spec["search"]["runs_dir"] = str(tmp_path / "a_file" / "runs")
    proc = _search(write_space(tmp_path, spec))
    assert proc.returncode == 2, proc.stderr
    assert "search.runs_dir" in proc.stderr and "cannot write the study folder" in proc.stderr


@pytest.mark.parametrize("override,expect", [("proxy.tokens", "override must read key.sub=value"),
                                             ("name.sub=3", "cannot set a field inside a str"),
                                             ("proxy.tokens=lots", "proxy.tokens")])
def test_bad_overrides(override, expect):
    r = runner.invoke(app, ["validate", str(REPO / "search_spaces" / "demo.yaml"), "--set", override])
    assert r.exit_code == 2 and expect in r.output, r.output


SUITE_CASES = [
    ("not-a-mapping", ["just", "a", "list"], "a suite must be a YAML mapping"),
    ("empty-general", {"name": "s", "target": [{"bpb": "math"}], "general": []}, "at least one entry"),
    ("duplicate-entry", {"name": "s", "target": [{"bpb": "math"}, {"bpb": "math"}], "general": [{"bpb": "general"}]},
     "twice"),
    ("negative-weight", {"name": "s", "target": [{"bpb": "math", "weight": -1}], "general": [{"bpb": "general"}]},
     "target[0]"),
    ("missing-task-dir", {"name": "s", "task_dirs": ["nope"], "target": [{"bpb": "math"}], "general": [{"bpb": "general"}]},
     "task_dirs[0]"),
]


@pytest.mark.parametrize("case,suite,expect", SUITE_CASES, ids=[c[0] for c in SUITE_CASES])
def test_bad_suites(tmp_path, case, suite, expect):
    path = write_space(tmp_path, tiny_space())
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 2, r.output
    assert "suite.yaml" in r.output and expect in r.output, r.output
    assert "Traceback" not in r.output
