"""Loading evaluation suites: ``load_suite`` reads a suite file (``evals/*.yaml``) into the schema of
``autotune.config.suite`` and checks its entries against the lm-eval task definitions (``taskdefs``).

The schema's names and the metric tables are re-exported here, where they used to live. Pure (no torch,
no lm_eval import): ``autotune validate`` uses it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from autotune.config.load import ErrorStyle, read_yaml, validation_error_to_user_error
from autotune.config.suite import (  # noqa: F401 (re-exported)
    BACKENDS,
    GROUPS,
    BpbEntry,
    Entry,
    FieldMap,
    HfOptions,
    Seeds,
    Suite,
    TaskData,
    TaskEntry,
    VllmOptions,
)
from autotune.errors import UserError
from autotune.evaluate.metrics import CHANCE_METRICS, CONTINUOUS_METRICS, LOWER_IS_BETTER  # noqa: F401 (re-exported)
from autotune.evaluate.taskdefs import check_entry, find_custom_task

# Union-branch tags in pydantic's error locations (``str | FieldMap``, ``str | PathSource | None``): not
# levels of the YAML; nor is the entry kind (``task`` / ``bpb``) after ``target[i]``.
_BRANCH_TAGS = frozenset({"str", "FieldMap", "PathSource", "int", "float", "none"})
ERRORS = ErrorStyle(branch_tags=_BRANCH_TAGS,
                    skip_level=lambda loc, i: i == 2 and loc[0] in GROUPS and isinstance(loc[1], int))


def find_task_yaml(task: str, dirs: list[Path]) -> Path | None:
    """The custom task YAML that defines ``task`` (by its ``task:`` key) under ``dirs``, or None."""
    return find_custom_task(task, dirs)


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

