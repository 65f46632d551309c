"""``shared.connections``: the guard's counts and throttled lines, the fd limit, and the aiohttp internals it hooks."""

from __future__ import annotations

import resource

from aiohttp.web_protocol import RequestHandler
from loguru import logger

from shared.client_address import parse_networks
from shared.connections import ConnectionGuard, ConnectionLimits, fd_limited


def test_counts_per_address_and_in_all_and_one_line_a_minute_per_address() -> None:
    now = [0.0]
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        guard = ConnectionGuard(ConnectionLimits(max_per_ip=2, max_connections=3), clock=lambda: now[0])
        keys = [guard.admit("203.0.113.7")[1] for _ in range(2)]
        assert [guard.admit("203.0.113.7")[0] for _ in range(10)] == [False] * 10
        assert guard.admit("198.51.100.1") == (True, "198.51.100.1")
        assert guard.admit("198.51.100.2")[0] is False  # the total
        assert len(lines) == 2  # one per address (and one for the total), not one per refusal
        guard.release("198.51.100.1")
        now[0] = 61.0
        assert guard.admit("203.0.113.7")[0] is False
        assert len(lines) == 3 and "refused 10 new connection(s)" in lines[-1]  # the 9 unsaid since, and this one
        for key in keys:
            guard.release(key)
        assert guard.open == 0 and guard.open_from("203.0.113.7") == 0
    finally:
        logger.remove(sink)


def test_trusted_proxies_skip_the_per_address_cap() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_per_ip=1, trusted=parse_networks(["10.0.0.0/8"])))
    assert all(guard.admit("10.1.2.3") == (True, None) for _ in range(5))
    assert guard.admit("203.0.113.7")[0] and not guard.admit("203.0.113.7")[0]


def test_the_total_is_lowered_to_what_the_fd_limit_holds() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = fd_limited(ConnectionLimits(max_connections=10 * soft), raise_soft=False)
    assert limits.max_connections == max(64, int(soft * 0.75))
    assert fd_limited(ConnectionLimits(max_connections=10), raise_soft=False).max_connections == 10


def test_the_aiohttp_internals_the_guard_reads_are_there() -> None:
    """``GuardedRequestHandler`` reads these of aiohttp's ``RequestHandler`` and ``Server``: an aiohttp that
    renames them must fail here, not leave the servers unguarded."""
    for name in ("_request_count", "_messages", "_request_in_progress", "_force_close", "_loop"):
        assert name in RequestHandler.__slots__ or any(name in getattr(c, "__slots__", ())
                                                       for c in RequestHandler.__mro__), name
    # ``handle_error`` answers a refused request (a queued message with the parser's ``exc``) in JSON
    import inspect

    from aiohttp import web_protocol

    assert list(inspect.signature(RequestHandler.handle_error).parameters) == ["self", "request", "status", "exc",
                                                                               "message"]
    assert "exc" in web_protocol._ErrInfo.__slots__


async def test_refusals_held_back_are_told_when_their_minute_ends(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """1,100 streams from one address: 76 refused, and the log said 1 (the other 75 waited for a next refusal
    that might never come). The ones held back are told when the quiet minute ends."""
    import asyncio

    from shared import connections

    monkeypatch.setattr(connections, "LOG_EVERY_S", 0.2)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        guard = ConnectionGuard(ConnectionLimits(max_per_ip=1))
        assert guard.admit("203.0.113.7")[0]
        assert [guard.admit("203.0.113.7")[0] for _ in range(76)] == [False] * 76
        assert len(lines) == 1 and "refused 1 new connection(s)" in lines[0]
        await asyncio.sleep(0.4)
        assert len(lines) == 2 and "refused 75 new connection(s)" in lines[1]
    finally:
        logger.remove(sink)
