"""What a study command's argument names: a search-space file or a study folder, either one for every command.

A ``.yaml`` / ``.yml`` path is a search space: its study folder is ``<search.runs_dir>/<name>``
(``autotune.search.study.study_dir``). A folder holding ``space.json`` is a study folder (``runs/<name>``,
as ``autotune search`` writes it); its space is rebuilt, when the command needs one, from the space file the
study was started from (``space.json``'s ``source_file``, what one would give instead) or else from the
folder's ``space.yaml`` (the space as run: it loads when its paths are absolute or none are relative).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotune.errors import UserError

SPACE_SUFFIXES = (".yaml", ".yml")


def resolve_study(arg: Path, overrides: list[str] | None = None, *, need_space: bool = True,
                  require_study: bool = True) -> tuple[Any, Path]:
    """``(space, study folder)`` for a command's SPACE_OR_STUDY argument; the space is None only for a study
    folder when ``need_space`` is false. ``require_study``: a space file whose study has not run yet is bad
    input. Raises ``UserError`` naming the path when it is neither a space file nor a study folder."""
    from autotune.config.space import load_space
    from autotune.search.study import study_dir

    arg = Path(arg)
    if arg.suffix.lower() in SPACE_SUFFIXES and not arg.is_dir():
        space = load_space(arg, overrides)  # a missing file: "search space file not found"
        root = study_dir(space)
        if require_study and not (root / "space.json").exists():
            raise UserError("no study has run for this space yet", file=arg, field="name", value=space.name)
        return space, root
    if arg.is_dir() and (arg / "space.json").is_file():  # the folder as given
        if not need_space and not overrides:
            return None, arg
        return _space_of_study(arg.resolve(), overrides), arg
    give = "give a study folder (runs/<name>, as autotune search writes it) or a search-space YAML"
    if not arg.exists():
        raise UserError(f"study folder not found ({give})", file=arg)
    if arg.is_dir():
        raise UserError(f"not a study folder: it has no space.json ({give})", file=arg)
    raise UserError(f"neither a search-space YAML (.yaml, .yml) nor a study folder ({give})", file=arg)


def _space_of_study(root: Path, overrides: list[str] | None):
    """The space of the study in ``root``, placed so that ``study_dir(space)`` is ``root``."""
    from autotune.config.space import load_space, recorded_source_file
    from autotune.records import FIX_SPACE_JSON, read_json
    from autotune.search.study import study_dir

    record = read_json(root / "space.json", fix=FIX_SPACE_JSON)  # damaged: names the file and what to do
    source = record.get("source_file") if isinstance(record, dict) else None
    found = recorded_source_file(root, source)
    candidates = [found] if found else []
    if (root / "space.yaml").is_file():
        candidates.append(root / "space.yaml")
    if not candidates:
        named = f"; space.json names {source}, which is gone" if source else ""
        raise UserError(f"this is a study folder, but its space cannot be rebuilt (no space.yaml{named}); give the "
                        "search-space YAML the study ran from (e.g. search_spaces/demo.yaml)", file=root)
    problems: list[UserError] = []
    for path in candidates:
        try:
            space = load_space(path, overrides)
            break
        except UserError as e:
            problems.append(e)
    else:
        gone = f"space.json names {source}, which is gone; " if source and not Path(source).is_file() else ""
        raise UserError(f"this is a study folder, but its space cannot be rebuilt ({gone}{problems[0]}); give the "
                        "search-space YAML the study ran from", file=root) from None
    if space.name != root.name:
        raise UserError(f"the study folder is named {root.name!r} but its space {space.name!r}: give the "
                        "search-space YAML instead", file=root, field="name", value=space.name)
    if study_dir(space) != root:  # runs_dir is relative to the working directory, or was overridden
        space = space.model_copy(update={"search": space.search.model_copy(update={"runs_dir": str(root.parent)})})
    return space
