"""The suite's watchdog (``tests/conftest.py``): a test hung in its fixtures' setup, in itself or in their
teardown is told with the await it is stuck in, and stopped, so the run goes on. It watched the test itself
only: a fixture that never started or never stopped held its xdist worker until CI's own limit, saying nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HUNG = '''
import asyncio

import pytest_asyncio


async def stuck_here() -> None:
    await asyncio.Event().wait()


@pytest_asyncio.fixture
async def never_starts():
    await stuck_here()
    yield


@pytest_asyncio.fixture
async def never_stops():
    yield
    await stuck_here()


async def test_in_setup(never_starts) -> None:
    pass


async def test_in_teardown(never_stops) -> None:
    pass


async def test_in_itself() -> None:
    await stuck_here()


def test_after_them() -> None:
    pass
'''


def test_a_test_hung_in_setup_teardown_or_itself_is_told_and_stopped(tmp_path: Path) -> None:
    (tmp_path / "test_hung.py").write_text(HUNG)
    env = {**os.environ, "TEST_HANG_SECONDS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-o", "asyncio_mode=auto",
         "-o", "asyncio_default_fixture_loop_scope=function", "-p", "no:cacheprovider",
         "-p", "no:langsmith_plugin", "-p", "no:schemathesis", "-q", "-s", "test_hung.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    for test, phase in (("test_in_setup", "setup"), ("test_in_teardown", "teardown"), ("test_in_itself", "call")):
        told = f"test_hung.py::{test}: its {phase} still running after 1 s (TEST_HANG_SECONDS)"
        assert told in out, out[-3000:]
        assert "stuck_here" in out.split(told, 1)[1].split("\n", 1)[0], f"{test}: the await it hung in is named"
    # the test hung in its teardown passed before it; the run went on past all three to the last test
    assert "1 failed, 2 passed, 2 errors" in out, out[-1500:]
