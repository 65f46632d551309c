"""``make soak``: many requests through honest and faulty miners; resources must come back.

Runs the real API in this process (SQLite store, real signing) in front of two
honest miners and a dozen fault-injecting ones on 127.0.0.1. Every request
races one honest miner and three random faulty ones, streaming or not, so
every answer must be 200 with the honest text. Before and after the run
(after a warm-up at the same concurrency, so connection pools are at steady
state) it prints open file descriptors, asyncio tasks and RSS.

Pass criteria (exit code 1 otherwise): zero unexpected statuses or answers,
file descriptors and tasks back to baseline, RSS growth under ``--max-rss-mb``.

    python scripts/soak.py                      # 20,000 requests at concurrency 64
    python scripts/soak.py --requests 1000      # the small version run by `make test`
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from loguru import logger  # noqa: E402

from neurons.miner.faults import FaultOptions  # noqa: E402
from shared.gc_tuning import tune_for_serving  # noqa: E402
from shared.logging import setup_logging  # noqa: E402
from shared.signing import nonce_retention  # noqa: E402
from tests.chaos.fleet import HONEST, MESSAGES, Fleet, expected_answer, fleet, wait_until  # noqa: E402

FAULTY = ["refuse", "stall-headers", "stall-body", "trickle", "http500", "bad-json", "bad-sse", "empty",
          "done-only", "huge", "wrong-type", "bad-tools", "late", "disconnect"]
# Idle keep-alive connections are closed after this long, so "before" and "after" are both measured
# with empty pools: what remains open then is a leak, not a cached connection.
KEEPALIVE = 1.0
FD_SLACK = 2
REPLAY_WINDOW_S = nonce_retention()  # how long a miner keeps each nonce


@dataclass
class Resources:
    fds: int
    tasks: int
    rss_mb: float


@dataclass
class Report:
    requests: int
    concurrency: int
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    before: Resources | None = None
    after: Resources | None = None
    max_loop_lag: float = 0.0
    ok: bool = False


def resources() -> Resources:
    rss_kb = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return Resources(fds=len(os.listdir("/proc/self/fd")), tasks=len(asyncio.all_tasks()), rss_mb=rss_kb / 1024)


async def one_request(session: aiohttp.ClientSession, f: Fleet, rng: random.Random, deadline: float) -> str | None:
    """Send one request; return a description if the answer is not the honest one."""
    honest = rng.choice(f.uids(HONEST))
    faulty = rng.sample([u for u, p in f.profiles.items() if p != HONEST], 3)
    seed, stream = rng.randrange(1 << 30), rng.random() < 0.5
    body = {"messages": MESSAGES, "seed": seed, "stream": stream, "uids": [*faulty, honest], "timeout": deadline}
    try:
        async with session.post(f.url + "/v1/chat/completions", json=body, headers={"api-key": f.key},
                                timeout=aiohttp.ClientTimeout(total=deadline + 5)) as r:
            text = await r.text()
            if r.status != 200:
                return f"HTTP {r.status}: {text[:200]}"
            got = _content(text, stream)
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as e:
        return f"{type(e).__name__}: {e}"
    if got != expected_answer(seed):
        return f"wrong answer from uids {body['uids']} (stream={stream}): {got[:80]!r}"
    return None


def _content(text: str, stream: bool) -> str:
    if not stream:
        return json.loads(text)["choices"][0]["message"]["content"]
    out = []
    for line in text.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            obj = json.loads(line[6:])
            if "error" in obj:
                raise ValueError(f"error event {obj['error']}")
            out.extend(c.get("delta", {}).get("content") or "" for c in obj.get("choices", []))
    return "".join(out)


async def drive(session: aiohttp.ClientSession, f: Fleet, n: int, concurrency: int, deadline: float,
                seed: int, report: Report | None) -> None:
    rng = random.Random(seed)
    counter = iter(range(n))

    async def worker() -> None:
        for _ in counter:
            problem = await one_request(session, f, rng, deadline)
            if report is not None:
                key = "ok" if problem is None else "unexpected"
                report.statuses[key] = report.statuses.get(key, 0) + 1
                if problem and len(report.unexpected) < 20:
                    report.unexpected.append(problem)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def quiesce(f: Fleet, timeout: float) -> None:
    """Let the settled races, losers and fault handlers finish (all bounded by the deadline), then
    let idle keep-alive connections expire (the connector closes them within two periods)."""
    await wait_until(lambda: not f.ctx.background and f.in_flight() == 0, timeout)
    await asyncio.sleep(2 * KEEPALIVE + 0.5)
    gc.collect()


def short_keepalive_session(limit: int, limit_per_host: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit_per_host, keepalive_timeout=KEEPALIVE)
    return aiohttp.ClientSession(connector=connector)


async def watch_loop_lag(report: Report, period: float = 0.05) -> None:
    """The longest the event loop was late waking us: starvation (a busy shared machine) shows here."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(period)
        report.max_loop_lag = max(report.max_loop_lag, loop.time() - before - period)


async def warm_up(session: aiohttp.ClientSession, f: Fleet, requests: int, concurrency: int, deadline: float,
                  seed: int) -> None:
    """Load at the run's concurrency until pools, caches and allocator arenas reach their working
    size, so the growth measured after is what the run itself left behind.

    That takes time as well as requests: each miner keeps every nonce of the last
    ``REPLAY_WINDOW_S`` against replays, so its window grows for that long. Warmed up for 8 s, a
    20,000-request run (~100 s) measured the window's extra 50 s as 17-24 MB of "growth"; warmed
    up for the whole window, +4 MB. So the warm-up lasts as long as the run will (estimated from
    its own rate), up to the window.
    """
    batch = max(4 * concurrency, 1500, requests // 10)
    started, sent = time.monotonic(), 0
    while True:
        await drive(session, f, batch, concurrency, deadline, seed + 1 + sent, None)
        sent += batch
        elapsed = time.monotonic() - started
        if elapsed >= min(REPLAY_WINDOW_S, requests * elapsed / sent):
            return


async def soak(requests: int, concurrency: int, deadline: float, max_rss_mb: float, seed: int) -> Report:
    report = Report(requests=requests, concurrency=concurrency)
    profiles = {1: HONEST, 2: HONEST} | {uid: p for uid, p in enumerate(FAULTY, start=3)}
    options = FaultOptions(huge_bytes=1 << 20, late_seconds=deadline + 0.5, trickle_interval=0.1)
    with tempfile.TemporaryDirectory(prefix="sn1-soak-") as tmp:
        async with fleet(Path(tmp), profiles, options=options, miner_max_response_bytes=256 << 10) as f:
            tune_for_serving()  # the collector settings a served API runs with (serve_until_signal)
            api_pool = f.ctx.client.session
            f.ctx.client.session = short_keepalive_session(1024, 256)  # same limits as make_session()
            await api_pool.close()
            async with short_keepalive_session(concurrency, concurrency) as session:
                await warm_up(session, f, requests, concurrency, deadline, seed)
                await quiesce(f, deadline + 10)
                report.before = resources()
                started = time.monotonic()
                watcher = asyncio.create_task(watch_loop_lag(report))
                await drive(session, f, requests, concurrency, deadline, seed, report)
                report.seconds = time.monotonic() - started
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                await quiesce(f, deadline + 10)
                report.after = resources()
            await f.ctx.client.session.close()
    b, a = report.before, report.after
    report.ok = (not report.unexpected and report.statuses.get("ok", 0) == requests
                 and a.fds <= b.fds + FD_SLACK and a.tasks <= b.tasks and a.rss_mb - b.rss_mb < max_rss_mb)
    return report


def render(r: Report, max_rss_mb: float) -> str:
    b, a = r.before, r.after
    assert b is not None and a is not None
    lines = [
        f"soak: {r.requests} requests at concurrency {r.concurrency} in {r.seconds:.1f}s "
        f"({r.requests / max(r.seconds, 1e-9):.0f} req/s); each raced 1 honest + 3 faulty miners",
        f"  answers: {dict(Counter(r.statuses))}; longest event-loop stall {r.max_loop_lag * 1000:.0f} ms",
        f"  {'':<16}{'before':>10}{'after':>10}{'delta':>10}   limit",
        f"  {'open fds':<16}{b.fds:>10}{a.fds:>10}{a.fds - b.fds:>+10}   <= +{FD_SLACK}",
        f"  {'asyncio tasks':<16}{b.tasks:>10}{a.tasks:>10}{a.tasks - b.tasks:>+10}   <= 0",
        f"  {'RSS (MB)':<16}{b.rss_mb:>10.1f}{a.rss_mb:>10.1f}{a.rss_mb - b.rss_mb:>+10.1f}   < {max_rss_mb:g}",
    ]
    lines += [f"  unexpected: {u}" for u in r.unexpected]
    lines.append("soak: PASS" if r.ok else "soak: FAIL")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--deadline", type=float, default=5.0, help="per-request timeout sent to the API (s)")
    p.add_argument("--max-rss-mb", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the report as one JSON line too")
    args = p.parse_args()
    setup_logging("WARNING", role="soak")
    logger.disable("api")  # one INFO line per request would dominate the run
    report = asyncio.run(soak(args.requests, args.concurrency, args.deadline, args.max_rss_mb, args.seed))
    print(render(report, args.max_rss_mb), flush=True)
    if args.json:
        print(json.dumps(asdict(report)), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
