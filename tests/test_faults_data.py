"""Faults in the data stage: a damaged token cache (issue 15 #5) and documents too large to hold (#9).

Real files throughout: caches packed by the real ``pack_domain`` with a real byte-level BPE, then truncated,
bit-flipped or stripped of their new manifest fields on disk; a real 20 MB single-line jsonl and real
plain-text files without separators, packed in a subprocess whose peak RSS (its own ``VmHWM``)
is checked; the end-to-end test runs ``autotune search`` twice around a truncated ``train.bin``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from autotune.config.sources import PIECE_BYTES, PathSource
from autotune.config.space import load_space
from autotune.data import prepare
from autotune.errors import UserError
from autotune.testing import REPO, small_bpe_tokenizer, tiny_space, write_space

BENCH = REPO.parent / "shared" / "data" / "benchmarks"
if not (BENCH / "gsm8k" / "train.jsonl").exists():
    pytest.skip(f"the shared benchmark data is not at {BENCH}", allow_module_level=True)

pytestmark = pytest.mark.faults

# Peak RSS allowed for packing one huge document. The process itself (Python, numpy, transformers, the
# tokenizer) is ~250 MB here; a tokenization batch is at most CHUNK_BYTES (1 MiB) of text and costs ~220 MB
# in the fast tokenizer (measured: ~200 bytes of memory per byte of text); the reader holds two pieces, and a
# streamed document until its end to hash it whole: in memory up to sources.HOLD_BYTES (16 MiB), then on disk.
# That is ~500-600 MB whatever the document's size; before the fix a 20 MB document took ~4.9 GB.
PEAK_RSS_BOUND = 1 << 30


def _records(n: int) -> list[dict]:
    with open(BENCH / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A real byte-level BPE (the demo's recipe) trained on a little gsm8k text: small and quick to build."""
    return small_bpe_tokenizer([r["question"] for r in _records(300)], tmp_path_factory.mktemp("tok"))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("AUTOTUNE_HOME", str(h))
    return h


def _gsm8k_source(tmp_path: Path, n: int = 400) -> PathSource:
    path = tmp_path / "data" / "math.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": r["question"] + "\n" + r["answer"]}) + "\n" for r in _records(n)))
    return PathSource(path=str(path))


# ----------------------------------------------------------------------------------------------- #5 the token cache
def _damage_and_repack(source, tok_dir, caplog, damage) -> tuple[prepare.PackedDomain, prepare.PackedDomain, str]:
    """Pack, damage, pack again; the warnings logged by the second packing (the worker shows them in its log)."""
    first = prepare.pack_domain(source, tok_dir, where="domains.math")
    caplog.clear()
    damage(first.folder)
    again = prepare.pack_domain(source, tok_dir, where="domains.math")
    return first, again, _logged(caplog)


def _logged(caplog) -> str:
    """What autotune logged at WARNING since the last ``caplog.clear()``, and clear it."""
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("autotune.") and r.levelno >= 30)
    caplog.clear()
    return text


def _assert_whole(packed: prepare.PackedDomain, reference: dict[str, np.ndarray]) -> None:
    m = packed.manifest
    for split, ids in reference.items():
        got = np.asarray(packed.tokens(split))
        assert len(got) == m["splits"][split]["tokens"] == len(ids), split
        assert np.array_equal(got, ids), split


def test_truncated_train_bin_is_rebuilt(tmp_path, home, tok_dir, caplog):
    """The issue's case: train.bin truncated to 4,000 bytes. Before: the cache counted as valid (manifest.json
    exists) and ``tokens('train')`` held 2,000 tokens against the manifest's count. Now: a warning naming
    the folder, the entry rebuilt, every token back."""
    source = _gsm8k_source(tmp_path)
    ref = {}

    def truncate(folder: Path) -> None:
        ref.update({s: np.array(prepare.PackedDomain(folder).tokens(s)) for s in ("train", "heldout")})
        with open(folder / "train.bin", "r+b") as f:
            f.truncate(4000)

    first, again, err = _damage_and_repack(source, tok_dir, caplog, truncate)
    assert again.folder == first.folder and not again.cached
    assert "damaged token cache" in err and str(first.folder) in err and "train.bin" in err
    _assert_whole(again, ref)
    # and the rebuilt entry is whole: the next call uses it without a word
    third = prepare.pack_domain(source, tok_dir, where="domains.math")
    assert third.cached and "damaged" not in _logged(caplog)


def test_flipped_byte_is_caught_by_the_checksum(tmp_path, home, tok_dir, caplog):
    """Same size, one byte changed in heldout.bin (a bad disk, a stray write): the checksum catches it."""
    source = _gsm8k_source(tmp_path)
    ref = {}

    def flip(folder: Path) -> None:
        ref.update({s: np.array(prepare.PackedDomain(folder).tokens(s)) for s in ("train", "heldout")})
        with open(folder / "heldout.bin", "r+b") as f:
            f.seek(10)
            b = f.read(1)
            f.seek(10)
            f.write(bytes([b[0] ^ 0xFF]))

    first, again, err = _damage_and_repack(source, tok_dir, caplog, flip)
    assert not again.cached and "damaged token cache" in err and "heldout.bin" in err
    _assert_whole(again, ref)


def test_old_manifest_is_checked_by_its_token_counts(tmp_path, home, tok_dir, caplog):
    """A manifest written before the integrity fields: whole, it is used as it is (no rebuild, no warning);
    truncated, its size no longer matches tokens x dtype size and it is rebuilt."""
    source = _gsm8k_source(tmp_path)
    packed = prepare.pack_domain(source, tok_dir, where="domains.math")
    path = packed.folder / "manifest.json"
    old = json.loads(path.read_text())
    assert "integrity" in old
    del old["integrity"]
    path.write_text(json.dumps(old))
    caplog.clear()
    same = prepare.pack_domain(source, tok_dir, where="domains.math")
    assert same.cached and _logged(caplog) == ""
    with open(packed.folder / "train.bin", "r+b") as f:
        f.truncate(4000)
    again = prepare.pack_domain(source, tok_dir, where="domains.math")
    assert not again.cached and "damaged token cache" in _logged(caplog)
    assert len(again.tokens("train")) == old["splits"]["train"]["tokens"]


def test_unreadable_manifest_is_rebuilt(tmp_path, home, tok_dir, caplog):
    """A truncated manifest.json (a JSONDecodeError before) is a damaged entry too."""
    source = _gsm8k_source(tmp_path)
    first, again, err = _damage_and_repack(
        source, tok_dir, caplog, lambda f: (f / "manifest.json").write_text((f / "manifest.json").read_text()[:50]))
    assert not again.cached and "damaged token cache" in err and "manifest.json" in err
    assert len(again.tokens("train")) == again.manifest["splits"]["train"]["tokens"]


def test_tokens_refuse_a_file_damaged_after_preparation(tmp_path, home, tok_dir):
    """A trial opens the folder the prepare job checked: a file cut since then is an error naming it, not a
    shorter token stream (a crash, so the trial is retried once the next session's prepare job rebuilt it)."""
    packed = prepare.pack_domain(_gsm8k_source(tmp_path), tok_dir, where="domains.math")
    with open(packed.folder / "train.bin", "r+b") as f:
        f.truncate(4000)
    with pytest.raises(prepare.DamagedCache, match="damaged token cache") as e:
        packed.tokens("train")
    assert str(packed.folder / "train.bin") in str(e.value)


def _copy_demo_caches(session_home: Path, home: Path) -> None:
    """The demo tokenizer and base from the session's home (``tokenizers/``, ``models/``, finished entries only:
    a name starting with '.' is a folder another test is still building), so the study does not train them
    again. Not the session's token caches: this test checks a rebuild against the tokens its own first session
    packed (another test's Qwen2 checkpoint with the demo tokenizer's files caches demo:math tokenized by
    Qwen2Tokenizer under the same key; see docs/LOG.md, 2026-12-01 third session)."""
    for sub in ("tokenizers", "models"):
        root = session_home / sub
        for entry in sorted(root.iterdir()) if root.is_dir() else []:
            if not entry.name.startswith(".") and entry.is_dir():
                shutil.copytree(entry, home / sub / entry.name, ignore=shutil.ignore_patterns("*.lock", ".*"))


@pytest.mark.slow
def test_study_rebuilds_a_damaged_cache(tmp_path):
    """End to end: a study's math tokens truncated to 4,000 bytes between two sessions; the second session's
    prepare job rebuilds them (its log names the folder) and its new trial trains on the manifest's token count
    (before: 2,000 tokens, 1.15 epochs, recorded ok)."""
    home = tmp_path / "home"
    _copy_demo_caches(Path(os.environ["AUTOTUNE_HOME"]), home)
    env = {**os.environ, "AUTOTUNE_HOME": str(home), "COLUMNS": "200"}

    def search(trials: int) -> None:
        path = write_space(tmp_path, tiny_space("cachefault", trials=trials))
        proc = subprocess.run([sys.executable, "-m", "autotune.cli", "search", str(path), "--quiet"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    search(1)
    run = tmp_path / "runs" / "cachefault"
    math = Path(json.loads((run / "prepare" / "result.json").read_text())["domains"]["math"])
    manifest_tokens = json.loads((math / "manifest.json").read_text())["splits"]["train"]["tokens"]
    with open(math / "train.bin", "r+b") as f:
        f.truncate(4000)
    search(2)
    assert "damaged token cache" in (run / "prepare" / "worker.log").read_text()
    assert (math / "train.bin").stat().st_size == manifest_tokens * 2
    results = sorted(run.glob("trials/*/result.json"), key=lambda p: p.stat().st_mtime)
    assert len(results) == 2
    train = json.loads(results[-1].read_text())["train"]
    drawn = train["tokens_per_domain"]["math"]
    assert train["epochs_per_domain"]["math"] == pytest.approx(drawn / manifest_tokens, abs=1e-3)
    assert train["epochs_per_domain"]["math"] < 0.01


# ----------------------------------------------------------------------------------------------- #9 huge documents
_PACK_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from autotune.config.sources import PIECE_BYTES, PathSource
    from autotune.data.prepare import pack_domain
    from autotune.errors import UserError
    from autotune.testing import own_peak_rss_kib
    if __name__ == "__main__":
        try:
            p = pack_domain(PathSource(**json.loads(sys.argv[1])), Path(sys.argv[2]), where="domains.big")
            print(json.dumps({"folder": str(p.folder), "manifest": p.manifest}))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        finally:  # this process's peak (and any tokenizing process's): what the reader and tokenizer held
            peak = max(own_peak_rss_kib(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
            print(f"peak_rss_kib {peak}", file=sys.stderr)
""")


def _pack_in_subprocess(source: dict, tok_dir: Path, home: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Pack ``source`` in a fresh process (one tokenizing process); return it and its peak RSS in bytes, as the
    process measured itself at exit (its own VmHWM, the kernel's high-water mark of its memory map)."""
    proc = subprocess.run([sys.executable, "-c", _PACK_SCRIPT, json.dumps(source), str(tok_dir)], capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "AUTOTUNE_HOME": str(home), "AUTOTUNE_TOKENIZE_WORKERS": "1"})
    found = re.findall(r"^peak_rss_kib (\d+)$", proc.stderr, re.M)
    assert found, proc.stdout + proc.stderr
    return proc, int(found[-1]) * 1024


@pytest.mark.slow
def test_one_huge_jsonl_line_stays_in_bounded_memory(tmp_path, tok_dir):
    """The issue's case: a jsonl whose only line holds a 20 MB text. Before: ~4.9 GB peak RSS, then "too few
    documents (1)". Now: the text is tokenized in pieces, the peak stays under PEAK_RSS_BOUND, and the answer
    is the same clear error (one document cannot make a train and a held-out split)."""
    big = tmp_path / "big.jsonl"
    words = (" ".join(r["question"] for r in _records(200)) + " ").encode()
    text = (words * (20_000_000 // len(words) + 1))[:20_000_000].decode()
    big.write_text(json.dumps({"text": text}) + "\n")
    proc, peak = _pack_in_subprocess({"path": str(big)}, tok_dir, tmp_path / "home")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "too few documents (1)" in proc.stderr and "Traceback" not in proc.stderr
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"


def test_a_line_above_max_record_bytes_is_refused_while_reading(tmp_path, tok_dir):
    """A jsonl line longer than ``max_record_bytes`` is refused as it is read (the reader never holds more
    than the bound): one line naming the file, the line and the field."""
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"text": "x" * 3_000_000}) + "\n" + json.dumps({"text": "small"}) + "\n")
    proc, peak = _pack_in_subprocess({"path": str(big), "max_record_bytes": 1 << 20}, tok_dir, tmp_path / "home")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "line 1 is longer than max_record_bytes" in proc.stderr and str(big) in proc.stderr
    assert "domains.big.source.max_record_bytes" in proc.stderr


@pytest.mark.slow
def test_plain_text_without_separators_stays_in_bounded_memory(tmp_path, tok_dir):
    """A 10 MB plain-text file with no blank lines (one document by the text format's rule) and a 4 MB file
    with no newline at all, beside a file of ordinary paragraphs. Before: each huge document held whole
    (~200 bytes of memory per byte of text while tokenizing). Now: tokenized in pieces, peak RSS under the
    bound (before: 3.3 GB for a 16 MB file), each stays one document (one EOS, one split) and its tokens decode back to its text."""
    data = tmp_path / "data"
    data.mkdir()
    recs = _records(600)
    lines = "".join(r["question"] + "\n" for r in recs).encode()
    (data / "a_book.txt").write_bytes((lines * (10_000_000 // len(lines) + 1))[:10_000_000].rsplit(b"\n", 1)[0] + b"\n")
    words = " ".join(r["answer"].replace("\n", " ") for r in recs).encode()
    (data / "b_oneline.txt").write_bytes((words * (4_000_000 // len(words) + 1))[:4_000_000].rsplit(b" ", 1)[0])
    (data / "c_paragraphs.txt").write_text("\n\n\n".join(r["question"] for r in recs[:300]) + "\n")
    proc, peak = _pack_in_subprocess({"path": str(data)}, tok_dir, tmp_path / "home")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"
    m = json.loads(proc.stdout)["manifest"]
    assert m["splits"]["train"]["documents"] + m["splits"]["heldout"]["documents"] == 2 + 300
    assert m["pieces"]["documents_in_pieces"] == 2 and m["pieces"]["piece_bytes"] == PIECE_BYTES
    # the two huge documents, decoded from the tokens, are the files' texts
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    packed = prepare.PackedDomain(Path(json.loads(proc.stdout)["folder"]))
    docs = []
    for split in ("train", "heldout"):
        ids = np.asarray(packed.tokens(split))
        ends = np.flatnonzero(ids == tok.eos_token_id)
        starts = np.concatenate([[0], ends[:-1] + 1])
        docs += [(b - a, a, ids) for a, b in zip(starts, ends, strict=True)]
    longest = sorted(docs, key=lambda d: d[0])[-2:]
    texts = {tok.decode(ids[a:a + n].tolist()) for n, a, ids in longest}
    assert texts == {(data / "a_book.txt").read_text().rstrip("\n"), (data / "b_oneline.txt").read_text()}


def _documents(packed: prepare.PackedDomain) -> list[tuple[int, ...]]:
    """Each document's tokens (EOS included), from both splits, in a fixed order."""
    eos = packed.manifest["eos_token_id"]
    out = []
    for split in ("train", "heldout"):
        ids = np.asarray(packed.tokens(split))
        ends = np.flatnonzero(ids == eos)
        out += [tuple(ids[a:b + 1].tolist()) for a, b in zip(np.concatenate([[0], ends[:-1] + 1]), ends, strict=True)]
    return sorted(out)


def test_pieces_tokenize_like_whole_documents(tmp_path, home, tok_dir):
    """``piece_bytes`` only bounds memory: cut at whitespace, a byte-level BPE gives each document in 1 KiB
    pieces the same tokens as whole (one EOS each), in the same splits (the whole text's hash); a piece_bytes
    set by hand stays in the cache key."""
    recs = _records(300)
    path = tmp_path / "long.jsonl"  # documents of ~5-20 KB: several pieces each at 1 KiB
    path.write_text("".join(json.dumps({"text": " ".join(r["question"] + "\n" + r["answer"]
                                                         for r in recs[i:i + 30])}) + "\n" for i in range(0, 300, 3)))
    whole = prepare.pack_domain(PathSource(path=str(path)), tok_dir, where="domains.math")
    pieces = prepare.pack_domain(PathSource(path=str(path), piece_bytes=1024), tok_dir, where="domains.math")
    assert pieces.folder != whole.folder and pieces.manifest["pieces"]["documents_in_pieces"] == 100
    assert whole.manifest["pieces"]["documents_in_pieces"] == 0
    assert _documents(pieces) == _documents(whole)
    m, w = pieces.manifest["splits"], whole.manifest["splits"]
    assert [m[s]["source_hash"] for s in m] == [w[s]["source_hash"] for s in w]
    for s in ("train", "heldout"):
        assert np.array_equal(np.asarray(pieces.tokens(s)), np.asarray(whole.tokens(s))), s
    assert m["train"]["documents"] + m["heldout"]["documents"] == 100 == w["train"]["documents"] + w["heldout"]["documents"]


@pytest.mark.parametrize("field,value", [("piece_bytes", 0), ("piece_bytes", -5), ("piece_bytes", "big"),
                                         ("piece_bytes", True), ("piece_bytes", 10), ("max_record_bytes", 0),
                                         ("max_record_bytes", 1.5), ("max_record_bytes", False)])
def test_size_bounds_validate(tmp_path, field, value):
    """The new source fields are whole numbers of bytes (at least 1 KiB): anything else is one error naming
    the field and the value, at ``validate`` time."""
    space = tiny_space("bounds")
    space["domains"]["math"] = {"source": {"path": "math.jsonl", field: value}, "role": "target"}
    path = write_space(tmp_path, space)
    with pytest.raises(UserError) as e:
        load_space(path)
    assert f"domains.math.source.{field}" in str(e.value), str(e.value)


def test_size_bounds_reach_every_stage(tmp_path, home):
    """A space with both fields set validates, survives the worker's copy (``job_space`` -> ``SearchSpace``),
    reaches the reader and the cache key, and a dry run builds every stage's configuration with it."""
    from autotune.config.space import SearchSpace
    from autotune.data.sources import open_source
    from autotune.search.study import job_space

    space = tiny_space("bounds")
    (tmp_path / "math.jsonl").write_text("".join(json.dumps({"text": r["question"]}) + "\n" for r in _records(50)))
    space["domains"]["math"] = {"source": {"path": "math.jsonl", "piece_bytes": 4096, "max_record_bytes": 1 << 22},
                                "role": "target"}
    path = write_space(tmp_path, space)
    loaded = load_space(path)
    worker = SearchSpace.model_validate({**job_space(loaded), "source_file": str(path)})
    source = worker.domains["math"].source
    assert (source.piece_bytes, source.max_record_bytes) == (4096, 1 << 22)
    assert open_source(source, where="domains.math", cache=home).key()["piece_bytes"] == 4096
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "search", str(path), "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------- review of the pieces
def _whole_tokens(tok_dir: Path, texts: list[str]) -> list[int]:
    """The tokens of whole documents, each followed by EOS: what packing gave before documents came in pieces."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    out: list[int] = []
    for t in texts:
        out += tok(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [tok.eos_token_id]
    return out


def _no_whitespace_texts() -> dict[str, str]:
    import base64
    import random

    rng = random.Random(5)
    js = "".join(f"function f{i}(a,b){{return a*{i}+b.x[{i % 7}]||null}};var v{i}=f{i}(1,{{x:[]}});"
                 for i in range(400))
    return {"cjk": "中" * 5000 + "文字" * 900, "base64": base64.b64encode(rng.randbytes(12_000)).decode(),
            "js": js, "letters": "a" * 1024 + "b" * 3000}


def test_pieces_of_text_without_whitespace(tmp_path, home, tok_dir):
    """Review #1: a buffer of exactly ``piece_bytes`` with no ASCII whitespace in its second half made ``_cut``
    read past its end (IndexError: CJK text, base64, minified JS). Now every piece is at most ``piece_bytes``,
    never splits a character, the pieces join back to the text, and (cut where a byte-level BPE's pre-tokens
    change) the packed tokens are the whole documents' tokens."""
    from autotune.data import sources

    assert sources._cut(b"a" * 1024, 1024) == 1024
    assert sources._cut(b"a" * 1025, 1024) == 1024
    assert sources._cut(b"x" * 700 + b"123" + b"y" * 400, 1024) == 703  # the last pre-token change: 3|y
    assert sources._cut("中".encode() * 400, 1024) == 1023  # a character start
    for name, text in _no_whitespace_texts().items():
        for piece_bytes in (1024, 3000):
            pieces = list(sources.split_text(text, piece_bytes))
            assert "".join(p[0] for p in pieces) == text, name
            assert all(len(p[0].encode()) <= piece_bytes for p in pieces) and len(pieces) > 1, name
            assert [p[1] for p in pieces] == [False] * (len(pieces) - 1) + [True], name
    data = tmp_path / "nows"
    data.mkdir()
    texts = _no_whitespace_texts()
    del texts["letters"]  # one letter repeated: no pre-token boundary to cut at (a character boundary is used)
    texts.update({f"z{i}": r["question"] for i, r in enumerate(_records(12))})  # short ones: both splits filled
    for name, text in texts.items():
        (data / f"{name}.txt").write_text(text)
    packed = prepare.pack_domain(PathSource(path=str(data), format="file", piece_bytes=3000, heldout_fraction=0.4),
                                 tok_dir, where="domains.math")
    assert packed.manifest["pieces"]["documents_in_pieces"] == 3
    got = np.concatenate([np.asarray(packed.tokens(s)) for s in ("train", "heldout")])
    want = _whole_tokens(tok_dir, [texts[n] for n in sorted(texts)])
    assert sorted(_documents(packed)) == sorted(_split_docs(want, packed.manifest["eos_token_id"]))
    assert len(got) == len(want)


def _split_docs(ids: list[int], eos: int) -> list[tuple[int, ...]]:
    out, cur = [], []
    for i in ids:
        cur.append(i)
        if i == eos:
            out.append(tuple(cur))
            cur = []
    return out


def _old_split(texts: list[str], fraction: float) -> dict[str, tuple[str, list[str]]]:
    """The split rule before pieces (3ca2941^), in three lines: each whole text's sha256 decides its split;
    a split's source_hash is the sha256 of its documents' bytes."""
    from autotune.data.sources import is_heldout

    out = {}
    for split in ("train", "heldout"):
        docs = [t for t in texts if t.strip() and is_heldout(t, fraction) == (split == "heldout")]
        out[split] = (hashlib.sha256("".join(docs).encode()).hexdigest()[:16], docs)
    return out


def _long_documents(n: int = 12) -> list[str]:
    """Documents of 70-130 KB (above the default piece_bytes), paragraphs of gsm8k text."""
    recs = _records(400)
    out = []
    for i in range(n):
        paras, size = [], 0
        j = i * 7
        while size < 70_000 + 5_000 * i:
            r = recs[j % len(recs)]
            paras.append(r["question"] + "\n" + r["answer"])
            size += len(paras[-1]) + 1
            j += 1
        out.append("\n".join(paras))
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
def test_long_documents_keep_their_split(tmp_path, home, tok_dir, fmt):
    """Review #2: a document longer than ``piece_bytes`` was assigned its split by its first piece's hash, not
    the whole text's as before 3ca2941: other splits, another source_hash, so studies' run keys changed. Now
    the whole text decides (jsonl: the record is whole; plain text: hashed as it streams, its pieces held till
    its end), source_hash and tokens are those of the old rule, and the cache key at default bounds is the
    old key (no ``piece_bytes``: existing token caches are reused)."""
    from autotune.data import sources

    fraction = 0.4
    texts = _long_documents()
    first_piece = [next(iter(sources.split_text(t, PIECE_BYTES)))[0] for t in texts]
    assert any(sources.is_heldout(f, fraction) != sources.is_heldout(t, fraction)
               for f, t in zip(first_piece, texts, strict=True)), "no document whose first piece splits otherwise"
    path = tmp_path / f"long.{'jsonl' if fmt == 'jsonl' else 'txt'}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    else:
        path.write_text("\n\n\n".join(texts) + "\n")
    source = PathSource(path=str(path), heldout_fraction=fraction)
    packed = prepare.pack_domain(source, tok_dir, where="domains.math")
    old = _old_split(texts, fraction)
    m = packed.manifest
    assert m["pieces"]["documents_in_pieces"] == len(texts)
    for split, (source_hash, docs) in old.items():
        assert m["splits"][split]["documents"] == len(docs), split
        assert m["splits"][split]["source_hash"] == source_hash, split
        assert np.array_equal(np.asarray(packed.tokens(split)), _whole_tokens(tok_dir, docs)), split
    key = sources.open_source(source, where="domains.math", cache=home).key()
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert key == {"files": [[fmt, path.stat().st_size, sha]], "text_field": ["text"], "join": "\n",
                   "heldout": fraction, "version": sources.DATA_VERSION}


def test_long_streamed_document_spills_to_disk(tmp_path, home, tok_dir, monkeypatch):
    """A streamed document longer than ``HOLD_BYTES`` (held until its end to hash it whole) goes on to an
    unlinked temporary file: memory stays bounded, the pieces come back in order, split and tokens as whole."""
    from autotune.data import sources

    monkeypatch.setattr(sources, "HOLD_BYTES", 78_000)
    texts = _long_documents(4) + [r["question"] for r in _records(12)]
    above = sum(len(t.encode()) > 78_000 for t in texts)
    assert 0 < above < 4
    path = tmp_path / "long.txt"
    path.write_text("\n\n\n".join(texts) + "\n")
    spilled = []
    real = sources.tempfile.TemporaryFile
    monkeypatch.setattr(sources.tempfile, "TemporaryFile", lambda **kw: spilled.append(kw) or real(**kw))
    packed = prepare.pack_domain(PathSource(path=str(path), heldout_fraction=0.4), tok_dir, where="domains.math")
    assert len(spilled) == above  # the documents above HOLD_BYTES, each in a temporary file under the home
    assert all(Path(kw["dir"]).is_relative_to(home) for kw in spilled)
    for split, (source_hash, docs) in _old_split(texts, 0.4).items():
        assert packed.manifest["splits"][split]["source_hash"] == source_hash, split
        assert np.array_equal(np.asarray(packed.tokens(split)), _whole_tokens(tok_dir, docs)), split
    assert not [p for p in home.rglob(".pieces-*")]


def test_unicode_blank_lines_separate_documents(tmp_path, home):
    """Review #4: blank lines were found by ``bytes.strip()``, so a line of U+3000 or NBSP (or \\x1c) was text
    and two documents became one. As before 3ca2941 (``str.strip()``), they are blank lines."""
    from autotune.data.sources import open_source

    path = tmp_path / "cjk.txt"
    path.write_text("第一\n\u3000\n\u00a0\n第二\n\u3000\n第二b\n\x1c\n \n第三\n")
    docs = [t for _, t in open_source(PathSource(path=str(path)), where="domains.zh", cache=home).documents()]
    assert docs == ["第一", "第二\n\u3000\n第二b", "第三"]

