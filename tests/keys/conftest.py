"""Fixtures for the key-management tests: an in-process API with one honest miner and its admin key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from loguru import logger

from tests.helpers import ApiUnderTest, api_with_miners

ADMIN = "admin-secret-for-tests"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiUnderTest]:
    async with api_with_miners(tmp_path, {}, honest={1}) as a:
        yield a


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield s


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Everything loguru writes during the test, at every level."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="TRACE")
    try:
        yield lines
    finally:
        logger.remove(sink)


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, dict, Any]:
    """One request; returns (status, headers, parsed JSON or text)."""
    async with http.request(method, url, **kw) as r:
        text = await r.text()
        with contextlib.suppress(ValueError):
            return r.status, dict(r.headers), await r.json(content_type=None)
        return r.status, dict(r.headers), text


async def create_key(http: aiohttp.ClientSession, url: str, query: str = "rate_limit=100", **kw: Any) -> dict:
    status, _, body = await call(http, "POST", f"{url}/api_management/create-api-key/?{query}",
                                 headers={"admin-key": ADMIN}, **kw)
    assert status == 200, body
    return body


def assert_error(status: int, body: Any, expected: int, code: str | None = None) -> None:
    """An OpenAI-shaped error with the expected status (and code)."""
    assert status == expected, body
    assert set(body["error"]) == {"message", "type", "code", "param"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
