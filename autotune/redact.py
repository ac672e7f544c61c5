"""Passwords out of everything autotune prints or writes: the one redaction, for URLs and for text holding them.

A storage URL (``--storage``, ``search.storage``) may carry a password, in its user info
(``postgresql://user:PW@host/db``) or in its query string (``...?password=PW``). The study needs it to
connect, so it is used as given at run time, but every copy meant for people or for files (the console,
``space.yaml``, ``job.json``, recipe and report headers, error messages) goes through ``redact`` first.
Redacting is idempotent and leaves text without a password unchanged.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://user:PASSWORD@ ; the password runs to the last "@" before a blank or a quote (an unencoded "@"
# in a password is hidden with it, never shown in part); the user name keeps showing
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*):(?P<pw>[^\s'\"]*)@")
# ?password=PW / &password=PW (libpq and most DBAPIs take it there too), up to the next parameter
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd)=)(?P<pw>[^&;#\s'\"]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` (a URL, a command line, a message, a file's text) with the password of every URL in it
    replaced by ``***``."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: m["head"] + (MASK if m["pw"] else ""), text)


def redact_data(data: Any) -> Any:
    """A copy of JSON-like ``data`` (dicts, lists, strings) with ``redact`` applied to every string in it."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {k: redact_data(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(v) for v in data]
    return data
