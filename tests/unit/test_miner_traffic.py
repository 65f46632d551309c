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
