"""Frozen, JSON-round-trippable records passed between stages."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Proposal:
    """What one trial trains: a mixture (shares summing to 1), a schedule, a seed and, when the space
    searches long-context knobs, the context (``seq_len``, ``rope_theta``)."""

    mixture: dict[str, float]
    schedule: dict[str, Any]
    seed: int
    context: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Proposal:
        return cls(mixture=dict(d["mixture"]), schedule=dict(d["schedule"]), seed=int(d["seed"]),
                   context=dict(d.get("context") or {}))

    def key(self) -> dict[str, Any]:
        """What determines the run, rounded so float noise below 1e-9 does not split identical proposals."""
        return {"mixture": {k: round(v, 9) for k, v in sorted(self.mixture.items())},
                "schedule": {k: round(v, 12) if isinstance(v, float) else v for k, v in sorted(self.schedule.items())},
                "seed": self.seed,
                **({"context": {k: round(v, 9) if isinstance(v, float) else v for k, v in sorted(self.context.items())}}
                   if self.context else {})}


@dataclass(frozen=True)
class RunResult:
    """What a worker leaves in ``result.json``: status ``ok`` | ``diverged`` | ``oom`` | ``failed``."""

    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    eval_meta: dict[str, Any] = field(default_factory=dict)
    bad_input: bool = False  # the failure is the user's input (exit 2), not the run

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunResult:
        return cls(**{k: d[k] for k in ("status", "reason", "metrics", "stderr", "train", "eval_meta", "bad_input")
                      if k in d})


def digest(obj: Any, n: int = 16) -> str:
    """Stable short hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temp file + rename, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
