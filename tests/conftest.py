"""Shared fixtures. ``localnet``: a real local subnet (child processes on free ports); ``wall_step``: this
process's wall clock stepped as NTP steps it. And a watchdog: a test (its fixtures' setup, the test itself, or
their teardown) still running after ``TEST_HANG_SECONDS`` (240) is told with what each of its tasks waits in, and
stopped."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from neurons.localnet import LocalNet, LocalNetConfig
from shared.aio import describe
from shared.gc_tuning import freeze_heap
from tests.ports import free_ports, pool


def pytest_collection_finish(session: pytest.Session) -> None:
    """Each pytest process (each xdist worker) freezes the heap its collection left (``freeze_heap``), as a served
    process freezes its start-up heap: with every test module imported that is some 350,000 objects, and each full
    collection pass walked them all, 0.5 to 0.9 s of CPU a pass here. Such a pass in the middle of a test stalled
    its servers as long: the reference miner's deadline test saw 1.3-1.6 s go by before the in-process miner asked
    its model server, on a slow host (a fresh ``sn1 miner`` asks it within milliseconds: it freezes its own
    start-up heap before it answers anything)."""
    freeze_heap()


@pytest.hookimpl(optionalhook=True)  # xdist's: without it (``-p no:xdist``) an unknown hook stopped pytest
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``-n`` with xdist's default distribution: the tests sharing a started local subnet on one worker
    (``tests/xdist_groups.py``); any other ``--dist`` is xdist's own."""
    if config.getvalue("dist") != "load":
        return None
    from tests.xdist_groups import SharedSubnetScheduling

    return SharedSubnetScheduling(config, log)


@pytest.fixture(scope="session")
def localnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A whole local subnet (3 deterministic miners, validator, API) shared by the session's tests."""
    directory: Path = tmp_path_factory.mktemp("localnet")
    api_port, validator_port = free_ports(2)
    net = LocalNet(LocalNetConfig(directory=directory, miners=3, api_port=api_port,
                                  validator_port=validator_port, admin_key="test-admin-key-0123456789"),
                   ports=pool())
    try:
        info = net.start(timeout=120)
        info["dir"] = str(directory)
        yield info
    finally:
        net.stop()


@pytest.fixture
def wall_step(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Step this process's wall clock (``time.time``, ``time.time_ns``) by some seconds, either way, as NTP
    steps a host's: the monotonic clocks (``time.monotonic``, the event loop's) run on untouched. The
    machine's clock is shared with other test runs, so it is simulated here, never set."""
    offset = [0.0]
    real, real_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + int(offset[0] * 1e9))

    def step(seconds: float) -> None:
        offset[0] += seconds

    return step


# A hung test held its xdist worker until CI's own limit, and said nothing of where it hung (a stack dump of an
# event loop idle in epoll names no coroutine): the watchdog names each task's chain of awaits, then cancels
# them, so the test fails with that in its captured stderr and the suite goes on.
TEST_HANG_SECONDS = float(os.environ.get("TEST_HANG_SECONDS", "240"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _watched(item, "setup"):  # its fixtures' start: a server that never answers, a lock never freed
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _watched(item, "call"):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    with _watched(item, "teardown"):  # its fixtures' end: a task awaited for good, a server that will not stop
        yield


@contextmanager
def _watched(item: pytest.Item, phase: str) -> Iterator[None]:
    """One phase of a test (its fixtures' setup, the test, their teardown) stopped past ``TEST_HANG_SECONDS``."""
    watchdog = threading.Timer(TEST_HANG_SECONDS, _stop_hung_test, args=(item.nodeid, phase))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()


def _stop_hung_test(nodeid: str, phase: str) -> None:
    """From the watchdog's thread: tell what the test's tasks wait in, and cancel them on their loops."""
    tasks = [t for t in list(asyncio.tasks._all_tasks) if not t.done()]  # every loop's: no running loop here
    sys.stderr.write(f"\n{nodeid}: its {phase} still running after {TEST_HANG_SECONDS:.0f} s (TEST_HANG_SECONDS); "
                     f"its tasks: {describe(tasks, most=50) or 'none (a synchronous wait)'}\n")
    sys.stderr.flush()
    for task in tasks:
        task.get_loop().call_soon_threadsafe(task.cancel)
