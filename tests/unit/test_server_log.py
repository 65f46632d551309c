"""aiohttp's own reports (``ServerLog``): a client's malformed request is one INFO line without its
bytes; anything else stays an ERROR with its traceback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestPayloadError
from loguru import logger

from shared.server_log import ServerLog

SECRET = "sn1-secretsecretsecret"


@pytest.fixture
def records() -> Iterator[list[dict]]:
    seen: list[dict] = []
    sink = logger.add(lambda m: seen.append(m.record), level="TRACE")
    try:
        yield seen
    finally:
        logger.remove(sink)


def test_a_parser_refusal_is_one_info_line_without_the_bytes(records: list[dict]) -> None:
    refusal = LineTooLong(f"Bearer {SECRET}aaaa".encode(), "8190", "9000")
    assert SECRET in str(refusal)  # aiohttp's message quotes the line
    ServerLog().exception("Error handling request from %s", "10.0.0.7", exc_info=refusal)
    (record,) = records
    assert record["level"].name == "INFO" and record["exception"] is None
    assert record["message"].startswith("http refused from 10.0.0.7: 400 LineTooLong")
    assert SECRET not in record["message"]


def test_a_refusal_logged_at_debug_stays_at_debug(records: list[dict]) -> None:
    ServerLog().debug("Error handling request from %s", "10.0.0.7", exc_info=LineTooLong(SECRET.encode(), "1", "2"))
    assert [(r["level"].name, SECRET in r["message"]) for r in records] == [("DEBUG", False)]


def test_a_body_refusal_wrapped_for_the_handler_is_a_refusal_too(records: list[dict]) -> None:
    try:
        try:
            raise LineTooLong(SECRET.encode(), "8190", "9000")  # a chunk-size line, say
        except LineTooLong as e:
            raise RequestPayloadError(str(e)) from e
    except RequestPayloadError as wrapped:
        ServerLog().exception("Unhandled exception", exc_info=wrapped)
    (record,) = records
    assert record["level"].name == "INFO" and SECRET not in record["message"] and record["exception"] is None


def test_anything_else_is_an_error_with_its_traceback(records: list[dict]) -> None:
    try:
        raise RuntimeError("a bug in a handler")
    except RuntimeError:
        ServerLog().exception("Unhandled exception")
    (record,) = records
    assert record["level"].name == "ERROR" and record["message"] == "Unhandled exception"
    assert isinstance(record["exception"].value, RuntimeError)
