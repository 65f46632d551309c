"""Identifiers for requests and completions.

They name things (log lines, scoring payloads, ``chatcmpl-...``); they guard
nothing, so they come from the process's seeded PRNG: ``uuid4`` reads the OS
entropy pool on every call, two syscalls per chat request on the hot path.
API keys, nonces and session ids use ``secrets`` instead.
"""

from __future__ import annotations

import random
import re
from typing import Any

from shared.headers import one_value

# The headers a caller names its request's id in (``request_id_from``)
ID_HEADERS = ("x-request-id", "X-Client-Request-Id")  # as OpenAI spells the second
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/@+-]+")
SECRET_PREFIX = "sn1-"  # what every API key starts with (shared.store.base.KEY_PREFIX, which imports more)


def random_hex() -> str:
    """32 hex digits (128 bits), like ``uuid4().hex``."""
    return f"{random.getrandbits(128):032x}"


def request_id_from(headers: Any) -> str:
    """The caller's ``x-request-id`` (else its ``X-Client-Request-Id``, the header OpenAI's API takes a
    caller's own id from) if it is an id (letters, digits, ``-_.:/@+``, up to 128), else a
    new one. Spaces and ``=`` are not: the id goes into the ``key=value`` log line, where
    ``abc key=... winner=9`` charged the request to another key and miner for a log parser. Nor is an API
    key (``sn1-...``) sent there by mistake: the id is logged, echoed and passed on to the miners. Nor is
    one of two different values the header was sent with (the API refuses such a request: ``ID_HEADERS``)."""
    rid = one_value(headers, ID_HEADERS[0]) or one_value(headers, ID_HEADERS[1]) or ""
    return rid if _is_id(rid) else random_hex()


def loggable_id(text: str | None) -> str:
    """An id a peer sent (a scoring payload's ``request_id``) as a log line may show it: itself when it is an id
    as ``request_id_from`` takes one, else ``-`` (a space or a line break in it would forge the line's fields)."""
    return text if text and _is_id(text) else "-"


def _is_id(text: str) -> bool:
    """An id a log line may carry: letters, digits, ``-_.:/@+``, up to 128, and no API key."""
    return bool(text) and len(text) <= 128 and bool(_REQUEST_ID.fullmatch(text)) and not text.startswith(SECRET_PREFIX)
