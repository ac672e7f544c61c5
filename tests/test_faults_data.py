"""Faults in the data stage: a damaged token cache (issue 15 #5) and documents too large to hold (#9).

Real files throughout: caches packed by the real ``pack_domain`` with a real byte-level BPE, then truncated,
bit-flipped or stripped of their new manifest fields on disk; a real 20 MB single-line jsonl and real
plain-text files without separators, packed in a subprocess whose peak RSS (``getrusage(RUSAGE_CHILDREN)``)
is checked; the end-to-end test runs ``autotune search`` twice around a truncated ``train.bin``.
"""

from __future__ import annotations

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
from autotune.testing import REPO, tiny_space, write_space

BENCH = REPO.parent / "shared" / "data" / "benchmarks"
if not (BENCH / "gsm8k" / "train.jsonl").exists():
    pytest.skip(f"the shared benchmark data is not at {BENCH}", allow_module_level=True)

pytestmark = pytest.mark.faults

# Peak RSS allowed for packing one huge document. The process itself (Python, numpy, transformers, the
# tokenizer) is ~250 MB here; a tokenization batch is at most CHUNK_BYTES (1 MiB) of text and costs ~220 MB
# in the fast tokenizer (measured: ~200 bytes of memory per byte of text); the reader holds at most two pieces.
# That is ~500-600 MB whatever the document's size; before the fix a 20 MB document took ~4.9 GB.
PEAK_RSS_BOUND = 1 << 30


def _records(n: int) -> list[dict]:
    with open(BENCH / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A real byte-level BPE (the demo's recipe) trained on a little gsm8k text: small and quick to build."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[prepare.EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([r["question"] for r in _records(300)], trainer=trainer)
    out = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=prepare.EOS, pad_token=prepare.EOS).save_pretrained(out)
    return out


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
def _damage_and_repack(source, tok_dir, capsys, damage) -> tuple[prepare.PackedDomain, prepare.PackedDomain, str]:
    first = prepare.pack_domain(source, tok_dir, where="domains.math")
    capsys.readouterr()
    damage(first.folder)
    again = prepare.pack_domain(source, tok_dir, where="domains.math")
    return first, again, capsys.readouterr().err


def _assert_whole(packed: prepare.PackedDomain, reference: dict[str, np.ndarray]) -> None:
    m = packed.manifest
    for split, ids in reference.items():
        got = np.asarray(packed.tokens(split))
        assert len(got) == m["splits"][split]["tokens"] == len(ids), split
        assert np.array_equal(got, ids), split


def test_truncated_train_bin_is_rebuilt(tmp_path, home, tok_dir, capsys):
    """The issue's case: train.bin truncated to 4,000 bytes. Before: the cache counted as valid (manifest.json
    exists) and ``tokens('train')`` held 2,000 tokens against the manifest's count. Now: a warning naming
    the folder, the entry rebuilt, every token back."""
    source = _gsm8k_source(tmp_path)
    ref = {}

    def truncate(folder: Path) -> None:
        ref.update({s: np.array(prepare.PackedDomain(folder).tokens(s)) for s in ("train", "heldout")})
        with open(folder / "train.bin", "r+b") as f:
            f.truncate(4000)

    first, again, err = _damage_and_repack(source, tok_dir, capsys, truncate)
    assert again.folder == first.folder and not again.cached
    assert "damaged token cache" in err and str(first.folder) in err and "train.bin" in err
    _assert_whole(again, ref)
    # and the rebuilt entry is whole: the next call uses it without a word
    third = prepare.pack_domain(source, tok_dir, where="domains.math")
    assert third.cached and "damaged" not in capsys.readouterr().err


def test_flipped_byte_is_caught_by_the_checksum(tmp_path, home, tok_dir, capsys):
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

    first, again, err = _damage_and_repack(source, tok_dir, capsys, flip)
    assert not again.cached and "damaged token cache" in err and "heldout.bin" in err
    _assert_whole(again, ref)


def test_old_manifest_is_checked_by_its_token_counts(tmp_path, home, tok_dir, capsys):
    """A manifest written before the integrity fields: whole, it is used as it is (no rebuild, no warning);
    truncated, its size no longer matches tokens x dtype size and it is rebuilt."""
    source = _gsm8k_source(tmp_path)
    packed = prepare.pack_domain(source, tok_dir, where="domains.math")
    path = packed.folder / "manifest.json"
    old = json.loads(path.read_text())
    assert "integrity" in old
    del old["integrity"]
    path.write_text(json.dumps(old))
    capsys.readouterr()
    same = prepare.pack_domain(source, tok_dir, where="domains.math")
    assert same.cached and capsys.readouterr().err == ""
    with open(packed.folder / "train.bin", "r+b") as f:
        f.truncate(4000)
    again = prepare.pack_domain(source, tok_dir, where="domains.math")
    assert not again.cached and "damaged token cache" in capsys.readouterr().err
    assert len(again.tokens("train")) == old["splits"]["train"]["tokens"]


def test_unreadable_manifest_is_rebuilt(tmp_path, home, tok_dir, capsys):
    """A truncated manifest.json (a JSONDecodeError before) is a damaged entry too."""
    source = _gsm8k_source(tmp_path)
    first, again, err = _damage_and_repack(
        source, tok_dir, capsys, lambda f: (f / "manifest.json").write_text((f / "manifest.json").read_text()[:50]))
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


@pytest.mark.slow
def test_study_rebuilds_a_damaged_cache(tmp_path):
    """End to end: a study's math tokens truncated to 4,000 bytes between two sessions; the second session's
    prepare job rebuilds them (its log names the folder) and its new trial trains on the manifest's token count
    (before: 2,000 tokens, 1.15 epochs, recorded ok)."""
    home = tmp_path / "home"
    session_home = Path(os.environ["AUTOTUNE_HOME"])
    if session_home.exists():  # reuse the session's demo tokenizer and base; never damage its tokens
        shutil.copytree(session_home, home, ignore=shutil.ignore_patterns("*.lock"))
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
    if __name__ == "__main__":
        try:
            p = pack_domain(PathSource(**json.loads(sys.argv[1])), Path(sys.argv[2]), where="domains.big")
            print(json.dumps({"folder": str(p.folder), "manifest": p.manifest}))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        finally:  # this process's peak (and any tokenizing process's): what the reader and tokenizer held
            peak = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
            print(f"peak_rss_kib {peak}", file=sys.stderr)
""")


def _pack_in_subprocess(source: dict, tok_dir: Path, home: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Pack ``source`` in a fresh process (one tokenizing process); return it and its peak RSS in bytes, as the
    process measured itself at exit (``getrusage`` ru_maxrss: the kernel's high-water mark, VmHWM)."""
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
    pieces the same tokens as whole (one EOS each); a long document's split is its first piece's, so the
    splits may differ, and the cache key holds ``piece_bytes``."""
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
