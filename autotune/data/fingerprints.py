"""File fingerprints for content-addressed cache keys: the sha256 of a file's bytes, remembered.

Hashes are remembered per file (``fingerprints/`` in the cache folder) and reused while the file's size,
mtime, ctime and inode are unchanged; an entry is trusted only if the file was last modified well before it
was hashed (git's "racy clean" rule), so a file rewritten within the file system's timestamp granularity is
hashed again.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from autotune.records import read_json, write_json_atomic

# A hash entry younger than this (file mtime to hashing time) is re-checked: timestamps are coarse
# (ext4/tmpfs take them from a clock that ticks every few milliseconds; FAT has 2 s).
_RACY_NS = 2_000_000_000
_HASH_BLOCK = 1 << 20


def _stat_id(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def file_sha256(path: Path, cache: Path | None) -> str:
    """sha256 of a file's bytes, remembered under ``cache/fingerprints`` while the file is unchanged."""
    path = path.resolve()
    entry_path = cache / "fingerprints" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json" if cache else None
    before = path.stat()
    if entry_path is not None and entry_path.exists():
        try:
            entry = read_json(entry_path)
            if entry["stat"] == _stat_id(before) and before.st_mtime_ns < entry["hashed_at_ns"] - _RACY_NS:
                return entry["sha256"]
        except (ValueError, KeyError, OSError):
            pass  # a damaged entry: hash again
    hashed_at = time.time_ns()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    sha = h.hexdigest()
    if entry_path is not None and _stat_id(path.stat()) == _stat_id(before):  # not written to while hashed
        entry_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(entry_path, {"file": str(path), "stat": _stat_id(before), "hashed_at_ns": hashed_at,
                                       "sha256": sha})
    return sha
