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
