"""loguru set-up: one sink to stderr, level from settings, no secrets by construction.

Nothing logs a key: the API logs key *ids* and prefixes only. The access log
(``request_log.py``) writes lines of the same shape through the same sink.
"""

from __future__ import annotations

import sys

from loguru import logger


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
