"""The miner's request log: one INFO line per request (a WARNING for a model server's failure), a summary per interval."""

from __future__ import annotations

from loguru import logger

from neurons.miner.traffic import TrafficLog
from shared.request_log import RequestLog


def test_summary_counts_requests_failures_callers_and_median_then_starts_over() -> None:
    log = TrafficLog(lines=RequestLog("miner", flush_seconds=0))
    assert log.summary(60) is None, "no traffic, no line"
    for i, (status, ms) in enumerate([(200, 1.0), (200, 3.0), (502, 9.0), (499, 2.0)]):
        log.record(rid=f"r{i}", caller="5Validator" + str(i % 2), stream=False, status=status, latency_ms=ms)
    line = log.summary(60)
    assert line == ("served 4 chat requests in the last 60s (1 failed, 1 left by the caller first) from 2 "
                    "caller(s), p50 latency 2.5 ms"), "a caller that left (a race lost) is no failure"
    assert log.summary(60) is None, "each interval reports only its own requests"


def test_each_request_is_one_info_line_with_its_id_caller_status_latency_and_code() -> None:
    """It was a DEBUG line: following an API's ``rid=`` into a miner's log needed DEBUG on the miner."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.extend(str(m).splitlines()), level="DEBUG", format="{message}")
    try:
        log = TrafficLog(lines=RequestLog("miner", flush_seconds=0))
        log.record(rid="abc", caller="5CallerHotkey", stream=True, status=200, latency_ms=2.5)
        log.record(rid="def", caller="5CallerHotkey", stream=False, status=404, latency_ms=0.5, code="model_not_found")
        TrafficLog(lines=RequestLog("miner", level="WARNING", flush_seconds=0)).record(
            rid="quiet", caller="5CallerHotkey", stream=True, status=200, latency_ms=2.5)
    finally:
        logger.remove(sink)
    assert [x.split(" | ", 1)[1] for x in lines] == [
        "INFO    | miner | chat rid=abc caller=5CallerHot stream=True status=200 latency_ms=2.5",
        "INFO    | miner | chat rid=def caller=5CallerHot stream=False status=404 latency_ms=0.5 code=model_not_found"]


def test_model_server_failures_are_warnings_up_to_a_budget_then_counted_in_the_summary() -> None:
    """A dead model server fails every request: its lines are bounded, and the rest told once with why. Each
    request is still one line: a WARNING within the budget, its INFO line ending with why past it."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.extend(f"{m.record['level'].name} {x.split(' | ', 3)[-1]}"
                                             for x in m.record["message"].splitlines()), level="INFO")
    log = TrafficLog(max_failure_lines=2, lines=RequestLog("miner", flush_seconds=0))
    try:
        for i in range(4):
            log.record(rid=f"r{i}", caller="5Validator", stream=False, status=502, latency_ms=1.0,
                       failure="upstream failed: ClientConnectorError: refused" if i else "upstream HTTP 401: bad key")
        log.record(rid="ok", caller="5Validator", stream=False, status=200, latency_ms=1.0)
        summary = log.summary(60)
        log.record(rid="next", caller="5Validator", stream=False, status=400, latency_ms=1.0, failure="too\nlong")
    finally:
        logger.remove(sink)
    assert lines == ["WARNING chat rid=r0 caller=5Validator stream=False status=502 latency_ms=1.0: the model server "
                     "failed: upstream HTTP 401: bad key",
                     "WARNING chat rid=r1 caller=5Validator stream=False status=502 latency_ms=1.0: the model server "
                     "failed: upstream failed: ClientConnectorError: refused",
                     "INFO chat rid=r2 caller=5Validator stream=False status=502 latency_ms=1.0 failure=upstream "
                     "failed: ClientConnectorError: refused",
                     "INFO chat rid=r3 caller=5Validator stream=False status=502 latency_ms=1.0 failure=upstream "
                     "failed: ClientConnectorError: refused",
                     "INFO chat rid=ok caller=5Validator stream=False status=200 latency_ms=1.0",
                     "WARNING chat rid=next caller=5Validator stream=False status=400 latency_ms=1.0: the model server "
                     "refused the request: too\\x0along"], "the budget starts over with each interval"
    assert summary == ("served 5 chat requests in the last 60s (4 failed, 0 left by the caller first) from 1 "
                       "caller(s), p50 latency 1.0 ms; 2 model server failures past the 2 logged one by one, "
                       "most (2): upstream failed: ClientConnectorError: refused")
