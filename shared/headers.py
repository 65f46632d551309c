"""Headers that name one thing (a key, a session, a request's id), and a request that sends one twice."""

from __future__ import annotations

from typing import Any


def one_value(headers: Any, name: str) -> str | None:
    """``name``'s value in ``headers`` (a multidict), "" when absent, None when it was sent twice with two values:
    which is meant cannot be told. The same value twice (a proxy that repeats it) is that value."""
    first = headers.get(name)
    if first is None:  # most requests send none: one lookup, no list
        return ""
    values = headers.getall(name)
    return None if len(values) > 1 and any(value != first for value in values) else first
