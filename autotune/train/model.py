"""Base checkpoints: load a local HF causal LM (fp32, CPU), find a Hub model in the local HF cache, read what
its pre-training ended at, change its RoPE base. The demo's base model is built in ``autotune/demo/base.py``;
here every base is a folder (a Hub model's is its cached snapshot)."""

from __future__ import annotations

from pathlib import Path

from autotune.errors import UserError


def load_causal_lm(path: Path):
    """A local HF checkpoint (model + tokenizer) in fp32 on CPU; a clear error if it is not one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise UserError("not a Hugging Face checkpoint folder (no config.json)", field="base_model", value=str(path))
    try:  # SDPA attention (flash / memory-efficient kernels on GPU); a model without it keeps its default
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    except (ValueError, ImportError):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# What to tell a user whose Hub model is not in the cache: autotune's workers never download.
HUB_FIX = ("autotune reads Hub models from the local Hugging Face cache only (no hub is reached); on a machine "
           "with access run `hf download {repo} --revision {revision}` (the cache is $HF_HUB_CACHE, by default "
           "$HF_HOME/hub = ~/.cache/huggingface/hub), copy the cache here, or give base_model as a local folder")


def resolve_hub_base(repo_id: str, revision: str = "main", *, cache_dir: str | Path | None = None,
                     field: str = "base_model.hf") -> tuple[Path, str]:
    """A Hub model's cached snapshot folder and the commit ``revision`` resolves to, from the local HF cache
    (``huggingface_hub.snapshot_download(..., local_files_only=True)``: the cache's ``refs/<revision>`` or a
    commit's ``snapshots/<sha>``). ``cache_dir``: HF's own default (``$HF_HUB_CACHE``) unless given.

    Not cached (or cached in part): a ``UserError`` naming ``field`` and the id, saying how to fill the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    where = f"{repo_id}@{revision}"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError as e:  # (its subclass IncompleteSnapshotError: a download cut short)
        problem = ("the cached snapshot of this Hub model is incomplete" if type(e).__name__ == "IncompleteSnapshotError"
                   else "this Hub model (revision) is not in the local Hugging Face cache")
        raise UserError(f"{problem}; {HUB_FIX.format(repo=repo_id, revision=revision)}", field=field, value=where) from None
    except HFValidationError as e:
        raise UserError(f"not a Hub model id: {e}", field=field, value=repo_id) from None
    if not (folder / "config.json").exists():
        raise UserError("the cached snapshot of this Hub model has no config.json (not a transformers model, or "
                        "downloaded in part); " + HUB_FIX.format(repo=repo_id, revision=revision), field=field, value=where)
    return folder, folder.name  # HF's cache layout: snapshots/<commit sha>/


def hub_origin(folder: Path) -> tuple[str, str] | None:
    """``(repo id, commit)`` when ``folder`` is a snapshot in an HF cache (``models--ORG--NAME/snapshots/SHA``),
    else None: what a checkpoint trained from it names as its ``base_model``."""
    folder = Path(folder)
    repo = folder.parent.parent.name
    if folder.parent.name != "snapshots" or not repo.startswith("models--"):
        return None
    return repo.removeprefix("models--").replace("--", "/"), folder.name


def base_final_lr(path: Path) -> float | None:
    """The learning rate the base run ended at, for ``schedule.start_lr: base``: from HF Trainer's
    ``trainer_state.json`` (its last logged ``learning_rate``) or the demo base's ``pretrain_log.jsonl``.

    A damaged ``trainer_state.json`` is a ``DamagedFile`` naming it (the base's record cannot be guessed);
    a cut last line of ``pretrain_log.jsonl`` (a killed writer) is skipped with a warning: the last whole line's."""
    from autotune.records import DamagedFile, read_json, read_jsonl

    state = path / "trainer_state.json"
    if state.exists():
        fix = "restore it, or move it out of the base folder and give schedule.start_lr as a number"
        doc = read_json(state, fix)
        history = doc.get("log_history", []) if isinstance(doc, dict) else None
        if not isinstance(history, list):
            raise DamagedFile(f"the file is damaged: log_history is not a list; {fix}", file=state)
        lrs = [h["learning_rate"] for h in history if isinstance(h, dict) and _number(h.get("learning_rate"))]
        if lrs:
            return float(lrs[-1])
    lrs = [row["lr"] for row in read_jsonl(path / "pretrain_log.jsonl", warn=True) if _number(row.get("lr"))]
    return float(lrs[-1]) if lrs else None


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def set_rope_theta(model, rope_theta: float) -> None:
    """Change a RoPE model's base (long-context extension) in place: config and rotary tables."""
    cfg = model.config
    if getattr(cfg, "rope_parameters", None) is not None:
        cfg.rope_parameters = {**cfg.rope_parameters, "rope_theta": float(rope_theta)}
    else:
        cfg.rope_theta = float(rope_theta)
    for name, module in model.named_modules():
        if name.endswith("rotary_emb"):
            fresh = type(module)(config=cfg).to(next(model.parameters()).device)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], fresh)
