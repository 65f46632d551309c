"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import ApiUnderTest, api_with_miners


@pytest.fixture
async def honest(tmp_path: Path) -> AsyncIterator[ApiUnderTest]:
    """The API in front of two honest deterministic miners (uids 1 and 2), on 127.0.0.1."""
    async with api_with_miners(tmp_path, {}, honest={1, 2}) as api:
        yield api


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any connection beyond 127.0.0.1 in this process: client libraries under test must not
    phone home (telemetry, price lists, model catalogues) when pointed at the gateway."""
    import socket

    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"a connection beyond 127.0.0.1: {address!r}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
