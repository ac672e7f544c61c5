"""Where a training run's weights and optimizer state live: sharded over processes (FSDP2), gathered whole,
saved to and resumed from a train state (``folder/state.pt``).

``train`` (autotune/train/trainer.py) saves a state every ``state_every_steps`` steps / ``state_every_s``
seconds and resumes from a matching one; ``truncate_log`` cuts the run's log back to the resumed step.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import torch

from autotune.errors import TrialFailed
from autotune.paths import write_text_atomic
from autotune.records import read_jsonl

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- state
class TrainState:
    """A resumable state in ``folder/state.pt``: weights, optimizer, step, and the summary so far.

    Written to a temp file and renamed, so a kill leaves the previous state whole. A state made by a
    different run (other config, mixture or data) is ignored, never loaded. It holds only tensors and plain
    containers of numbers and strings, so it is read with ``weights_only=True``: a ``train_state/`` in a
    shared ``runs/`` folder is a file anyone may have written, and a pickle that would run code (or any
    other Python object) is refused, never unpickled, and the run trains afresh.
    """

    def __init__(self, folder: Path | None, key: str) -> None:
        folder = Path(folder) if folder is not None else None
        self.folder, self.key = folder, key
        self.path = folder / "state.pt" if folder else None

    def load(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only refused a Python object: never unpickled
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            _log.warning("autotune: ignoring train state %s: not a plain train state (it holds Python objects, "
                         "which are never loaded: %s); training from the start", self.path, first[:200])
            return None
        except Exception as e:  # a state we cannot read is not worth failing the run for
            _log.warning("autotune: ignoring unreadable train state %s: %s", self.path, e)
            return None
        if not isinstance(state, dict) or state.get("key") != self.key:
            _log.warning("autotune: ignoring train state %s: made by a different run", self.path)
            return None
        return state

    def save(self, state: dict) -> None:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".state.pt.{os.getpid()}"
        torch.save({**state, "key": self.key}, tmp)
        os.replace(tmp, self.path)


def truncate_log(path: Path, steps_done: int) -> None:
    """Keep the log lines of steps already in the resumed state; later ones will be written again. A line
    that is not JSON (cut by a kill in the middle of a write, bad bytes) is dropped: kept, it would fail this
    resume and every later one. Rewritten atomically: a kill here leaves the old log."""
    path = Path(path)
    if not path.exists():
        return
    keep = [row for row in read_jsonl(path) if isinstance(row.get("step"), int) and row["step"] < steps_done]
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in keep))


# ----------------------------------------------------------------------------------------------- FSDP
def fsdp_shard(model: torch.nn.Module, device: torch.device, world: int) -> None:
    """FSDP2 in place: each decoder layer (HF's ``_no_split_modules`` classes) is one all-gather unit, the
    root (embeddings, final norm, output head) another. Parameters move to ``device`` shard by shard.
    Weights are all-gathered in fp32 and bf16 comes from the same autocast as without sharding (not FSDP's
    bf16 parameters, which would also make norms and the residual stream bf16): sharding changes where the
    numbers live, not the run's arithmetic."""
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise TrialFailed("failed", f"sharding fsdp needs FSDP2 (torch >= 2.6; this is {torch.__version__})") from None

    mesh = init_device_mesh(device.type, (world,))
    unit_names = set(getattr(model, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if type(m).__name__ in unit_names and m is not model]
    if not units:
        raise TrialFailed("failed", f"fsdp: {type(model).__name__} names no decoder layer class "
                                    "(_no_split_modules) to shard by; use sharding ddp")
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_states(model: torch.nn.Module, opt: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Whole (unsharded) model and optimizer states on CPU, on the main process ({} elsewhere). Every
    process must call it: the shards are gathered."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, opt, options=options) if opt is not None else None)


def gather_weights_into(model: torch.nn.Module, target: torch.nn.Module | None) -> None:
    """The sharded ``model``'s whole weights into ``target`` (main process; None elsewhere). Collective."""
    weights, _ = full_states(model, None)
    if target is not None:
        target.load_state_dict(weights)


def load_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, sharded: bool) -> None:
    """A whole optimizer state (``full_states``'s) into ``opt``, over the shards of ``model`` if ``sharded``."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(state)
