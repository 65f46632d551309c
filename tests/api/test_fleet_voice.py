"""An API fleet's workers each meet a store or a validator down in their own periodic work: the first tells it for
all, saying so, the others at DEBUG (``api.fleet``); one worker alone tells it as it always did."""

from __future__ import annotations

import time

from loguru import logger

from api.fleet import Fleet
from shared.store.base import StoreMarker
from shared.store.marker import MarkerWatch
from shared.store.outage import OutageLog
from tests.helpers import log_lines


class LostStore:
    """A Redis store whose marker is gone (restarted empty) as each worker's periodic check reads it."""

    async def marker(self, *, seen: bool) -> StoreMarker:
        return StoreMarker(status="lost", since=time.time(), where="redis://127.0.0.1:6379/0", namespace="sn1")


async def test_a_redis_that_lost_its_data_is_one_error_for_a_fleet_not_one_per_worker() -> None:
    """Redis restarted empty in the middle of a run: every worker's check found the marker gone and each said the
    ERROR, which read as two losses. Each worker's /ready still says it (the check's reason)."""
    lines, sink = log_lines("DEBUG")
    try:
        for worker in range(2):
            watch = MarkerWatch(voice=Fleet(worker, 2).voice())
            assert "lost its data" in (await watch.check(LostStore()) or "")  # type: ignore[arg-type]
            assert watch.store_lost
    finally:
        logger.remove(sink)
    told = [line for line in lines if "lost its data" in line]
    assert [line.split(" ", 1)[0] for line in told] == ["ERROR", "DEBUG"], told
    assert told[0].endswith("(said once for all 2 workers: the others log it at debug level)"), told


def test_one_worker_tells_its_runs_as_it_always_did() -> None:
    lines, sink = log_lines("DEBUG")
    try:
        run = OutageLog("session sweep skipped", voice=Fleet().voice())
        run.failed("redis sessions: ConnectionError")
        run.ok()
    finally:
        logger.remove(sink)
    assert lines[0] == "WARNING session sweep skipped: redis sessions: ConnectionError", lines
    assert lines[1].startswith("INFO recovered: session sweep skipped: the store answers again after "), lines
