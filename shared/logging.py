"""loguru set-up: one sink to stderr, level from settings, no secrets by construction.

Nothing logs a key: the API logs key *ids* and prefixes only. The access log
(``request_log.py``) writes lines of the same shape through the same sink.
"""

from __future__ import annotations

import re
import sys
from urllib.parse import unquote, urlsplit

from loguru import logger

# Control characters and the line breaks Unicode adds: text a peer sent (a miner's error body, say) keeps them
# out of our log lines, where "oops\n2026-... | INFO | api | chat rid=... status=ok" was a forged line.
_UNPRINTABLE = {c: f"\\x{c:02x}" for c in [*range(32), 127]} | {0x85: "\\x85", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def printable(text: str) -> str:
    """``text`` on one line: each control character (a line break among them) written as its escape."""
    return text.translate(_UNPRINTABLE)


_NOT_PLAIN = re.compile(r"[^A-Za-z0-9._:/@+\-]")
FIELD_CHARS = 100  # of a caller's value, what a log line's field shows (``field_value``)


def field_value(text: str, limit: int = FIELD_CHARS) -> str:
    """A caller's value (a model name it asked for) as one word of a ``key=value`` log line: its first ``limit``
    characters, each outside letters, digits and ``._:/@+-`` written as its escape (a space or an ``=`` in it would
    otherwise forge a field, a line break a line), ``...`` after a value cut there."""
    shown = _NOT_PLAIN.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 256 else f"\\u{ord(m[0]):04x}",
                           text[:limit])
    return shown + ("..." if len(text) > limit else "")


MIN_USER_TOKEN = 8  # a URL's user name alone is taken for a token from this length ("admin@" is a name, not a secret)


class CredentialMask:
    """A model server's credentials (its API key, a token given as the password of its URL) masked out of text
    it sent: a server that quotes the key it refused ("Incorrect API key provided: ...") had it logged, and
    passed on to whoever reads the error."""

    def __init__(self, api_key: str | None, url: str) -> None:
        parts = urlsplit(url)
        # A URL's password as written (``p%40ss``) and as sent (``p@ss``), and a token given as its user name alone
        # (``https://TOKEN@host``, sent as Basic auth): a server quoting what it was sent quotes the decoded forms.
        token = parts.username if parts.password is None and len(parts.username or "") >= MIN_USER_TOKEN else None
        candidates = (api_key, parts.password, unquote(parts.password or ""), token, unquote(token or ""))
        self._secrets = sorted({secret for secret in candidates if secret}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def line_prefix(level: str, role: str) -> str:
    """What follows the time on every line: ``INFO    | api[123] | `` (the level padded to 7)."""
    return f"{level: <7} | {role} | "


def level_allows(configured: str, level: str) -> bool:
    """True when a sink set to level ``configured`` writes records of ``level`` (level names)."""
    return logger.level(configured.upper()).no <= logger.level(level.upper()).no


def setup_logging(level: str = "INFO", *, role: str = "sn1") -> None:
    logger.remove()
    logger.add(
        sys.stderr,
        level=level,
        format="<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
        + role
        + " | {message}",
        backtrace=False,
        diagnose=False,
        enqueue=False,
    )
