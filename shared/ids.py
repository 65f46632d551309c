"""Identifiers for requests and completions.

They name things (log lines, scoring payloads, ``chatcmpl-...``); they guard
nothing, so they come from the process's seeded PRNG: ``uuid4`` reads the OS
entropy pool on every call, two syscalls per chat request on the hot path.
API keys, nonces and session ids use ``secrets`` instead.
"""

from __future__ import annotations

import random


def random_hex() -> str:
    """32 hex digits (128 bits), like ``uuid4().hex``."""
    return f"{random.getrandbits(128):032x}"
