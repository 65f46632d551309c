"""Request bodies: decoded from gzip or deflate by ``decode_body``, and never waited for forever."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ApiError
from shared.http import decode_body, error_middleware, json_response, read_raw
from tests.helpers import serve_app


@given(st.binary(max_size=5000), st.sampled_from(["gzip", "x-gzip", "deflate", "raw"]))
def test_what_a_client_compresses_comes_back_whole(data: bytes, how: str) -> None:
    if how == "raw":
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        assert decode_body(packer.compress(data) + packer.flush(), "deflate", 5000) == data
    else:
        packed = zlib.compress(data) if how == "deflate" else gzip.compress(data)
        assert decode_body(packed, how, 5000) == data


@pytest.mark.parametrize(("size", "limit", "status"), [(100, 100, None), (101, 100, 413)])
def test_the_size_cap_applies_to_what_the_body_decodes_to(size: int, limit: int, status: int | None) -> None:
    packed = gzip.compress(b"a" * size)
    assert len(packed) < limit
    if status is None:
        assert decode_body(packed, "gzip", limit) == b"a" * size
    else:
        with pytest.raises(ApiError) as err:
            decode_body(packed, "gzip", limit)
        assert err.value.status == status


async def _echo(request: web.Request) -> web.Response:
    return json_response({"bytes": len(await read_raw(request, timeout=0.5))})


@pytest.mark.parametrize("rest", [
    b"zz\r\nabc\r\n0\r\n\r\n",  # a chunk size that is not hex
    b"3\r\nabcdef\r\n0\r\n\r\n",  # a chunk longer than its size
    b"5\r\nab",  # a client that stops sending mid-body
])
async def test_a_body_that_never_ends_is_a_408_not_a_hang(rest: bytes) -> None:
    """aiohttp never ends the body of a request whose chunked framing breaks after its headers were
    handed over (it queues its own 400 for after it): without a limit the request waited forever."""
    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/echo", _echo)
    async with serve_app(app) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(rest)
        started = time.monotonic()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        head_and_body = await asyncio.wait_for(reader.read(), 5)  # to the end: the connection closes
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert b'"code":"request_timeout"' in head_and_body and b"Connection: close" in head_and_body
    assert b"HTTP/1.1" not in head_and_body, "one answer only: the connection ends after it"
    assert time.monotonic() - started < 3


async def test_an_unexpected_error_is_a_json_500_whose_log_line_names_the_route_not_the_secret() -> None:
    """Admin paths carry API keys (``/modify-api-key/{api_key}``): the path of a failed request is logged
    as its route, so no secret reaches the log."""
    from loguru import logger

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_put("/api_management/modify-api-key/{api_key}", broken)
    lines: list[str] = []
    # as shared/logging.py configures the node's sink (diagnose would print the frames' variables)
    sink = logger.add(lambda m: lines.append(str(m)), level="TRACE", backtrace=False, diagnose=False)
    secret = "sn1-aSGNkbZTmN-on8UdbqA_9XAK2mEb-uArGBylDhSlIBk"
    try:
        async with serve_app(app) as url, aiohttp.ClientSession() as http, \
                http.put(f"{url}/api_management/modify-api-key/{secret}") as r:
            status, body = r.status, await r.json()
    finally:
        logger.remove(sink)
    assert status == 500 and body["error"]["type"] == "server_error"
    logged = "".join(lines)
    assert "unhandled error on PUT /api_management/modify-api-key/{api_key}" in logged, logged
    assert secret not in logged and secret[:12] not in logged


async def test_a_form_body_that_is_not_json_is_told_to_send_json() -> None:
    """``curl -d messages=hi`` (or ``--data-urlencode``, or a form post) sends a form, which is not JSON: the 400
    said only "Expecting value: line 1 column 1 (char 0)". It says the body came as a form and that JSON is
    wanted now. JSON sent with curl's form Content-Type (``-d '{...}'``) is read as JSON, as before."""
    from shared.http import read_json

    async def handler(request: web.Request) -> web.Response:
        return json_response(await read_json(request))

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/", handler)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with serve_app(app) as url, aiohttp.ClientSession() as http:
        async with http.post(url + "/", data=b"messages=hi&model=default", headers=form) as r:
            error = (await r.json())["error"]
        assert r.status == 400 and error["code"] == "invalid_json", error
        assert "application/x-www-form-urlencoded" in error["message"] and "JSON" in error["message"], error
        async with http.post(url + "/", data=b'{"messages": []}', headers=form) as r:
            assert r.status == 200 and await r.json() == {"messages": []}
