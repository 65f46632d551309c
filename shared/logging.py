"""loguru set-up: one sink to stderr, level from settings, no secrets by construction.

Nothing logs a key: the API logs key *ids* and prefixes only.
"""

from __future__ import annotations

import sys

from loguru import logger


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
