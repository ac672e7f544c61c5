"""The protocol between a launcher and the worker process it starts: the worker writes progress events to
its stdout as lines ``PROGRESS_PREFIX + json``, and caps its own memory at ``$AUTOTUNE_MEMORY_LIMIT`` bytes."""

PROGRESS_PREFIX = "@@progress "
MEMORY_LIMIT_ENV = "AUTOTUNE_MEMORY_LIMIT"
