"""The log levels a setting or a ``sn1 localnet --log-level`` may name (loguru's, without CRITICAL): here,
apart from ``shared.settings``, so that ``sn1``'s command line checks one without loading pydantic."""

from __future__ import annotations

from typing import Literal, get_args

LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
