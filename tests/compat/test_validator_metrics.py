"""The validator's ``/metrics``: loop timings and failures, scoring queue depth, requests by route."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from neurons.validator.app import create_validator_app
from neurons.validator.loops import every
from shared.metrics import ValidatorMetrics
from tests.compat.support import sample
from tests.helpers import serve_app
from tests.validator.test_app import make_ctx


async def test_validator_metrics_show_loops_queue_and_requests() -> None:
    metrics = ValidatorMetrics()
    ctx = make_ctx(queue_size=5)
    calls = {"n": 0}
    four = asyncio.Event()

    async def flaky() -> None:
        calls["n"] += 1
        if calls["n"] >= 4:
            four.set()
        if calls["n"] % 2 == 0:
            raise RuntimeError("every other cycle fails")

    loop = asyncio.create_task(every("flaky", 0.01, flaky, observe=metrics.observe_loop))
    ctx.scoring_queue.put_nowait(object())
    try:
        async with serve_app(create_validator_app(ctx, metrics=metrics)) as url, aiohttp.ClientSession() as s:
            await asyncio.wait_for(four.wait(), timeout=10)
            async with s.get(url + "/health") as r:
                assert r.status == 200
            async with s.get(url + "/no-such-route") as r:
                assert r.status == 404
            async with s.get(url + "/metrics") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert sample(text, "sn1_validator_loop_seconds_count", loop="flaky") >= 4
    assert sample(text, "sn1_validator_loop_failures_total", loop="flaky") >= 2
    assert sample(text, "sn1_validator_scoring_queue_depth") == 1
    assert sample(text, "sn1_validator_scoring_queue_max") == 5
    assert sample(text, "sn1_validator_http_requests_total", route="/health", method="GET", status="200") == 1
    assert sample(text, "sn1_validator_http_requests_total", route="unmatched", status="404") == 1


def test_a_loops_failure_count_is_there_at_zero_from_its_first_cycle() -> None:
    """``increase(sn1_validator_loop_failures_total[15m])`` (SN1ValidatorLoopFailing) sees a loop's first failure
    only if the series was there before it, at 0: it appeared with the first failure, which the alert then missed
    (Prometheus takes a new series' first value as its start, not as an increase)."""
    from prometheus_client import generate_latest

    metrics = ValidatorMetrics()
    metrics.observe_loop("weights", 0.01, ok=True)
    text = generate_latest(metrics.registry).decode()
    assert 'sn1_validator_loop_failures_total{loop="weights"} 0.0' in text.splitlines()
    metrics.observe_loop("weights", 0.01, ok=False)
    assert sample(generate_latest(metrics.registry).decode(), "sn1_validator_loop_failures_total", loop="weights") == 1
