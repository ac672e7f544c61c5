"""Loading evaluation suites: ``load_suite`` reads a suite file (``evals/*.yaml``) into the schema of
``autotune.config.suite`` and checks its entries against the lm-eval task definitions (``taskdefs``).

Pure (no torch, no lm_eval import): ``autotune validate`` uses it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from autotune.config.load import ErrorStyle, read_yaml, validation_error_to_user_error
from autotune.config.suite import GROUPS, BpbEntry, Suite, TaskEntry
from autotune.errors import UserError
from autotune.evaluate.taskdefs import check_entry, resolve_task, user_code

# Union-branch tags in pydantic's error locations (``str | FieldMap``, ``str | PathSource | None``): not
# levels of the YAML; nor is the entry kind (``task`` / ``bpb``) after ``target[i]``.
_BRANCH_TAGS = frozenset({"str", "FieldMap", "PathSource", "int", "float", "none"})
ERRORS = ErrorStyle(branch_tags=_BRANCH_TAGS,
                    skip_level=lambda loc, i: i == 2 and loc[0] in GROUPS and isinstance(loc[1], int))


def load_suite(path: str | Path, domains: list[str] | None = None) -> Suite:
    """Load and check a suite file; ``domains`` (from the space) checks its bits-per-byte entries.

    Checks, without importing lm_eval: task folders exist, every task is a custom or stock lm-eval task,
    data overrides name existing files and the splits the task reads, metrics fit the task's output type,
    bits-per-byte entries name domains of the space.
    """
    path = Path(path)
    data = read_yaml(path, "suite")
    try:
        suite = Suite.model_validate({**data, "source_file": str(path)})
    except ValidationError as e:
        raise validation_error_to_user_error(e, path, data, ERRORS) from None
    for i, d in enumerate(suite.task_dirs):
        if not suite.task_paths[i].is_dir():
            raise UserError("task folder not found", file=path, field=f"task_dirs[{i}]", value=d)
    if any(isinstance(e, TaskEntry) and e.data for e in suite.entries) and not suite.data_dir.is_dir():
        raise UserError("data folder not found", file=path, field="data_root", value=suite.data_root)
    for group in GROUPS:
        for i, entry in enumerate(getattr(suite, group)):
            where = f"{group}[{i}]"
            if isinstance(entry, BpbEntry) and domains is not None and entry.bpb not in domains and entry.source is None:
                raise UserError(f"not a domain of the search space (domains: {domains})",
                                file=path, field=f"{where}.bpb", value=entry.bpb)
            if isinstance(entry, TaskEntry):
                check_entry(entry, suite, file=path, where=where)
    return suite


def code_uses(suite: Suite, backend: str | None = None) -> list[tuple[str, object, str]]:
    """Everything in ``suite`` that runs code beyond lm-eval's own, as (field, value, what): tasks that
    execute model-generated code, Python from the suite's ``task_dirs`` (``taskdefs.user_code``), and a custom
    ``vllm.serve_command`` when the backend (``backend`` overrides the suite's) is vllm-server. Pure: no import."""
    uses: list[tuple[str, object, str]] = []
    if (backend or suite.backend) == "vllm-server" and suite.vllm.serve_command:
        uses.append(("vllm.serve_command", " ".join(suite.vllm.serve_command), "starts this command as the model server"))
    for entry in suite.tasks:
        tdef = resolve_task(entry, suite)
        if tdef is None:
            continue  # unknown tasks are check_entry's error
        where = f"{suite.where(entry)}.task"
        if tdef.unsafe_code:
            uses.append((where, entry.task, f"{entry.task} executes model-generated code on this machine"))
        code = user_code(tdef, suite)
        if code:
            uses.append((where, entry.task, f"{entry.task} runs Python from the suite's task_dirs: " + "; ".join(code)))
    return uses


def require_code_permission(suite: Suite, allowed: bool, backend: str | None = None) -> None:
    """Refuse (``UserError``, exit 2) a suite that runs code (``code_uses``) unless ``allowed``
    (``--allow-code-execution``). Called by eval, gate and search before anything is imported or started:
    ``autotune gate`` runs on pull requests, whose suite and task files are anyone's."""
    if allowed:
        return
    uses = code_uses(suite, backend)
    if uses:
        field, value, what = uses[0]
        more = f" (and {len(uses) - 1} more)" if len(uses) > 1 else ""
        raise UserError(f"{what}{more}; run it only with --allow-code-execution (ideally in a sandbox)",
                        file=suite.source_file, field=field, value=value)
