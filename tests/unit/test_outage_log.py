"""A run of store failures is told in a few lines: its first failure, a line a minute while it lasts, and
its end (``shared.store.outage``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from loguru import logger

from shared.store.outage import OutageLog


@pytest.fixture
def lines() -> Iterator[list[str]]:
    said: list[str] = []
    sink = logger.add(lambda m: said.append(f"{m.record['level'].name} {m.record['message']}"), level="DEBUG")
    yield said
    logger.remove(sink)


def test_a_run_of_failures_is_a_line_a_minute_and_its_end_one_more(lines: list[str]) -> None:
    now = [0.0]
    log = OutageLog("store unavailable, answering 503", clock=lambda: now[0])
    log.ok()  # no run: nothing to say
    for _ in range(1000):  # a thousand requests in 30 s: one line, the first failure's
        log.failed("redis: OutOfMemoryError: command not allowed")
        now[0] += 0.03
    assert lines == ["WARNING store unavailable, answering 503: redis: OutOfMemoryError: command not allowed"]
    now[0] = 61.0
    log.failed("redis: OutOfMemoryError: command not allowed")
    assert len(lines) == 2 and lines[1].startswith("WARNING store unavailable, answering 503: still failing, "
                                                   "1000 more time(s) in the last 61 s"), lines
    assert log.failing
    now[0] = 70.0
    log.ok()
    log.ok()
    assert lines[2:] == ["INFO store unavailable, answering 503: the store answers again after 70.0 s "
                         "(1001 failure(s))"]
    assert not log.failing
    log.failed("sqlite: database is locked")  # a new run is told again at once
    assert lines[3:] == ["WARNING store unavailable, answering 503: sqlite: database is locked"]
