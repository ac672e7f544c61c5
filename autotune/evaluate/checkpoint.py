"""One checkpoint on one suite, as ``autotune eval`` and ``autotune gate`` run it: the inputs checked, the
held-out text of the suite's bits-per-byte entries tokenized, the suite run through the evaluator and its cache.

Imports nothing heavy at module level (the CLI imports it lazily anyway).
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from autotune.config.space import load_space
from autotune.config.suite import BACKENDS
from autotune.data.prepare import pack_domain
from autotune.errors import UserError
from autotune.evaluate.backends import Checkpoint
from autotune.evaluate.harness import EvalOptions, HeldoutTokens, run_suite
from autotune.evaluate.server import ServerError
from autotune.evaluate.suite import load_suite, require_code_permission
from autotune.hashing import tokenizer_hash


class EvalFailed(Exception):
    """An evaluation itself failed (model load, lm-eval, a model server): not bad input.

    ``detail`` is the traceback of a crash (None for a model server that would not start), for the log.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        self.detail = detail
        super().__init__(message)


def evaluate_checkpoint(checkpoint: Path, suite_path: Path, backend: str | None = None, output: Path | None = None,
                        allow_code_execution: bool = False, space_path: Path | None = None, no_cache: bool = False):
    """Evaluate ``checkpoint`` on the suite file ``suite_path``; returns the evaluator's ``SuiteResult``.

    ``output``: folder for the sample logs; ``space_path``: a search space whose domains give the held-out
    text of the suite's bits-per-byte entries. Raises ``UserError`` for bad input (before any model load),
    ``EvalFailed`` when the evaluation fails; ``KeyboardInterrupt`` passes through.
    """

    if backend is not None and backend not in BACKENDS:
        raise UserError(f"unknown backend (choose {', '.join(BACKENDS)})", field="--backend", value=backend)
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise UserError("not a Hugging Face checkpoint folder (no config.json)", field="CHECKPOINT", value=str(checkpoint))
    try:

        space = None
        if space_path is not None:

            space = load_space(space_path)
        suite = load_suite(suite_path, list(space.domains) if space else None)
        require_code_permission(suite, allow_code_execution, backend)  # before held-out text is packed
        heldout = heldout_tokens(suite, checkpoint, space)
        options = EvalOptions(backend=backend, use_cache=not no_cache, allow_code_execution=allow_code_execution)
        return run_suite(Checkpoint(checkpoint), suite, heldout=heldout, out_dir=output, options=options)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (a model server that would not start; a crash, with its traceback)
        if isinstance(e, ServerError):
            raise EvalFailed(f"{checkpoint}: {e}") from e
        raise EvalFailed(f"{checkpoint}: {type(e).__name__}: {e}", detail=traceback.format_exc()) from e


def heldout_tokens(suite, checkpoint: Path, space) -> dict[str, Any]:
    """Held-out tokens for the suite's bits-per-byte entries, tokenized with the checkpoint's tokenizer (cached)."""
    if not suite.bpb_entries:
        return {}

    out = {}
    for entry in suite.bpb_entries:
        source = entry.source
        if source is None and space is not None and entry.bpb in space.domains:
            source = space.domains[entry.bpb].source
            if not isinstance(source, str):  # relative paths are relative to the space file
                source = source.resolved(space.root)
        if source is None:
            raise UserError("a bits-per-byte entry needs held-out text: give --space SPACE.yaml (its domain's source) "
                            "or a source in the suite entry", file=suite.source_file,
                            field=f"{suite.where(entry)}.bpb", value=entry.bpb)
        packed = pack_domain(source, checkpoint, where=f"bpb.{entry.bpb}")
        seq_len = space.proxy.seq_len if space is not None else 1024
        fingerprint = f"{packed.manifest['splits']['heldout']['source_hash']}:{tokenizer_hash(checkpoint)}"
        out[entry.bpb] = HeldoutTokens(packed.tokens("heldout"), seq_len, fingerprint)
    return out
