"""User data sources: jsonl / json / parquet / plain text / HF ``datasets`` -> packed tokens.

Real files made in tmp folders from the shared benchmark data (``../shared/data`` next to the repo, never
copied into the project), a real byte-level BPE tokenizer, real ``datasets`` and ``pyarrow``; the end-to-end
test runs ``autotune search`` on a space whose domains are a jsonl, a parquet and a text file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autotune.config.sources import Domain, HFSource, PathSource
from autotune.config.space import load_space
from autotune.data import prepare
from autotune.data.sources import open_source
from autotune.errors import UserError
from autotune.hashing import tokenizer_hash
from autotune.testing import REPO, small_bpe_tokenizer, tiny_space, tiny_suite, write_space

BENCH = REPO.parent / "shared" / "data" / "benchmarks"
if not (BENCH / "gsm8k" / "train.jsonl").exists():
    pytest.skip(f"the shared benchmark data is not at {BENCH}", allow_module_level=True)


def _records(name: str, n: int) -> list[dict]:
    path = {"gsm8k": BENCH / "gsm8k" / "train.jsonl", "mbpp": BENCH / "mbpp" / "mbpp.jsonl",
            "boolq": BENCH / "boolq" / "val.jsonl"}[name]
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _write_parquet(path: Path, records: list[dict], columns: list[str], row_group_size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({c: [r[c] for r in records] for c in columns}), path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A real byte-level BPE (the demo's recipe) trained on a little gsm8k text: small and quick to build."""
    return small_bpe_tokenizer([r["question"] for r in _records("gsm8k", 300)], tmp_path_factory.mktemp("tok"))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private AUTOTUNE_HOME: each test tokenizes its own sources (no cache hits from other tests)."""
    h = tmp_path / "home"
    monkeypatch.setenv("AUTOTUNE_HOME", str(h))
    return h


def _decode_documents(packed: prepare.PackedDomain, split: str, tok_dir: Path) -> list[str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids = np.asarray(packed.tokens(split))
    assert ids[-1] == tok.eos_token_id  # the last document is closed too
    bounds = np.flatnonzero(ids == tok.eos_token_id)
    starts = np.concatenate([[0], bounds[:-1] + 1])
    return [tok.decode(ids[a:b].tolist()) for a, b in zip(starts, bounds, strict=True)]


# ----------------------------------------------------------------------------------------------- formats
def test_every_format_packs_the_same_documents(tmp_path, home, tok_dir):
    """The same 300 gsm8k records as jsonl, jsonl.gz, a JSON array, parquet, HF save_to_disk, the HF json
    builder and an HF local folder: byte-identical tokens, each document (question + answer) once, EOS after each."""
    import datasets

    records = _records("gsm8k", 300)
    records[7] = {**records[7], "question": "A tricky one: <|endoftext|> is plain text here."}
    d = tmp_path / "data"
    _write_jsonl(d / "math.jsonl", records)
    (d / "math.jsonl.gz").write_bytes(gzip.compress((d / "math.jsonl").read_bytes()))
    (d / "array").mkdir()
    (d / "array" / "math.json").write_text(json.dumps(records, indent=1))
    _write_parquet(d / "math.parquet", records, ["question", "answer"], row_group_size=50)
    datasets.Dataset.from_list(records).save_to_disk(str(d / "saved"))
    _write_jsonl(d / "repo" / "train.jsonl", records)  # a dataset repo layout: split from the file name

    fields = {"text_field": ["question", "answer"]}
    sources = {
        "jsonl": PathSource(path=str(d / "math.jsonl"), **fields),
        "jsonl.gz": PathSource(path=str(d / "math.jsonl.gz"), **fields),
        "json": PathSource(path=str(d / "array"), **fields),  # a folder: every file in it
        "parquet": PathSource(path=str(d / "*.parquet"), **fields),
        "from_disk": HFSource(from_disk=str(d / "saved"), **fields),
        "hf json": HFSource(hf="json", data_files=str(d / "math.jsonl"), **fields),
        "hf folder": HFSource(hf=str(d / "repo"), split="train", **fields),
    }
    packed = {name: prepare.pack_domain(s, tok_dir, where="domains.math") for name, s in sources.items()}
    reference = packed["jsonl"]
    expected = [f"{r['question']}\n{r['answer']}" for r in records]
    docs = _decode_documents(reference, "train", tok_dir) + _decode_documents(reference, "heldout", tok_dir)
    assert sorted(docs) == sorted(expected)  # each document once, EOS-delimited, in one of the splits
    m = reference.manifest
    assert m["splits"]["train"]["documents"] + m["splits"]["heldout"]["documents"] == 300
    assert 0 < m["splits"]["heldout"]["documents"] < 40  # heldout_fraction 0.05 of 300
    assert m["files"] == [{"file": str(d / "math.jsonl"), "format": "jsonl", "bytes": (d / "math.jsonl").stat().st_size,
                           "sha256": hashlib.sha256((d / "math.jsonl").read_bytes()).hexdigest()}]
    assert m["tokenizer_hash"] == tokenizer_hash(tok_dir) and m["eos_token_id"] == 0
    for name, p in packed.items():
        for split in ("train", "heldout"):
            assert (p.folder / f"{split}.bin").read_bytes() == (reference.folder / f"{split}.bin").read_bytes(), name
        assert p.manifest["splits"] == m["splits"], name
    assert len({p.folder for p in packed.values()}) == len(packed)  # different files: different cache entries
    assert not list(home.glob(".hf-*"))  # the temporary datasets caches of local data are gone


def test_text_files_split_on_two_blank_lines_and_file_format_takes_whole_files(tmp_path, home):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "a.txt").write_text("first doc\nline two\n\none blank line stays inside\n\n\n\nsecond doc\n   \n \nthird\n")
    (d / "b.md").write_text("# only one document\n\nin b\n")
    (d / "c.py").write_text("def f():\n    return 1\n\n\n\ndef g():\n    pass\n")
    texts = [t for _, t in open_source(PathSource(path=str(d / "*.[tm][xd]*")), where="domains.x",
                                       cache=home).documents()]
    assert texts == ["first doc\nline two\n\none blank line stays inside", "second doc", "third",
                     "# only one document\n\nin b"]
    whole = [t for _, t in open_source(PathSource(path=str(d / "*.py"), format="file"), where="domains.x",
                                       cache=home).documents()]
    assert whole == [(d / "c.py").read_text()]
    lines = [t for _, t in open_source(PathSource(path=str(d / "a.txt"), format="lines"), where="domains.x",
                                       cache=home).documents()]
    assert lines == ["first doc", "line two", "one blank line stays inside", "second doc", "third"]


# ----------------------------------------------------------------------------------------------- parallel
@pytest.mark.slow
def test_parallel_tokenization_is_byte_identical(tmp_path, monkeypatch, tok_dir):
    """Two spawned processes and in-process tokenization give the same bytes (chunks come back in order)."""
    src = PathSource(path=str(_write_jsonl(tmp_path / "math.jsonl", _records("gsm8k", 600))),
                     text_field=["question", "answer"], heldout_fraction=0.1)
    monkeypatch.setattr(prepare, "CHUNK_DOCUMENTS", 23)  # 27 chunks: out-of-order completion would show
    out = {}
    for workers in (1, 2):
        monkeypatch.setenv("AUTOTUNE_HOME", str(tmp_path / f"home{workers}"))
        out[workers] = prepare.pack_domain(src, tok_dir, where="domains.math", workers=workers)
        assert out[workers].manifest["tokenize"]["workers"] == workers
    assert out[1].folder.name == out[2].folder.name
    for split in ("train", "heldout"):
        one, two = (out[w].folder / f"{split}.bin" for w in (1, 2))
        assert one.stat().st_size > 0 and one.read_bytes() == two.read_bytes()


def test_worker_count_follows_size_and_env(monkeypatch):
    monkeypatch.delenv("AUTOTUNE_TOKENIZE_WORKERS", raising=False)
    assert prepare.tokenize_workers(prepare.PARALLEL_MIN_BYTES - 1) == 1
    cores = len(os.sched_getaffinity(0))
    assert prepare.tokenize_workers(prepare.PARALLEL_MIN_BYTES) == min(cores, 8)
    monkeypatch.setenv("AUTOTUNE_TOKENIZE_WORKERS", "3")
    assert prepare.tokenize_workers(10) == 3
    monkeypatch.setenv("AUTOTUNE_TOKENIZE_WORKERS", "zero")
    with pytest.raises(UserError, match="AUTOTUNE_TOKENIZE_WORKERS"):
        prepare.tokenize_workers(10)


# ----------------------------------------------------------------------------------------------- cache
def test_cache_is_keyed_by_content(tmp_path, home, tok_dir):
    data = _write_jsonl(tmp_path / "a" / "math.jsonl", _records("gsm8k", 200))
    src = PathSource(path=str(data), text_field="question")
    calls: list[str] = []
    first = prepare.pack_domain(src, tok_dir, where="domains.math", on_progress=calls.append)
    assert not first.cached and calls == ["domains.math"]
    again = prepare.pack_domain(src, tok_dir, where="domains.math", on_progress=calls.append)
    assert again.cached and again.folder == first.folder and calls == ["domains.math"]  # not tokenized again

    # the same bytes elsewhere (a second study's copy) hit the cache; a touch does not matter
    copy = tmp_path / "b" / "renamed.jsonl"
    copy.parent.mkdir()
    shutil.copy(data, copy)
    os.utime(copy, (1e9, 1e9))
    assert prepare.pack_domain(PathSource(path=str(copy), text_field="question"), tok_dir, where="d").cached

    # one character changed, same size, same mtime: a new key
    stat = data.stat()
    raw = data.read_bytes()
    data.write_bytes(raw.replace(b"Natalia", b"Natalie", 1))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data.stat().st_size == stat.st_size
    changed = prepare.pack_domain(src, tok_dir, where="domains.math")
    assert not changed.cached and changed.folder != first.folder
    assert changed.manifest["splits"]["train"]["source_hash"] != first.manifest["splits"]["train"]["source_hash"]
    # reading options are part of the key too
    other_field = prepare.pack_domain(PathSource(path=str(copy), text_field="answer"), tok_dir, where="d")
    assert not other_field.cached and other_field.folder not in (first.folder, changed.folder)


def test_file_hashes_are_remembered_and_rechecked(tmp_path, home):
    """A file hashed long after its last change is not hashed again while its stat is unchanged; a file
    hashed right after a write (a racy timestamp) or changed since is."""
    from autotune.data.sources import file_sha256

    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "one"}\n')
    os.utime(f, (1e9, 1e9))  # changed long ago
    real = hashlib.sha256(f.read_bytes()).hexdigest()
    assert file_sha256(f, home) == real
    entries = list((home / "fingerprints").glob("*.json"))
    assert len(entries) == 1
    entry = json.loads(entries[0].read_text())
    entries[0].write_text(json.dumps({**entry, "sha256": "remembered"}))
    assert file_sha256(f, home) == "remembered"  # trusted: not read again
    f.write_text('{"text": "two"}\n')  # same size, new content, fresh mtime
    assert file_sha256(f, home) == hashlib.sha256(f.read_bytes()).hexdigest()
    # hashed within the timestamp granularity of its last write: not trusted, so a corrupt entry is never used
    entry = json.loads(entries[0].read_text())
    entries[0].write_text(json.dumps({**entry, "sha256": "stale"}))
    assert file_sha256(f, home) == hashlib.sha256(f.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------- bad input
def _error(source, tok_dir) -> UserError:
    with pytest.raises(UserError) as e:
        prepare.pack_domain(source, tok_dir, where="domains.math")
    return e.value


def test_bad_files_are_named(tmp_path, home, tok_dir):
    d = tmp_path / "d"
    d.mkdir()
    cases = []
    cases.append((PathSource(path=str(d / "nothing*.jsonl")), "no files match", "domains.math.source.path", None))
    (d / "math.csv").write_text("text\nhello\n")
    cases.append((PathSource(path=str(d / "math.csv")), "unknown file format '.csv'", "domains.math.source.path",
                  d / "math.csv"))
    _write_jsonl(d / "q.jsonl", _records("gsm8k", 20))
    cases.append((PathSource(path=str(d / "q.jsonl")), "line 1 has no string field 'text' (it is missing; fields: "
                  "question, answer)", "domains.math.source.text_field", d / "q.jsonl"))
    _write_parquet(d / "code.parquet", _records("mbpp", 20), ["text", "code"])
    cases.append((PathSource(path=str(d / "code.parquet"), text_field="solution"),
                  "no column 'solution' (columns: text, code)", "domains.math.source.text_field", d / "code.parquet"))
    pq.write_table(pa.table({"text": ["a", None, "b"]}), d / "nulls.parquet")
    cases.append((PathSource(path=str(d / "nulls.parquet")), "row 1 has no string field 'text' (it is null)",
                  "domains.math.source.text_field", d / "nulls.parquet"))
    pq.write_table(pa.table({"text": [1, 2]}), d / "ints.parquet")
    cases.append((PathSource(path=str(d / "ints.parquet")), "column 'text' holds int64, not text",
                  "domains.math.source.text_field", d / "ints.parquet"))
    (d / "bad.parquet").write_bytes(b"this is not parquet at all" * 10)
    cases.append((PathSource(path=str(d / "bad.parquet")), "not a Parquet file", "domains.math.source.path",
                  d / "bad.parquet"))
    (d / "blank.txt").write_text("\n   \n\n\n\t\n")
    cases.append((PathSource(path=str(d / "blank.txt")), "the source holds no text", "domains.math.source.path", None))
    (d / "bad.jsonl.gz").write_bytes(b"not gzip")
    cases.append((PathSource(path=str(d / "bad.jsonl.gz")), "not a readable gzip file", "domains.math.source.path",
                  d / "bad.jsonl.gz"))
    for source, problem, field, file in cases:
        err = _error(source, tok_dir)
        assert problem in err.problem, (problem, str(err))
        assert err.field == field, str(err)
        if file is not None:
            assert err.file == str(file), str(err)
    assert not (home / "tokens").exists() or not any((home / "tokens").iterdir())  # no half-written caches


def test_bad_hf_sources_are_named(tmp_path, home, tok_dir, monkeypatch):
    import datasets

    d = tmp_path / "d"
    d.mkdir()
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b c"] * 30, "n": list(range(30))})}) \
        .save_to_disk(str(d / "dict"))
    cases = [
        (HFSource(from_disk=str(d / "missing")), "folder not found", "domains.math.source.from_disk"),
        (HFSource(from_disk=str(tmp_path)), "not a folder written by save_to_disk", "domains.math.source.from_disk"),
        (HFSource(from_disk=str(d / "dict"), split="validation"), "no split 'validation' (splits: train)",
         "domains.math.source.split"),
        (HFSource(from_disk=str(d / "dict"), text_field="body"), "no column 'body' (columns: text, n)",
         "domains.math.source.text_field"),
        (HFSource(from_disk=str(d / "dict"), text_field="n"), "column 'n' holds", "domains.math.source.text_field"),
        (HFSource(hf="json", data_files=str(d / "none*.jsonl")), "no files match", "domains.math.source.data_files"),
    ]
    for source, problem, field in cases:
        err = _error(source, tok_dir)
        assert problem in err.problem and err.field == field, str(err)
    # a hub name that is not in the HF cache, offline (as every worker runs): named, with the hint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    err = _error(HFSource(hf="autotune-tests/no-such-dataset"), tok_dir)
    assert err.field == "domains.math.source.hf" and err.value == "autotune-tests/no-such-dataset", str(err)
    assert "could not load it" in err.problem
    # without the datasets package
    monkeypatch.setitem(sys.modules, "datasets", None)
    err = _error(HFSource(from_disk=str(d / "dict")), tok_dir)
    assert "need the 'datasets' package" in err.problem and err.field == "domains.math.source", str(err)


def test_source_specs_validate_in_yaml_terms(tmp_path):
    """The keys pick the kind of source; a mistake is reported against the kind the user meant."""
    space = tiny_space("srcs")
    space["domains"]["math"] = {"source": {"hf": "openai/gsm8k", "name": "main", "text_field": ["question", "answer"]},
                                "role": "target"}
    space["domains"]["code"] = {"source": {"path": "data/*.parquet", "text_field": "code"}, "role": "target"}
    space["domains"]["general"] = {"source": {"from_disk": "saved"}, "role": "general"}
    path = write_space(tmp_path, space)
    loaded = load_space(path)
    assert isinstance(loaded.domains["math"].source, HFSource) and loaded.domains["math"].source.split == "train"
    assert loaded.domains["code"].source.resolved(loaded.root).path == str(tmp_path / "data" / "*.parquet")
    assert loaded.domains["general"].source.resolved(loaded.root).from_disk == str(tmp_path / "saved")
    assert loaded.domains["math"].source.resolved(loaded.root).hf == "openai/gsm8k"  # a hub name stays
    bad = [({"hf": "x", "splt": "train"}, "domains.math.source.splt", "unknown field"),
           ({"hf": "x", "from_disk": "y"}, "domains.math.source", "exactly one of 'hf'"),
           ({"hf": "json"}, "domains.math.source", "give data_files"),
           ({"path": "a.jsonl", "text_field": []}, "domains.math.source.text_field", "distinct field names"),
           ({"path": "a.jsonl", "format": "csv"}, "domains.math.source.format", "Input should be"),
           ({"paht": "a.jsonl"}, "domains.math.source", "")]
    for source, field, problem in bad:
        space["domains"]["math"] = {"source": source, "role": "target"}
        with pytest.raises(UserError) as e:
            load_space(write_space(tmp_path, space))
        assert field in str(e.value) and problem in str(e.value), str(e.value)
        assert "HFSource" not in str(e.value) and "PathSource" not in str(e.value)
    assert Domain(source="demo:math", role="target").source == "demo:math"


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_study_on_user_data(tmp_path):
    """`autotune search` on a space whose domains are gsm8k (jsonl), MBPP code (parquet) and BoolQ passages
    (plain text): both trials finish with results; the manifests count every document, EOS after each; the
    same data elsewhere is a cache hit; a broken parquet stops the next study with one line, exit 2."""
    data = tmp_path / "data"
    math = _write_jsonl(data / "math" / "gsm8k.jsonl", _records("gsm8k", 1500))
    mbpp = _records("mbpp", 974)
    _write_parquet(data / "code" / "part-0.parquet", mbpp[:500], ["text", "code"])
    _write_parquet(data / "code" / "part-1.parquet", mbpp[500:], ["text", "code"])
    (data / "code" / "_SUCCESS").write_bytes(b"")  # metadata that Spark leaves beside its parquet: skipped
    passages = [r["passage"] for r in _records("boolq", 1200)]
    (data / "general.txt").write_text("\n\n\n".join(passages) + "\n", encoding="utf-8")

    space = tiny_space("userdata", trials=2)
    space["domains"] = {
        "math": {"source": {"path": "data/math/*.jsonl", "text_field": ["question", "answer"]}, "role": "target"},
        "code": {"source": {"path": "data/code", "text_field": "code"}, "role": "target"},
        "general": {"source": {"path": "data/general.txt"}, "role": "general"},
    }
    suite = {**tiny_suite(), "target": [{"task": "demo_math_mc", "metric": "acc", "limit": 8}, {"bpb": "math"},
                                        {"bpb": "code"}], "general": [{"bpb": "general"}]}
    path = write_space(tmp_path, space, suite)
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "search", str(path), "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr

    import optuna

    trials = optuna.load_study(study_name="userdata", storage=f"sqlite:///{tmp_path / 'runs/userdata/study.db'}") \
        .get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        assert {"bpb/math", "bpb/code", "bpb/general", "demo_math_mc/acc"} <= set(t.user_attrs["metrics"])
        assert all(np.isfinite(t.user_attrs["metrics"][k]) for k in ("bpb/math", "bpb/code", "bpb/general"))

    prepared = json.loads((tmp_path / "runs" / "userdata" / "prepare" / "result.json").read_text())
    expected_docs = {"math": 1500, "code": len([r for r in mbpp if r["code"].strip()]), "general": 1200}
    for name, folder in prepared["domains"].items():
        packed = prepare.PackedDomain(Path(folder))
        m = packed.manifest
        assert m["splits"]["train"]["documents"] + m["splits"]["heldout"]["documents"] == expected_docs[name], name
        assert 0.02 < m["splits"]["heldout"]["documents"] / expected_docs[name] < 0.1, name
        for split in ("train", "heldout"):
            ids = np.asarray(packed.tokens(split))
            assert len(ids) == m["splits"][split]["tokens"] and ids[-1] == m["eos_token_id"], (name, split)
            assert int((ids == m["eos_token_id"]).sum()) == m["splits"][split]["documents"], (name, split)
        assert m["tokenizer_hash"] == prepared["tokenizer_hash"]
    assert [f["file"] for f in prepared["manifests"]["code"]["files"]] == \
        [str(data / "code" / "part-0.parquet"), str(data / "code" / "part-1.parquet")]
    assert prepared["manifests"]["math"]["files"][0]["sha256"] == hashlib.sha256(math.read_bytes()).hexdigest()

    # a second study on a copy of the data reuses the packed tokens (content-addressed), no tokenization
    copy = tmp_path / "elsewhere" / "gsm8k.jsonl"
    copy.parent.mkdir()
    shutil.copy(math, copy)
    again = prepare.pack_domain(PathSource(path=str(copy), text_field=["question", "answer"]),
                                Path(prepared["tokenizer"]), where="domains.math")
    assert again.cached and str(again.folder) == prepared["domains"]["math"]
    assert [f["file"] for f in again.manifest["files"]] == [str(copy)]  # its own files, not the first packer's

    # a damaged parquet shard: one line naming the file and the field, exit 2, nothing else runs
    (data / "code" / "part-1.parquet").write_bytes(b"PAR1 truncated")
    space["name"] = "userdata2"
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "search", str(write_space(tmp_path, space, suite)),
                           "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "250"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not a Parquet file" in proc.stderr and str(data / "code" / "part-1.parquet") in proc.stderr
    assert "domains.code.source.path" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
