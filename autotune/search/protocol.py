"""The protocol between a launcher and the worker process it starts: the worker writes progress events to
its stdout as lines ``PROGRESS_PREFIX + json``, and caps its own memory at ``$AUTOTUNE_MEMORY_LIMIT`` bytes.

A worker that runs out of disk space (errno ENOSPC, where even ``result.json`` may not be written) sends the
event ``{NO_SPACE_EVENT: reason}`` and exits with ``EXIT_NO_SPACE``: the study stops there (a rerun with
space freed resumes), rather than failing trial after trial as crashed."""

from autotune import envvars

PROGRESS_PREFIX = "@@progress "
MEMORY_LIMIT_ENV = envvars.MEMORY_LIMIT  # read (checked) by envvars.memory_limit
NO_SPACE_EVENT = "no_space"
EXIT_NO_SPACE = 28  # errno ENOSPC
