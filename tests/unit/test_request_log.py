"""The access log: lines shaped like every other log line, written in batches, never lost at flush."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterator

import pytest
from loguru import logger

from shared.logging import level_allows, setup_logging
from shared.request_log import RequestLog

TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


@pytest.fixture
def sink() -> Iterator[list[str]]:
    """What one loguru sink receives (each write is one entry: a batch of lines arrives as one)."""
    writes: list[str] = []
    handler = logger.add(writes.append, level="INFO", format="{message}")
    try:
        yield writes
    finally:
        logger.remove(handler)


def test_line_has_the_shape_of_every_other_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", role="api[7]")
    try:
        logger.info("chat rid=a key=k")
        log = RequestLog("api[7]", flush_seconds=0)
        log.write("chat rid=a key=k")
    finally:
        logger.remove()
        logger.add(sys.stderr)
    ours, theirs = capsys.readouterr().err.splitlines()[::-1]
    assert re.fullmatch(TIME + r" \| INFO    \| api\[7\] \| chat rid=a key=k", ours)
    assert re.sub(TIME, "T", ours) == re.sub(TIME, "T", theirs)


async def test_lines_wait_for_the_flush_then_go_out_together_in_order(sink: list[str]) -> None:
    log = RequestLog("api", flush_seconds=0.05)
    for i in range(3):
        log.write(f"chat rid=r{i}")
    assert sink == [] and log.pending == 3
    await asyncio.sleep(0.15)
    assert len(sink) == 1, "one record for the batch"
    assert [line.rsplit(" | ", 1)[1] for line in sink[0].splitlines()] == ["chat rid=r0", "chat rid=r1", "chat rid=r2"]
    assert log.pending == 0
    log.write("chat rid=r3")  # a new batch arms a new timer
    await asyncio.sleep(0.15)
    assert len(sink) == 2 and sink[1].endswith("chat rid=r3\n")


async def test_a_full_batch_goes_out_at_once(sink: list[str]) -> None:
    log = RequestLog("api", flush_seconds=60, max_lines=4)
    for i in range(4):
        log.write(f"r{i}")
    assert len(sink) == 1 and sink[0].count("\n") == 4 and log.pending == 0


async def test_flush_writes_what_is_queued_and_cancels_the_timer(sink: list[str]) -> None:
    log = RequestLog("api", flush_seconds=60)
    log.write("last words")
    log.flush()
    assert len(sink) == 1 and "last words" in sink[0]
    log.flush()  # nothing queued: nothing written
    assert len(sink) == 1


async def test_nothing_is_built_or_written_when_info_is_off(sink: list[str]) -> None:
    log = RequestLog("api", level="WARNING", flush_seconds=0)
    log.write("chat rid=x")
    log.flush()
    assert sink == [] and log.pending == 0


def test_level_allows() -> None:
    assert level_allows("INFO", "INFO") and level_allows("debug", "INFO")
    assert not level_allows("WARNING", "INFO")
