"""A run of store failures is told in a few lines: its first failure, a line a minute while it lasts, and
its end (``shared.store.outage``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from loguru import logger

from api.fleet import Fleet
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
    assert lines[2:] == ["INFO recovered: store unavailable, answering 503: the store answers again after 70.0 s "
                         "(1001 failure(s))"]
    assert not log.failing
    log.failed("sqlite: database is locked")  # a new run is told again at once
    assert lines[3:] == ["WARNING store unavailable, answering 503: sqlite: database is locked"]


def test_a_run_tried_again_every_30_s_is_told_at_a_slowing_pace_and_counts_no_failure(lines: list[str]) -> None:
    """The validator's recheck tries a run that no traffic tries every 30 s: its failures were DEBUG only (an
    operator could not tell it was still tried, nor why it failed), and a WARNING each would be 120 lines an
    hour. Told at the first, then 1, 2, 4, 8, 16 minutes on, then twice an hour; none is one of the run's
    failures, and each is its latest try and error."""
    now = [0.0]
    log = OutageLog("scoring inbox: payloads not stored", clock=lambda: now[0])
    log.failed("database or disk is full")
    assert (log.tried_by, log.tried_ago) == ("traffic", 0.0)
    told_at = []
    for _ in range(240):  # two hours of rechecks
        now[0] += 30.0
        said = len(lines)
        log.retry_failed(f"a test write of 10 bytes: disk full at {now[0]:.0f}")
        if len(lines) > said:
            told_at.append(now[0])
        assert (log.tried_by, log.tried_ago, log.last_error) == ("recheck", 0.0, f"a test write of 10 bytes: disk "
                                                                                 f"full at {now[0]:.0f}")
    assert told_at == [30.0, 90.0, 210.0, 450.0, 930.0, 1890.0, 3690.0, 5490.0], told_at
    assert lines[1] == ("WARNING scoring inbox: payloads not stored: tried again, still failing 30 s into the run (1 "
                        "tr(ies) since the last such line; the next such line in 60 s): a test write of 10 bytes: "
                        "disk full at 30")
    assert lines[2].startswith("WARNING scoring inbox: payloads not stored: tried again, still failing 90 s into the "
                               "run (2 tr(ies) since the last such line; the next such line in 120 s)"), lines
    log.ok()
    assert lines[-1] == "INFO recovered: scoring inbox: payloads not stored: the store answers again after 7200.0 s (1 failure(s))"
    assert (log.tried_at, log.tried_by, log.tried_ago) == (None, None, None)
    log.failed("database or disk is full")  # a new run: its first failed retry is told at once again
    log.retry_failed("still full")
    assert lines[-1].startswith("WARNING scoring inbox: payloads not stored: tried again, still failing 0 s into"), lines


def test_failures_mixed_with_successes_are_one_run_until_they_settle(lines: list[str]) -> None:
    """``settle``: requests failing on and off (some answered, some not) were a WARNING and an INFO line each
    time; they are one run, told once a minute, that ends only once nothing failed for ``settle`` seconds."""
    now = [0.0]
    log = OutageLog("requests failing", clock=lambda: now[0], back="answers again", settle=10.0)
    for _ in range(100):  # a second each: half fail
        log.failed("uid 2: HTTP 500")
        now[0] += 0.5
        log.ok()
        now[0] += 0.5
    assert lines[0] == "WARNING requests failing: uid 2: HTTP 500"
    assert len(lines) == 2 and lines[1].startswith("WARNING requests failing: still failing, 60 more time(s)")
    now[0] += 8.0
    log.ok()
    assert len(lines) == 2 and log.failing, "the last failure was 9 s ago: the run goes on"
    now[0] += 1.5
    log.ok()
    assert lines[2:] == ["INFO recovered: requests failing: answers again after 109.5 s (100 failure(s))"] and not log.failing


async def sweeps_failing(monkeypatch: pytest.MonkeyPatch, error: Exception, failing: int = 20) -> None:
    """Run the API's session sweep loop over ``failing`` rounds that raise ``error``, then five that work."""
    from api import sessions

    rounds: list[bool] = []
    enough = asyncio.Event()

    async def sweep(_ctx: object) -> int:
        rounds.append(True)
        if len(rounds) <= failing:
            raise error
        if len(rounds) >= failing + 5:
            enough.set()
        return 0

    monkeypatch.setattr(sessions, "sweep", sweep)
    loop = asyncio.create_task(sessions.sweep_loop(SimpleNamespace(fleet=Fleet()), 0.001))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(enough.wait(), 10)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_session_sweeps_skipped_by_a_store_down_are_one_line_and_their_end_another(
        lines: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each skipped round was a WARNING (one each 15 s by default, each 5 s on a local network)."""
    from shared.store.base import StoreUnavailable

    await sweeps_failing(monkeypatch, StoreUnavailable("sqlite sessions: database is locked"))
    assert lines == ["WARNING session sweep skipped: sqlite sessions: database is locked",
                     lines[1]] and lines[1].startswith("INFO recovered: session sweep skipped: the store answers again"), lines
    assert "(20 failure(s))" in lines[1]


async def test_a_bug_in_the_session_sweep_is_one_traceback_a_run_not_one_a_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """A round that fails by a bug logged its whole traceback each time (every 15 s, as long as the bug lasted)."""
    said: list[tuple[str, str, bool]] = []
    sink = logger.add(lambda m: said.append((m.record["level"].name, m.record["message"],
                                             m.record["exception"] is not None)), level="DEBUG")
    try:
        await sweeps_failing(monkeypatch, KeyError("missing"))
    finally:
        logger.remove(sink)
    told = [(level, message, stack) for level, message, stack in said if "session sweep" in message]
    assert told[0] == ("WARNING", "session sweep failed: KeyError: 'missing'", True), told
    assert [t[2] for t in told].count(True) == 1, "one traceback for the run"
    assert told[-1][0] == "INFO" and "a sweep succeeded again" in told[-1][1] and "(20 failure(s))" in told[-1][1], told
    assert len(told) == 2, told


async def test_a_delivery_outage_shared_by_workers_is_told_in_the_same_lines(lines: list[str], tmp_path) -> None:
    """The forwarders' run lives in the outbox (``DeliveryOutage``), its lines are an ``OutageLog``'s: one
    WARNING whichever worker began it, a "still failing" line a minute from the worker that keeps failing
    (counted from its first failure, in a run another worker began), one INFO line from the one that ends it."""
    from api.delivery_outage import DeliveryOutage
    from shared.store.outbox import SQLiteOutbox

    now = [0.0]
    first, second = SQLiteOutbox(tmp_path / "api.db"), SQLiteOutbox(tmp_path / "api.db")
    try:
        a = DeliveryOutage(first, "not delivered", back="it takes them again", clock=lambda: now[0])
        b = DeliveryOutage(second, "not delivered", back="it takes them again", clock=lambda: now[0])
        await a.failed("HTTP 503")
        b.took_over()
        for _ in range(30):  # the lease moved: the new holder's failures add to the run, told a minute on
            now[0] += 2.0
            await b.failed("HTTP 503")
        assert lines == ["WARNING not delivered: HTTP 503"]
        now[0] += 2.0
        await b.failed("HTTP 502")
        assert lines[1:] == ["WARNING not delivered: still failing, 31 more time(s) in the last 60 s: HTTP 502"]
        await b.ok()
        a.took_over()  # the lease back (only its holder delivers)
        await a.ok()  # a run already ended, by another worker: nothing more to say
        assert len(lines) == 3 and lines[2].startswith("INFO recovered: not delivered: it takes them again after "), lines
        assert lines[2].endswith("(32 failure(s))")
    finally:
        await first.close()
        await second.close()


async def test_metagraph_refreshes_that_fail_are_one_warning_and_their_end_one_line(lines: list[str]) -> None:
    """An API's or a miner's metagraph refresh that failed was a WARNING each refresh (every
    METAGRAPH_REFRESH_SECONDS, in every API worker) for as long as the chain endpoint was down, and nothing said
    when refreshes worked again. It is a run: one WARNING, and one line that reads as its end."""
    from shared.metagraph import MetagraphView
    from tests.helpers import StaticSource, snapshot

    class Flaky(StaticSource):
        failures = 4

        async def fetch(self):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise ConnectionError("chain endpoint wss://node:443 unreachable")
            return self.snapshot

    view = MetagraphView(Flaky(snapshot("5Validator", {1: ("5Miner", "1.2.3.4:8091")})), refresh_seconds=0.001)
    task = asyncio.create_task(view.run())
    try:
        for _ in range(500):
            await asyncio.sleep(0.01)
            if view.snapshot.neurons:
                break
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    told = [line for line in lines if "metagraph refresh" in line and not line.startswith("DEBUG")]
    assert told[0] == ("WARNING metagraph refresh failed, keeping the last snapshot: ConnectionError: chain endpoint "
                       "wss://node:443 unreachable"), told
    assert len(told) == 2 and told[1].startswith("INFO recovered: metagraph refresh failed, keeping the last snapshot: "
                                                 "a refresh succeeded again after ") and told[1].endswith(
        "(4 failure(s))"), told
