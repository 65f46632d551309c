"""The miner's request log: per request at DEBUG, one INFO summary per interval."""

from __future__ import annotations

from loguru import logger

from neurons.miner.traffic import TrafficLog


def test_summary_counts_requests_failures_callers_and_median_then_starts_over() -> None:
    log = TrafficLog()
    assert log.summary(60) is None, "no traffic, no line"
    for i, (status, ms) in enumerate([(200, 1.0), (200, 3.0), (502, 9.0), (499, 2.0)]):
        log.record(rid=f"r{i}", caller="5Validator" + str(i % 2), stream=False, status=status, latency_ms=ms)
    line = log.summary(60)
    assert line == ("served 4 chat requests in the last 60s (1 failed, 1 left by the caller first) from 2 "
                    "caller(s), p50 latency 2.5 ms"), "a caller that left (a race lost) is no failure"
    assert log.summary(60) is None, "each interval reports only its own requests"


def test_each_request_is_logged_at_debug_only() -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["level"].name + " " + m.record["message"]), level="DEBUG")
    try:
        TrafficLog().record(rid="abc", caller="5CallerHotkey", stream=True, status=200, latency_ms=2.5)
    finally:
        logger.remove(sink)
    assert lines == ["DEBUG chat rid=abc caller=5CallerHot stream=True status=200 latency_ms=2.5"]


def test_model_server_failures_are_warnings_up_to_a_budget_then_counted_in_the_summary() -> None:
    """A dead model server fails every request: its lines are bounded, and the rest told once with why."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["level"].name + " " + m.record["message"]), level="WARNING")
    log = TrafficLog(max_failure_lines=2)
    try:
        for i in range(5):
            log.record(rid=f"r{i}", caller="5Validator", stream=False, status=502, latency_ms=1.0,
                       failure="upstream failed: ClientConnectorError: refused" if i else "upstream HTTP 401: bad key")
        log.record(rid="ok", caller="5Validator", stream=False, status=200, latency_ms=1.0)
        summary = log.summary(60)
        log.record(rid="next", caller="5Validator", stream=False, status=400, latency_ms=1.0, failure="too long")
    finally:
        logger.remove(sink)
    assert lines == ["WARNING chat rid=r0 caller=5Validator status=502: the model server failed: upstream HTTP 401: "
                     "bad key",
                     "WARNING chat rid=r1 caller=5Validator status=502: the model server failed: upstream failed: "
                     "ClientConnectorError: refused",
                     "WARNING chat rid=next caller=5Validator status=400: the model server refused the request: "
                     "too long"], "the budget starts over with each interval"
    assert summary == ("served 6 chat requests in the last 60s (5 failed, 0 left by the caller first) from 1 "
                       "caller(s), p50 latency 1.0 ms; 3 model server failures past the 2 logged one by one, "
                       "most (3): upstream failed: ClientConnectorError: refused")
