"""Loading evaluation suites: ``load_suite`` reads a suite file (``evals/*.yaml``) into the schema of
``autotune.config.suite`` and checks its entries against the lm-eval task definitions (``taskdefs``).

Pure (no torch, no lm_eval import): ``autotune validate`` uses it.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from autotune.config.load import ErrorStyle, read_yaml, validation_error_to_user_error
from autotune.config.suite import GROUPS, BpbEntry, Suite, TaskEntry
from autotune.errors import UserError
from autotune.evaluate.taskdefs import TaskDef, check_entry, read_task_yaml, resolve_task, user_code

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
    execute model-generated code, Python from the suite's ``task_dirs`` (``taskdefs.user_code``), a user task's
    ``dataset_kwargs.trust_remote_code``, and when the backend (``backend`` overrides the suite's) is
    vllm-server the suite's own ``vllm.python``, ``vllm.serve_command`` and ``vllm.extra_args`` (a flag such as
    ``--trust-remote-code`` or another ``--worker-extension-cls`` runs code the suite names). The suite's
    Python is run even to read its vLLM version, at a dry run too. ``$AUTOTUNE_VLLM_PYTHON`` is the user's own
    setting, not the suite's: it needs no flag. Pure: no import."""
    uses: list[tuple[str, object, str]] = []
    if (backend or suite.backend) == "vllm-server":
        o = suite.vllm
        if o.python:
            uses.append(("vllm.python", o.python, "runs this Python, named by the suite, to start the model server "
                         "($AUTOTUNE_VLLM_PYTHON, the user's own setting, needs no flag)"))
        if o.serve_command:
            uses.append(("vllm.serve_command", " ".join(o.serve_command), "starts this command as the model server"))
        if o.extra_args:
            uses.append(("vllm.extra_args", " ".join(o.extra_args), "passes these flags to the model server (they "
                         "can make it run code: --trust-remote-code, --worker-extension-cls)"))
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
        remote = _remote_code(tdef, suite)
        if remote:
            uses.append((where, entry.task, f"{entry.task} sets dataset_kwargs.trust_remote_code (datasets may run "
                         f"the dataset's own loading script): {', '.join(remote)}"))
    return uses


def _remote_code(tdef: TaskDef, suite: Suite) -> list[str]:
    """The user task YAMLs behind ``tdef`` (as ``user_code`` reads them: the task's own, includes merged; for a
    group or tag every YAML under ``task_dirs``) that set ``dataset_kwargs.trust_remote_code``. Stock tasks are
    the library's settings (and run offline): not counted."""
    files = [tdef.path] if not tdef.stock and tdef.path is not None else []
    if not tdef.is_yaml_task:
        files += [f for d in suite.task_paths if d.is_dir() for f in sorted(d.rglob("*.yaml"))]
    found = []
    for f in dict.fromkeys(files):
        try:
            cfg, _ = read_task_yaml(f)
        except (yaml.YAMLError, ValueError, OSError):
            continue  # lm-eval skips what it cannot read (as ``user_code``)
        kwargs = cfg.get("dataset_kwargs") if isinstance(cfg, dict) else None
        if isinstance(kwargs, dict) and kwargs.get("trust_remote_code"):
            found.append(str(f))
    return found


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
