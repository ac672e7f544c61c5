"""Where autotune keeps what it builds once and reuses: ``$AUTOTUNE_HOME`` (default ``~/.cache/autotune``).

Under it: ``tokens/`` (packed token files), ``tokenizers/`` and ``models/`` (the demo's), ``eval-cache/``,
``eval-data/``, ``lm-eval-index/``, ``hashes/`` (memoised checkpoint hashes). Everything there is keyed by
content, so deleting the folder only costs time.
"""

from __future__ import annotations

import os
import shutil
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


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; rename it to ``final`` when the block finishes (so a present
    ``final`` is always whole). Another process that finished first wins: its copy is identical."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the finished folder is as readable as any other
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
