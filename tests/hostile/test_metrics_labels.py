"""What a client without a key sends cannot grow the metrics: every label value comes from a bounded set.

Where aiohttp parses requests in Python (no C extension for the platform, or ``AIOHTTP_NO_EXTENSIONS`` set), a
request's method is any token its client writes: the method label made a new series per made-up method, kept
for good (a memory leak any stranger could drive, and a ``/metrics`` that grew with it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import aiohttp.http_parser
import aiohttp.web_protocol
import pytest

from tests.helpers import api_with_miners


async def raw_request(host: str, port: int, method: str) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{method} /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_made_up_methods_do_not_make_new_metric_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiohttp.web_protocol, "HttpRequestParser", aiohttp.http_parser.HttpRequestParserPy)
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        host, port = api.url.removeprefix("http://").split(":")
        for i in range(40):
            assert (await raw_request(host, int(port), f"M{i}X")).startswith(b"HTTP/1.1 ")
        async with aiohttp.ClientSession() as s, s.get(api.url + "/metrics") as r:
            text = await r.text()
    series = [line for line in text.splitlines() if line.startswith("sn1_api_http_requests_total{")]
    assert not any('method="M' in line for line in series), series
    assert any('method="other"' in line for line in series), series
    assert len(series) < 10, series
