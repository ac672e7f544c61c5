"""Where autotune keeps what it builds once and reuses: ``$AUTOTUNE_HOME`` (default ``~/.cache/autotune``).

Under it: ``tokens/`` (packed token files), ``tokenizers/`` and ``models/`` (the demo's), ``eval-cache/``,
``eval-data/``, ``lm-eval-index/``, ``hashes/`` (memoised checkpoint hashes). Everything there is keyed by
content, so deleting the folder only costs time.

Permissions: everything autotune writes (study folders, caches, reports, gate outputs) gets the mode a plain
``open`` / ``mkdir`` gives under the user's umask (0644 / 0755 under umask 022, 0664 / 0775 under 002), so a
``runs/`` or ``$AUTOTUNE_HOME`` shared by a group works. Temp files and folders (``mkstemp``, ``mkdtemp``,
which make 0600 / 0700) and files libraries write with modes of their own (safetensors writes 0600) go through
``mkstemp``, ``mkdtemp`` and ``follow_umask`` here.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def home() -> Path:
    """The cache root: ``$AUTOTUNE_HOME``, else ``$XDG_CACHE_HOME/autotune``, else ``~/.cache/autotune``."""
    env = os.environ.get("AUTOTUNE_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "autotune"


def umask() -> int:
    """The process's umask (read without changing it where Linux allows: no race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _umask_mode(st_mode: int, folder: bool, mask: int | None = None) -> int:
    """The mode ``open`` / ``mkdir`` would give under the umask; an executable file stays executable."""
    full = 0o777 if folder or st_mode & 0o100 else 0o666
    return full & ~(umask() if mask is None else mask)


def follow_umask(path: Path) -> Path:
    """Give ``path`` (a folder: it and everything under it, symlinks left alone) the umask's modes."""
    path = Path(path)
    todo = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    mask = umask()
    for p in todo:
        st = p.lstat()
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(p, _umask_mode(st.st_mode, stat.S_ISDIR(st.st_mode), mask))
    return path


def mkstemp(dir: Path, prefix: str, suffix: str = ".tmp") -> tuple[int, str]:
    """``tempfile.mkstemp`` whose file has the umask's mode (mkstemp makes 0600): for a temp file that is
    renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)
    os.fchmod(fd, _umask_mode(0, folder=False))
    return fd, tmp


def write_text_atomic(path: Path, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8) through a temp file beside ``path`` and a rename, so a kill never leaves half a
    file; the file gets the umask's mode. ``fsync``: on disk before the rename (records a study resumes from)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mkdtemp(dir: Path, prefix: str) -> Path:
    """``tempfile.mkdtemp`` with the umask's mode (mkdtemp makes 0700): for a folder renamed into place."""
    tmp = Path(tempfile.mkdtemp(dir=dir, prefix=prefix))
    tmp.chmod(_umask_mode(0, folder=True))
    return tmp


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; rename it to ``final`` when the block finishes (so a present
    ``final`` is always whole). Another process that finished first wins: its copy is identical. What the
    block wrote gets the umask's modes (libraries such as safetensors write 0600)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = mkdtemp(final.parent, prefix=f".{final.name}.")
    try:
        yield tmp
        follow_umask(tmp)
        if final.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
