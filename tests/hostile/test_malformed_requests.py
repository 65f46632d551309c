"""A request aiohttp's HTTP parser refuses (a request line or a header past 8190 bytes, too many headers, not
HTTP at all) is answered by each of the three servers with an OpenAI-shaped error, over a raw socket against a
real server: aiohttp's own answer was plain text (``Got more than 8190 bytes when reading: b'...'``, quoting the
request), which the OpenAI SDKs show as an unreadable error. Each is one access line, naming the id the answer
carries."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from loguru import logger

from neurons.validator.app import create_validator_app
from tests.helpers import api_with_miners, serve_app
from tests.hostile.test_slow_connections import miner_app
from tests.validator.test_app import make_ctx

SECRET = "sn1-notakeyatallnotakey"
MALFORMED = {
    "a request line past 8190 bytes": (b"GET /health?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                                       414, "uri_too_long"),
    "a header past 8190 bytes": (b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + SECRET.encode()
                                 + b"a" * 9000 + b"\r\n\r\n", 431, "request_header_fields_too_large"),
    "129 headers": (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(129)) + b"\r\n",
                    431, "request_header_fields_too_large"),
    "an unknown HTTP version": (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400, "malformed_request"),
}


@contextlib.asynccontextmanager
async def server(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """The API, the validator's HTTP API or the reference miner, served as each process serves it."""
    if kind == "api":
        async with api_with_miners(tmp_path, {}) as api:
            yield api.url
        return
    async with serve_app(create_validator_app(make_ctx()) if kind == "validator" else miner_app()) as url:
        yield url


async def raw(url: str, data: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send ``data`` as it is; the status line, headers and body of the answer (the server closes after it)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}, body


@pytest.mark.parametrize("kind", ["api", "validator", "miner"])
async def test_a_request_the_parser_refuses_is_an_openai_error_and_one_line(kind: str, tmp_path: Path) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    try:
        async with server(kind, tmp_path) as url:
            for what, (data, status, code) in MALFORMED.items():
                lines.clear()
                status_line, headers, body = await raw(url, data)
                await asyncio.sleep(0.05)  # the connection's close, and any line after it
                assert status_line.split(" ")[1] == str(status), (kind, what, status_line, body[:200])
                assert headers["content-type"].startswith("application/json"), (kind, what, headers)
                error = json.loads(body)["error"]
                assert set(error) == {"message", "type", "code", "param"} and error["code"] == code, (kind, what)
                assert error["type"] == "invalid_request_error" and SECRET not in error["message"], (kind, what)
                said = [line for line in lines if f"status={status}" in line]
                assert len(said) == 1 and f"rid={headers['x-request-id']}" in said[0], (kind, what, lines)
                assert not any(SECRET in line for line in lines), (kind, what)
    finally:
        logger.remove(sink)


async def test_tls_sent_to_the_plain_port_is_a_debug_line_and_an_error_body() -> None:
    """A scanner, or a client configured with ``https://``: the answer says what happened; the line stays at
    DEBUG (any stranger sends these), as aiohttp keeps it."""
    records: list[dict] = []
    sink = logger.add(lambda m: records.append(m.record), level="DEBUG")
    try:
        async with serve_app(miner_app()) as url:
            status_line, _, body = await raw(url, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"x" * 64)
    finally:
        logger.remove(sink)
    error = json.loads(body)["error"]
    assert " 400 " in status_line and "HTTPS traffic on an HTTP port" in error["message"], body
    assert [r["level"].name for r in records if "code=malformed_request" in r["message"]] == ["DEBUG"]


async def test_a_failure_outside_every_error_middleware_is_a_json_500() -> None:
    """aiohttp's own 500 (a middleware outside ``error_middleware`` failing) was plain text too."""

    @web.middleware
    async def broken(request: web.Request, handler: object) -> web.StreamResponse:
        raise RuntimeError("a bug outside the error middleware")

    app = web.Application(middlewares=[broken])
    app.router.add_get("/x", lambda _: web.Response())
    with contextlib.ExitStack() as stack:
        stack.callback(logger.remove, logger.add(lambda _: None, level="ERROR"))
        async with serve_app(app) as url:
            status_line, headers, body = await raw(url, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert " 500 " in status_line and headers["content-type"].startswith("application/json"), (status_line, body)
    assert json.loads(body)["error"]["type"] == "server_error"


def _scraped(text: str, name: str) -> dict[tuple[str, ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name and s.labels.get("route") == "?"}


@pytest.mark.parametrize("origins", [["*"], ["https://app.example.com"]])
async def test_the_api_counts_a_refused_request_and_lets_a_browser_read_it(origins: list[str], tmp_path: Path) -> None:
    """A request the parser refused never reached the API's middlewares: ``sn1_api_http_requests_total`` and
    ``sn1_api_errors_total`` did not count it (a flood of them was invisible), and its answer had no CORS header, so
    a browser page could not read why. Counted now under ``route="?"``; with ``CORS_ORIGINS=*`` (the default) the
    answer is open to any page. Its ``Origin`` cannot be read (the parser refused the request before handing over
    any header): with a list of origins no page is named, and the browser reads a network error, as before."""
    import aiohttp

    async with api_with_miners(tmp_path, {}, cors_origins=origins) as api:
        for data, *_ in MALFORMED.values():
            _, headers, _ = await raw(api.url, data.replace(b"\r\n", b"\r\nOrigin: https://app.example.com\r\n", 1))
            if origins == ["*"]:
                assert headers.get("access-control-allow-origin") == "*", headers
                assert "x-request-id" in headers.get("access-control-expose-headers", "").split(","), headers
            else:
                assert "access-control-allow-origin" not in headers, headers
        async with aiohttp.ClientSession() as s, s.get(api.url + "/metrics") as r:
            text = await r.text()
    assert _scraped(text, "sn1_api_http_requests_total") == {
        (("method", "other"), ("route", "?"), ("status", "414")): 1.0,
        (("method", "other"), ("route", "?"), ("status", "431")): 2.0,
        (("method", "other"), ("route", "?"), ("status", "400")): 1.0}, text
    assert _scraped(text, "sn1_api_errors_total") == {
        (("code", "uri_too_long"), ("route", "?")): 1.0,
        (("code", "request_header_fields_too_large"), ("route", "?")): 2.0,
        (("code", "malformed_request"), ("route", "?")): 1.0}, text
