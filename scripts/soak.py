"""``make soak``: many requests through honest and faulty miners; resources must come back.

Runs the real API in this process (SQLite store, real signing) in front of two
honest miners and a dozen fault-injecting ones on 127.0.0.1. Every request
races one honest miner and three random faulty ones, streaming or not, so
every answer must be 200 with the honest text. Before and after the run
(after a warm-up at the same concurrency, so connection pools are at steady
state) it prints open file descriptors, asyncio tasks and RSS.

Bounded structures are at their size before the first reading (``BOUNDED``; the warm-up, ``fill_key_rows``,
the mix validator's ``SOAK_SEEN_SIZE``), so their filling is not read as growth; ``--samples N`` reads the
process after each of N phases of the run (by default one a ``PHASE_REQUESTS``, up to 10).

Pass criteria (exit code 1 otherwise): zero unexpected statuses or answers,
file descriptors and tasks back to baseline, RSS growth under ``--max-rss-mb``, Python's live blocks (but the
miners' windows') grown by less than ``MAX_BLOCKS_PER_REQUEST`` a request, and their trend over the phases
(``blocks_trend``, with 5 phases or more) under ``MAX_BLOCKS_TREND`` a request, which a leak of one object
every ten requests fails (chat only: the mix's is printed); with ``--mix``
also the API's per-request structures back to their size, the validator's queue, inbox and the
outbox drained, its score book within the metagraph, and no SQLite row left that no purge reaches.

    python scripts/soak.py                      # 20,000 requests at concurrency 64
    python scripts/soak.py --requests 1000      # the small version run by `make test`
    python scripts/soak.py --mix                # every endpoint (``MIX``), not only chat completions
    python scripts/soak.py --mix --samples 10 --types   # after each tenth; the types that grew (in every phase)
    python scripts/soak.py --mix --store redis   # the same on a Redis store (--redis-url, default REDIS_URL)

``--mix`` spreads the requests over every endpoint in ``MIX``: chat (with clients that leave mid-stream,
mixture, sessions that are deleted or left to expire), legacy completions, the Responses API (stored,
continued with ``previous_response_id``, deleted; background ones polled, cancelled, or streamed, left and
resumed or deleted; ``web_search``), conversations and their items, web retrieval and the key admin routes,
with the real validator app behind the API (``validator_behind``). It also prints the API's in-memory
structures that grow per request, key, session or response (``structures``), the validator's, and the rows
or Redis keys the store holds (what the run left to expire goes within ``MIX_RETENTION_S``, or SQLite's
next purge, at most a minute later). On Redis (``--store redis``) the run's namespace is read key by key after
each phase (``soak_redis``): no kind of key without a TTL may grow in number, nor their bytes by 4 a request,
and no TTL may pass the longest a store sets; the fds limit leaves out the sockets the Redis clients pool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from loguru import logger  # noqa: E402
from soak_redis import RedisHeld, pooled_connections, read_held, render_held  # noqa: E402
from soak_redis import problems as redis_problems  # noqa: E402

from api.concurrency import LIMITER  # noqa: E402
from neurons.miner.faults import FaultOptions  # noqa: E402
from shared.gc_tuning import tune_for_serving  # noqa: E402
from shared.keys_wire import MAX_CONCURRENT  # noqa: E402
from shared.logging import setup_logging  # noqa: E402
from shared.resigning import ResigningConnector  # noqa: E402
from shared.settings import mask_credentials  # noqa: E402
from shared.signing import nonce_retention  # noqa: E402
from shared.store.base import REDIS_CONNECTIONS, is_redis  # noqa: E402
from tests.chaos.fleet import HONEST, MESSAGES, VALIDATOR, Fleet, expected_answer, fleet, wait_until  # noqa: E402

FAULTY = ["refuse", "stall-headers", "stall-body", "trickle", "http500", "bad-json", "bad-sse", "empty",
          "done-only", "huge", "wrong-type", "bad-tools", "late", "disconnect"]
# Idle keep-alive connections are closed after this long, so "before" and "after" are both measured
# with empty pools: what remains open then is a leak, not a cached connection. Each reading waits two of them
# (``quiesce``): half a second, not a second, when nothing in the run is idle that long.
KEEPALIVE = 0.5
FD_SLACK = 2
# Python's live memory blocks (sys.getallocatedblocks) may grow by less than this per request over the run: a
# leak of one object a request fails (a request body kept: ~2 blocks a request of the mix), where RSS, which
# allocator slack moves by MBs, only fails one of ~1 KB a request.
MAX_BLOCKS_PER_REQUEST = 1.0
# Their trend over the phases (``blocks_trend``) must stay under this a request: a leak of one object every ten
# requests adds 0.1 (a request body kept every tenth request: 0.15 and 0.17 with what the run itself moves,
# measured), where the code measured 0.06 and 0.08 on a loaded host (2026-12-06): traced, about half of it the
# key row cache turning the fill's copies over for real rows (4,096 at most), the rest abc's subclass caches.
# Read over at least TREND_READINGS readings, and judged for chat only: the mix's readings move by ~1,000 blocks
# a phase (its trend measured +0.25 on Redis, 6,000 requests in 6 phases, for -836 first vs last): printed.
MAX_BLOCKS_TREND = 0.12
TREND_READINGS = 6
PHASE_REQUESTS = 2_000  # --samples by default: a phase a 2,000 requests, up to 10 (make soak: 10)
NONCE_BLOCKS = 5  # a nonce a replay window holds: its (hotkey, nonce) and (expiry, key) tuples, the hotkey read from
# its headers, the int and the float (measured)
REPLAY_WINDOW_S = nonce_retention()  # how long a miner keeps each nonce
# What must be empty once the run's payloads are delivered and scored (the mix's validator and outbox).
# The validator's seen-list (SEEN_SIZE, 100,000 payloads: ~35 MB full) in the soak: a payload a request, the
# real cap filled over 100,000 requests, so a run of 20,000 read its filling (+7 MB) as growth; this cap the
# warm-up fills with the run's own payloads, and each payload of the run pushes the oldest out.
SOAK_SEEN_SIZE = 2_000
DRAINED = ("validator queue", "validator inbox waiting", "outbox depth", "outbox unstored")
# The bounded structures the run fills, by their caps: each grows until full, which is no leak.
BOUNDED = {
    "validator seen-list": f"{SOAK_SEEN_SIZE:,} payloads",
    "validator nonce window": f"{REPLAY_WINDOW_S:g} s of payloads",
    "miners' nonce windows": f"{REPLAY_WINDOW_S:g} s of requests",
    "miners' latency samples": "a minute's, 10,000",
    "key row cache": "4,096 rows",
}


@dataclass
class Resources:
    fds: int
    tasks: int
    rss_mb: float
    trimmed_mb: float | None = None  # RSS after malloc_trim (informative: the limit is on rss_mb)
    redis_sockets: int = 0  # of the fds: the Redis clients' pooled connections (bounded, ``pooled_connections``)


@dataclass
class Sample:
    """The process after ``requests`` of the measured run (each read once the run's work is over)."""
    requests: int
    rss_mb: float
    trimmed_mb: float | None
    py_blocks: int  # memory blocks Python holds (sys.getallocatedblocks): its live objects, no allocator slack
    sqlite_mb: float  # what SQLite holds (its page caches above all), process-wide
    bounded: dict[str, int] = field(default_factory=dict)  # the bounded structures' sizes (BOUNDED)
    redis: RedisHeld | None = None  # what the run's Redis namespace holds (a Redis store)


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
    mix: bool = False
    store: str = "sqlite"
    scenarios: dict[str, int] = field(default_factory=dict)  # requests sent, by scenario
    structures_before: dict[str, int] = field(default_factory=dict)
    structures_after: dict[str, int] = field(default_factory=dict)
    rows_before: dict[str, int] = field(default_factory=dict)  # what the store holds, by table or key kind
    rows_after: dict[str, int] = field(default_factory=dict)
    validator_before: dict[str, int] = field(default_factory=dict)  # the validator's structures and the outbox
    validator_after: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)  # after the warm-up, then after each phase
    types_grown: dict[str, int] = field(default_factory=dict)  # --types: the object types that grew most
    types_every_phase: dict[str, int] = field(default_factory=dict)  # --types: those that grew in every phase
    redis_problems: list[str] = field(default_factory=list)  # what the run left on Redis for good (soak_redis)


async def resources(sampling: float = 1.0, *, redis: Sequence[Any] = ()) -> Resources:
    """The process's fds, asyncio tasks and RSS. Tasks are the fewest seen over ``sampling`` seconds: the mix's
    periodic work (availability refreshes, outbox passes, the validator's handlers) comes and goes, and what
    persists is what is left behind. ``redis``: the API's Redis clients (``StoreReader.clients``), whose pooled
    sockets are counted: each once, though five stores share them."""
    tasks = len(asyncio.all_tasks())
    for _ in range(int(sampling / 0.02)):
        await asyncio.sleep(0.02)
        tasks = min(tasks, len(asyncio.all_tasks()))
    return Resources(fds=len(os.listdir("/proc/self/fd")), tasks=tasks, rss_mb=_rss_mb(), trimmed_mb=_trimmed_rss_mb(),
                     redis_sockets=pooled_connections(redis))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), 0.0)


def _trimmed_rss_mb() -> float | None:
    """RSS once glibc has given its free heap back (``malloc_trim``): memory malloc keeps after it was freed is
    no leak (in the mix, RSS grew ~1 MB per 1,000 requests while Python's own allocations, traced with
    tracemalloc, grew only by the validator's seen-list). None where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return _rss_mb()


def _sqlite_mb() -> float:
    """What SQLite's allocator holds in this process (page caches, statements): the status counter of the
    library Python's sqlite3 module is linked to; 0 where it cannot be read."""
    try:
        lib = ctypes.CDLL("libsqlite3.so.0")
    except OSError:
        return 0.0
    current, highest = ctypes.c_int64(), ctypes.c_int64()
    lib.sqlite3_status64(0, ctypes.byref(current), ctypes.byref(highest), 0)  # SQLITE_STATUS_MEMORY_USED
    return current.value / (1 << 20)


def fill_key_rows(store: Any) -> None:
    """The SQLite key store's decoded-row cache (``SQLiteStore._record``, ``RECORDS_CACHED`` rows) filled to its
    cap with copies of a real row (each value a new object, as each read makes): a key's row is a new entry each
    time its ``last_used_at`` moves, so the mix filled it over ~12,000 requests (+2 MB read as growth). Full,
    each new row pushes the least recently used out. A Redis key store keeps no such cache."""
    from shared.store.sqlite import _KEY_COLUMNS, SQLiteStore

    if not isinstance(store, SQLiteStore):
        return
    row = store.db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys LIMIT 1").fetchone()
    for i in range(store._record.cache_info().maxsize or 0):
        store._record((f"{row[0]}-{i}", *(_fresh(v) for v in row[1:])))


def _fresh(value: Any) -> Any:
    """An equal value in an object of its own (a string, a number read from SQLite is one)."""
    if isinstance(value, str):
        return (value + "#")[:-1]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return type(value)(repr(value))
    return value


def bounded(f: Fleet, validator: dict[str, int]) -> dict[str, int]:
    """The sizes of the bounded structures (``BOUNDED``) the run fills."""
    from neurons.miner.traffic import TRAFFIC

    windows = sum(len(getattr(v.nonce_store, "_seen", ())) for v in f.verifiers.values())
    latencies = sum(len(app[TRAFFIC].latencies_ms) for app in f.miner_apps.values() if TRAFFIC in app)
    return {k: n for k, n in validator.items() if k in BOUNDED} | {
        "miners' nonce windows": windows, "miners' latency samples": latencies,
        "key row cache": _record_cache_size(f.ctx.store)}


def _record_cache_size(store: Any) -> int:
    """How many decoded rows the SQLite key store's cache holds (0 for a Redis store, which keeps none)."""
    cache = getattr(store, "_record", None)
    return cache.cache_info().currsize if cache is not None and hasattr(cache, "cache_info") else 0


async def sample(f: Fleet, requests: int, validator: dict[str, int], res: Resources, reader: StoreReader) -> Sample:
    """``reader``: the store's (``StoreReader``); on Redis its namespace is read too."""
    return Sample(requests=requests, rss_mb=res.rss_mb, trimmed_mb=res.trimmed_mb, py_blocks=sys.getallocatedblocks(),
                  sqlite_mb=_sqlite_mb(), bounded=bounded(f, validator),
                  redis=await reader.held() if reader.held is not None else None)


async def one_request(session: aiohttp.ClientSession, f: Fleet, rng: random.Random, deadline: float) -> str | None:
    """Send one request; return a description if the answer is not the honest one."""
    honest = rng.choice(f.uids(HONEST))
    faulty = rng.sample(f.uids(*FAULTY), 3)
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


Scenario = Callable[[aiohttp.ClientSession, random.Random], Awaitable[tuple[str, str | None]]]


def chat_only(f: Fleet, deadline: float) -> Scenario:
    """Every request a chat completion raced by one honest and three faulty miners."""
    async def run(http: aiohttp.ClientSession, rng: random.Random) -> tuple[str, str | None]:
        return "chat", await one_request(http, f, rng, deadline)
    return run


async def drive(session: aiohttp.ClientSession, scenario: Scenario, n: int, concurrency: int, seed: int,
                report: Report | None) -> None:
    rng = random.Random(seed)
    counter = iter(range(n))

    async def worker() -> None:
        for _ in counter:
            name, problem = await scenario(session, rng)
            if report is not None:
                key = "ok" if problem is None else "unexpected"
                report.statuses[key] = report.statuses.get(key, 0) + 1
                report.scenarios[name] = report.scenarios.get(name, 0) + 1
                if problem and len(report.unexpected) < 20:
                    report.unexpected.append(f"[{name}] {problem}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def quiesce(f: Fleet, timeout: float, validator: Callable[[], Awaitable[dict[str, int]]] | None = None) -> None:
    """Let the settled races, losers and fault handlers finish (all bounded by the deadline), and the
    outbox deliver what they left to the validator, which scores it; then let idle keep-alive connections
    expire (the connector closes them within two periods)."""
    await wait_until(lambda: not f.ctx.background and f.in_flight() == 0, timeout)
    for _ in range(int(timeout / 0.1)):
        if validator is None or all(n == 0 for k, n in (await validator()).items() if k in DRAINED):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(2 * KEEPALIVE + 0.5)
    gc.collect()


def short_keepalive_session(limit: int, limit_per_host: int, *, resigning: bool = False) -> aiohttp.ClientSession:
    """``resigning``: the API's own connector (``make_session``'s), whose ``pending`` is read after the run."""
    kind = ResigningConnector if resigning else aiohttp.TCPConnector
    connector = kind(limit=limit, limit_per_host=limit_per_host, keepalive_timeout=KEEPALIVE)
    return aiohttp.ClientSession(connector=connector)


async def watch_loop_lag(report: Report, period: float = 0.05) -> None:
    """The longest the event loop was late waking us: starvation (a busy shared machine) shows here."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(period)
        report.max_loop_lag = max(report.max_loop_lag, loop.time() - before - period)


async def warm_up(session: aiohttp.ClientSession, scenario: Scenario, requests: int, concurrency: int,
                  seed: int, filled: Callable[[], Awaitable[bool]] | None = None) -> None:
    """Load at the run's concurrency until pools, caches and allocator arenas reach their working
    size, so the growth measured after is what the run itself left behind.

    That takes time as well as requests: each miner keeps every nonce of the last
    ``REPLAY_WINDOW_S`` against replays, so its window grows for that long. Warmed up for 8 s, a
    20,000-request run (~100 s) measured the window's extra 50 s as 17-24 MB of "growth"; warmed
    up for the whole window, +4 MB. So the warm-up lasts as long as the run will (estimated from
    its own rate), up to the window, and until ``filled`` says the bounded structures it names are full (the
    mix's seen-list: on a loaded host the window passed with 1,500 of its 2,000 payloads, and the first phase's
    filling read as +0.17 blocks a request, past the blocks' trend limit).

    A batch is 1,500 requests (a tenth of a long run), or as many as a shorter run measures: the 1,000 of the soak
    ``make test`` runs warmed up with 1,500, half its time, for RSS readings a few MB closer than its limit needs.
    """
    batch = max(4 * concurrency, min(1500, requests), requests // 10)
    started, sent = time.monotonic(), 0
    while True:
        await drive(session, scenario, batch, concurrency, seed + 1 + sent, None)
        sent += batch
        elapsed = time.monotonic() - started
        if elapsed >= min(REPLAY_WINDOW_S, requests * elapsed / sent) and (filled is None or await filled()):
            return


def seen_filled(validator: Callable[[], Awaitable[dict[str, int]]] | None) -> Callable[[], Awaitable[bool]] | None:
    """Whether the mix validator's seen-list is at its cap (None: no validator)."""
    if validator is None:
        return None
    read = validator

    async def filled() -> bool:
        return (await read()).get("validator seen-list", 0) >= SOAK_SEEN_SIZE
    return filled


def object_types() -> Counter[str]:
    """Live objects the collector tracks (containers: what holds a leak's strings and numbers), by type."""
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


class TypeGrowth:
    """``--types``: the object types that grew over the run, and those that grew in every phase: a leak grows
    with the requests, phase after phase, where a cache filling or the miners' windows following the request
    rate rise and fall, so what leaks is named. Only the first, the last and the types still rising are kept:
    a count kept for each phase was thousands of Python blocks a phase, read as a leak by the blocks' trend."""

    def __init__(self, first: Counter[str]) -> None:
        self.first, self.last = first, Counter(first)  # two counts held from the first reading to the last
        self.rising: set[str] | None = None  # None until the first phase is read
        self.phases = 0

    def phase(self, counted: Counter[str]) -> None:
        rose = {t for t, n in counted.items() if n > self.last[t]}
        self.rising = rose if self.rising is None else self.rising & rose
        self.last, self.phases = counted, self.phases + 1

    def report(self, most: int = 15) -> tuple[dict[str, int], dict[str, int]]:
        """What grew most over the run; what grew in every phase (with two phases or more), by how much."""
        grown = self.last - self.first
        every = Counter({t: grown[t] for t in self.rising or ()}) if self.phases >= 2 else Counter()
        return dict(grown.most_common(most)), dict(every.most_common(most))


def phases(requests: int, samples: int) -> list[tuple[int, int]]:
    """The measured run in ``samples`` phases: (requests before it, its requests)."""
    size = max(1, requests // samples)
    starts = list(range(0, requests, size))[:samples]
    return [(start, (starts[i + 1] if i + 1 < len(starts) else requests) - start) for i, start in enumerate(starts)]


async def soak(requests: int, concurrency: int, deadline: float, max_rss_mb: float, seed: int, *,
               mix: bool = False, store_url: str | None = None, samples: int = 1, types: bool = False) -> Report:
    report = Report(requests=requests, concurrency=concurrency, mix=mix,
                    store=mask_credentials(store_url) if store_url else "sqlite")
    profiles = {1: HONEST, 2: HONEST} | {uid: p for uid, p in enumerate(FAULTY, start=3)}
    if mix:
        profiles[len(profiles) + 1] = STALLING
    options = FaultOptions(huge_bytes=1 << 20, late_seconds=deadline + 0.5, trickle_interval=0.1)
    settings = {"miner_max_response_bytes": 256 << 10}
    if mix:  # what is left to expire does within the run; the single key may run as many as the worker
        settings |= {"responses_retention_seconds": MIX_RETENTION_S, "max_background_responses_per_key": 256}
    with tempfile.TemporaryDirectory(prefix="sn1-soak-") as tmp:
        async with fleet(Path(tmp), profiles, options=options, **settings) as f:
            tune_for_serving()  # the collector settings a served API runs with (serve_until_signal)
            api_pool = f.ctx.client.session
            f.ctx.client.session = short_keepalive_session(1024, 256, resigning=True)  # as make_session()
            await api_pool.close()
            async with contextlib.AsyncExitStack() as stack:
                reader = await stack.enter_async_context(store_on(f, Path(tmp), store_url))
                scenario, validator = chat_only(f, deadline), None
                if mix:
                    validator = await stack.enter_async_context(validator_behind(f, Path(tmp), reader.outbox))
                    scenario = await stack.enter_async_context(mixed(f, deadline, seed))
                async with short_keepalive_session(concurrency, concurrency) as session:
                    fill_key_rows(f.ctx.store)
                    await warm_up(session, scenario, requests, concurrency, seed, seen_filled(validator))
                    await quiesce(f, deadline + 10, validator)
                    report.before, report.structures_before = await resources(redis=reader.clients), structures(f)
                    report.validator_before = await validator() if validator else {}
                    growth = TypeGrowth(object_types()) if types else None  # before the first reading: it holds
                    report.samples.append(await sample(f, 0, report.validator_before, report.before, reader))
                    report.rows_before = await rows_of(reader, report.samples[0])
                    for done, n in phases(requests, samples):
                        started, watcher = time.monotonic(), asyncio.create_task(watch_loop_lag(report))
                        await drive(session, scenario, n, concurrency, seed + done, report)
                        report.seconds += time.monotonic() - started
                        watcher.cancel()
                        await asyncio.gather(watcher, return_exceptions=True)
                        await quiesce(f, deadline + 10, validator)
                        report.after = await resources(redis=reader.clients)
                        report.samples.append(await sample(f, done + n, await validator() if validator else {},
                                                           report.after, reader))
                        if growth is not None:
                            growth.phase(object_types())
                    if growth is not None:
                        report.types_grown, report.types_every_phase = growth.report()
                    report.structures_after = structures(f)
                    report.validator_after = await validator() if validator else {}
                    report.rows_after = await rows_of(reader, report.samples[-1])
            await f.ctx.client.session.close()
    b, a = report.before, report.after
    grown = {k: v for k, v in report.structures_after.items() if v > report.structures_before.get(k, 0)}
    v = report.validator_after
    drained = all(v.get(k, 0) == 0 for k in DRAINED) and v.get("validator score book", 0) <= len(profiles)
    orphans = [k for k, n in report.rows_after.items() if k in ORPHANS and n]
    first, last = report.samples[0].redis, report.samples[-1].redis
    report.redis_problems = redis_problems(first, last, requests) if first and last else []
    report.ok = (not report.unexpected and report.statuses.get("ok", 0) == requests and not grown and drained
                 and not orphans and not report.redis_problems
                 and a.fds - a.redis_sockets <= b.fds - b.redis_sockets + FD_SLACK and a.tasks <= b.tasks and a.rss_mb - b.rss_mb < max_rss_mb
                 and blocks_grown(report) < MAX_BLOCKS_PER_REQUEST * requests
                 and (mix or (blocks_trend(report.samples) or 0.0) < MAX_BLOCKS_TREND))
    return report


def blocks_grown(r: Report) -> int:
    """Python's blocks grown over the run but the miners' windows': their replay windows hold the last minute's
    nonces (5 blocks each, 4 nonces a raced request) and the honest miners the minute's latencies (a float
    each, emptied each minute), so they move with the request rate and the clock by thousands of blocks."""
    if not r.samples:
        return 0
    return _steady_blocks(r.samples[-1]) - _steady_blocks(r.samples[0])


def blocks_trend(samples: list[Sample]) -> float | None:
    """Python's steady blocks a request over the run: the median of the slopes between every two readings
    (Theil-Sen). A leak adds its blocks phase after phase; a reading the miners' windows or the collector moved
    moves the median little, where it moves first-vs-last by all it is off. None under ``TREND_READINGS``."""
    points = [(x.requests, _steady_blocks(x)) for x in samples]
    if len(points) < TREND_READINGS:
        return None
    return statistics.median((b2 - b1) / (r2 - r1) for (r1, b1), (r2, b2) in itertools.combinations(points, 2))


def _steady_blocks(x: Sample) -> int:
    windows = x.bounded.get("miners' nonce windows", 0) + x.bounded.get("validator nonce window", 0)
    return x.py_blocks - NONCE_BLOCKS * windows - x.bounded.get("miners' latency samples", 0)


def structures(f: Fleet) -> dict[str, int]:
    """The API's in-memory structures that hold an entry per request, response, key or miner: each must be
    back to its size before the run once the run's work is over."""
    ctx = f.ctx
    pending = getattr(ctx.client.session.connector, "pending", {})
    usage = ctx.usage
    return {
        "ctx.background": len(ctx.background),
        "ctx.running_responses": len(ctx.running_responses),
        "ctx.response_logs": len(ctx.response_logs),
        "ctx.background_owners": len(ctx.background_owners),
        "client._chat_urls": len(ctx.client._chat_urls),
        "connector.pending": len(pending),
        "usage._pending": len(usage._pending) if usage is not None else 0,
        "usage._last_used": len(usage._last_used) if usage is not None else 0,
    }


# --- the mix (--mix): every endpoint, in the patterns a long-running gateway sees ---------------------------

STALLING = "stall-mid"  # a valid start, then silence: what a client leaving mid-stream, or a cancel, meets
ADMIN_KEY = "admin-secret-for-tests"  # build_api_context's
SESSION_KEYS = 32  # keys the sessions (one per key) are opened with
Call = tuple[int, str]


@dataclass
class Mix:
    """What the mix's scenarios share: the fleet, the keys sessions are opened with, and the random source."""
    f: Fleet
    session_keys: list[str]
    rng: random.Random
    deadline: float

    def race(self) -> list[int]:
        """Three faulty miners and an honest one: the answer is the honest miner's."""
        return [*self.rng.sample(self.f.uids(*FAULTY), 3), self.rng.choice(self.f.uids(HONEST))]

    def stalling(self) -> list[int]:
        return self.f.uids(STALLING)


async def _call(http: aiohttp.ClientSession, m: Mix, method: str, path: str, *, body: Any = None,
                params: dict[str, str] | None = None, key: str | None = None, admin: bool = False) -> Call:
    headers = {"admin-key": ADMIN_KEY} if admin else {"Authorization": f"Bearer {key or m.f.key}"}
    async with http.request(method, m.f.url + path, json=body, params=params, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=m.deadline + 15)) as r:
        return r.status, await r.text()


def _unless(what: str, got: Call, ok: tuple[int, ...] = (200,)) -> str | None:
    status, text = got
    return None if status in ok else f"{what}: HTTP {status}: {text[:200]}"


async def _leave_stream(http: aiohttp.ClientSession, m: Mix, path: str, body: dict[str, Any]) -> Call:
    """Start a stream, read its first bytes, and drop the connection (a client that goes away)."""
    async with http.post(m.f.url + path, json=body, headers={"Authorization": f"Bearer {m.f.key}"},
                         timeout=aiohttp.ClientTimeout(total=m.deadline + 15)) as r:
        first = (await r.content.readany()).decode(errors="replace")
        r.close()
        return r.status, first


async def mix_chat(http: aiohttp.ClientSession, m: Mix) -> str | None:
    return await one_request(http, m.f, m.rng, m.deadline)


async def mix_chat_left(http: aiohttp.ClientSession, m: Mix) -> str | None:
    uids = m.stalling() if m.rng.random() < 0.5 else m.race()
    got = await _leave_stream(http, m, "/v1/chat/completions",
                              {"messages": MESSAGES, "stream": True, "uids": uids, "timeout": m.deadline})
    return _unless("chat left mid-stream", got)


async def mix_mixture(http: aiohttp.ClientSession, m: Mix) -> str | None:
    got = await _call(http, m, "POST", "/v1/chat/completions",
                      body={"messages": MESSAGES, "mixture": True, "stream": m.rng.random() < 0.5,
                            "timeout": m.deadline})
    return _unless("mixture", got, (200, 502, 504))


async def mix_completions(http: aiohttp.ClientSession, m: Mix) -> str | None:
    got = await _call(http, m, "POST", "/v1/completions",
                      body={"prompt": "Tell me something reliable.", "stream": m.rng.random() < 0.5,
                            "uids": m.race(), "timeout": m.deadline})
    return _unless("completions", got)


async def mix_responses(http: aiohttp.ClientSession, m: Mix) -> str | None:
    """A stored response, continued with ``previous_response_id``, read, its input items listed; the first
    deleted half the time (the rest expire)."""
    first = await _call(http, m, "POST", "/v1/responses",
                        body={"input": "Tell me something reliable.", "uids": m.race(), "timeout": m.deadline})
    if problem := _unless("responses", first):
        return problem
    first_id = json.loads(first[1])["id"]
    second = await _call(http, m, "POST", "/v1/responses",
                         body={"input": "And another.", "previous_response_id": first_id, "uids": m.race(),
                               "stream": m.rng.random() < 0.5, "timeout": m.deadline})
    if problem := _unless("responses previous_response_id", second):
        return problem
    for path in (f"/v1/responses/{first_id}", f"/v1/responses/{first_id}/input_items"):
        if problem := _unless(f"GET {path}", await _call(http, m, "GET", path)):
            return problem
    if m.rng.random() < 0.5:
        return _unless("DELETE response", await _call(http, m, "DELETE", f"/v1/responses/{first_id}"))
    return None


async def mix_web_search(http: aiohttp.ClientSession, m: Mix) -> str | None:
    got = await _call(http, m, "POST", "/v1/responses",
                      body={"input": "What is Bittensor?", "tools": [{"type": "web_search"}], "uids": m.race(),
                            "store": m.rng.random() < 0.5, "timeout": m.deadline})
    return _unless("responses web_search", got, (200, 502, 504))


async def mix_web_retrieval(http: aiohttp.ClientSession, m: Mix) -> str | None:
    got = await _call(http, m, "GET", "/web_retrieval",
                      params={"search_query": "decentralised inference", "uids": ",".join(map(str, m.race())),
                              "max_response_time": str(m.deadline)})
    return _unless("web_retrieval", got, (200, 502, 504))


async def _poll(http: aiohttp.ClientSession, m: Mix, response_id: str) -> Call:
    """GET a background response until it is settled (bounded by its deadline and the grace)."""
    got: Call = (0, "")
    for _ in range(int((m.deadline + 10) / 0.2)):
        got = await _call(http, m, "GET", f"/v1/responses/{response_id}")
        if got[0] != 200 or json.loads(got[1])["status"] not in ("queued", "in_progress"):
            return got
        await asyncio.sleep(0.2)
    return 0, f"still pending: {got[1][:100]}"


async def mix_background(http: aiohttp.ClientSession, m: Mix) -> str | None:
    """A background response polled to its end, or cancelled while its (stalling) miner answers."""
    cancel = m.rng.random() < 0.5
    body = {"input": "Tell me something reliable.", "background": True, "timeout": m.deadline,
            "uids": m.stalling() if cancel else m.race()}
    queued = await _call(http, m, "POST", "/v1/responses", body=body)
    if problem := _unless("background", queued):
        return problem
    response_id = json.loads(queued[1])["id"]
    if cancel:
        got = await _call(http, m, "POST", f"/v1/responses/{response_id}/cancel")
        if problem := _unless("cancel", got):
            return problem
        if json.loads(got[1])["status"] != "cancelled":
            return f"cancel answered {got[1][:200]}"
        return None
    return _unless("background poll", await _poll(http, m, response_id))


async def mix_background_stream(http: aiohttp.ClientSession, m: Mix) -> str | None:
    """A streamed background response whose caller leaves after its first event, then resumes it to its end,
    or deletes it while it is still being answered."""
    body = {"input": "Tell me something reliable.", "background": True, "stream": True, "timeout": m.deadline,
            "uids": m.stalling() if m.rng.random() < 0.5 else m.race()}
    left = await _leave_stream(http, m, "/v1/responses", body)
    if problem := _unless("background stream", left):
        return problem
    created = next((json.loads(line[6:]) for line in left[1].split("\n") if line.startswith("data: ")), None)
    if created is None:
        return f"background stream: no first event in {left[1][:200]!r}"
    response_id = created["response"]["id"]
    if m.rng.random() < 0.3:
        return _unless("DELETE running response", await _call(http, m, "DELETE", f"/v1/responses/{response_id}"))
    resumed = await _call(http, m, "GET", f"/v1/responses/{response_id}",
                          params={"stream": "true", "starting_after": "0"})
    return _unless("background stream resumed", resumed)


async def mix_conversation(http: aiohttp.ClientSession, m: Mix) -> str | None:
    """A conversation made, answered into, its items added, listed and one deleted; the conversation deleted
    half the time (the rest expire)."""
    item = {"type": "message", "role": "user", "content": "Tell me something reliable."}
    made = await _call(http, m, "POST", "/v1/conversations", body={"items": [item], "metadata": {"soak": "1"}})
    if problem := _unless("conversation", made):
        return problem
    conv = json.loads(made[1])["id"]
    steps = [
        ("POST", "/v1/responses", {"input": "Go on.", "conversation": conv, "uids": m.race(), "timeout": m.deadline}),
        ("POST", f"/v1/conversations/{conv}/items", {"items": [item, item]}),
        ("GET", f"/v1/conversations/{conv}/items", None),
        ("POST", f"/v1/conversations/{conv}", {"metadata": {"soak": "2"}}),
    ]
    for method, path, body in steps:
        if problem := _unless(f"{method} {path}", await _call(http, m, method, path, body=body)):
            return problem
    if m.rng.random() < 0.5:
        return _unless("DELETE conversation", await _call(http, m, "DELETE", f"/v1/conversations/{conv}"))
    return None


async def mix_session(http: aiohttp.ClientSession, m: Mix) -> str | None:
    """A sticky session on one of ``SESSION_KEYS`` keys (opening one replaces that key's last): chat through
    it, a ping, then deleted half the time, else left to expire in a few seconds."""
    key = m.rng.choice(m.session_keys)
    opened = await _call(http, m, "POST", "/v1/sessions", key=key,
                         body={"model": "default", "session_duration": m.rng.randint(1, 5), "failover": True})
    if problem := _unless("session", opened, (200, 503)):
        return problem
    if opened[0] != 200:
        return None
    sid = json.loads(opened[1])["session_id"]
    chat = await _call(http, m, "POST", "/v1/chat/completions", key=key,
                       body={"messages": MESSAGES, "stream": m.rng.random() < 0.5, "timeout": m.deadline})
    if problem := _unless("chat in session", chat, (200, 502, 504)):
        return problem
    if problem := _unless("ping", await _call(http, m, "POST", f"/v1/sessions/{sid}/ping", key=key), (200, 404)):
        return problem
    if m.rng.random() < 0.5:
        return _unless("DELETE session", await _call(http, m, "DELETE", f"/v1/sessions/{sid}", key=key), (200, 404))
    return None


async def mix_keys(http: aiohttp.ClientSession, m: Mix) -> str | None:
    """A key's life through the admin routes: made, used (half the time to open a session), changed, rotated,
    used again, deleted."""
    made = await _call(http, m, "POST", "/api_management/create-api-key/", params={"rate_limit": "100"}, admin=True)
    if problem := _unless("create key", made):
        return problem
    secret = json.loads(made[1])["api_key"]
    if problem := _unless("usage", await _call(http, m, "GET", "/v1/usage", key=secret)):
        return problem
    if m.rng.random() < 0.5:  # a session of an hour, which the key's deletion must close
        opened = await _call(http, m, "POST", "/v1/sessions", key=secret, body={"model": "default"})
        if problem := _unless("session of a key", opened, (200, 503)):
            return problem
    changed = await _call(http, m, "PUT", f"/api_management/modify-api-key/{secret}", body={"rate_limit": 50},
                          admin=True)
    if problem := _unless("modify key", changed):
        return problem
    rotated = await _call(http, m, "POST", f"/api_management/rotate-api-key/{secret}", admin=True)
    if problem := _unless("rotate key", rotated):
        return problem
    secret = json.loads(rotated[1])["api_key"]
    if problem := _unless("usage after rotate", await _call(http, m, "GET", "/v1/usage", key=secret)):
        return problem
    return _unless("delete key", await _call(http, m, "DELETE", f"/api_management/delete-api-key/{secret}",
                                             admin=True))


# name -> (weight, scenario): chat completions stay the largest share, as in production
MIX: dict[str, tuple[int, Callable[[aiohttp.ClientSession, Mix], Awaitable[str | None]]]] = {
    "chat": (6, mix_chat),
    "chat-left": (2, mix_chat_left),
    "mixture": (1, mix_mixture),
    "completions": (2, mix_completions),
    "responses": (2, mix_responses),
    "web-search": (1, mix_web_search),
    "web-retrieval": (1, mix_web_retrieval),
    "background": (2, mix_background),
    "background-stream": (1, mix_background_stream),
    "conversation": (1, mix_conversation),
    "session": (2, mix_session),
    "keys": (1, mix_keys),
}


MIX_RETENTION_S = 20.0  # RESPONSES_RETENTION_SECONDS in the mix: the responses and conversations it leaves expire


@dataclass
class StoreReader:
    """How to count what the API's stores hold: rows by table (SQLite) or keys by kind (Redis); on Redis also
    the run's namespace key by key (``soak_redis``), the API's two Redis clients (whose pooled sockets the fds
    limit leaves out) and its scoring outbox, on them."""
    rows: Callable[[], Awaitable[dict[str, int]]] | None = None  # SQLite's tables (Redis: ``held``'s keys)
    held: Callable[[], Awaitable[RedisHeld]] | None = None
    clients: list[Any] = field(default_factory=list)
    outbox: Any = None


async def rows_of(reader: StoreReader, taken: Sample) -> dict[str, int]:
    """What the store holds by kind: on Redis, the reading ``taken`` just made of the namespace (a second whole
    read of it, key by key, would only repeat it); on SQLite, its tables' rows."""
    if taken.redis is not None:
        return taken.redis.keys
    assert reader.rows is not None  # a SQLite store
    return await reader.rows()


@contextlib.asynccontextmanager
async def store_on(f: Fleet, tmp: Path, url: str | None) -> AsyncIterator[StoreReader]:
    """The API's stores on ``url`` (a Redis; None: the fleet's SQLite file), and how to read what they hold. On
    Redis, built as a served worker builds them (``api.worker``: ``open_stores`` on its ``redis_links``, two named
    clients for all five stores), so the run measures what serves. A Redis is left as it was found: the run's keys
    are under a namespace of its own, deleted at the end."""
    if url is None:
        yield StoreReader(rows=lambda: _sqlite_rows(tmp / "api.db"))
        return
    from api.worker import open_stores, redis_links

    ns = f"sn1-soak-{os.getpid()}"
    ctx = f.ctx
    sqlite = (ctx.store, ctx.responses, ctx.conversations, ctx.sessions)
    settings = ctx.settings.model_copy(update={"store_url": url, "store_namespace": ns})
    links = redis_links(settings)
    assert links is not None  # a Redis URL
    stores = open_stores(settings, links)
    ctx.store, ctx.sessions = stores.store, stores.sessions
    ctx.responses, ctx.conversations = stores.responses, stores.conversations
    if ctx.usage is not None:
        ctx.usage.store = ctx.store
    f.app[LIMITER].slots = ctx.store.inflight()  # the slots beside the keys, as the app opens them
    f.key, _ = await ctx.store.create_key(1_000_000, max_concurrent_requests=MAX_CONCURRENT)
    for store in sqlite[1:]:
        await store.aclose()

    async def held() -> RedisHeld:
        return await read_held(ctx.store.redis, ns)

    try:
        yield StoreReader(held=held, clients=[links.keys.client, links.data.client], outbox=stores.outbox)
    finally:
        async for name in ctx.store.redis.scan_iter(match=f"{ns}:*", count=1000):
            await ctx.store.redis.delete(name)
        await stores.aclose()
        await links.aclose()  # the stores leave their shared clients open, as a worker's do
        ctx.store = sqlite[0]  # the fleet closes its own


ORPHANS = {
    "orphan response_events": "SELECT COUNT(*) FROM response_events WHERE response_id NOT IN "
                               "(SELECT id FROM stored_responses)",
    "orphan response_items": "SELECT COUNT(*) FROM stored_response_items WHERE response_id NOT IN "
                             "(SELECT id FROM stored_responses)",
    "orphan conversation_items": "SELECT COUNT(*) FROM conversation_items WHERE conversation_id NOT IN "
                                 "(SELECT id FROM conversations)",
    "orphan model_sessions": "SELECT COUNT(*) FROM model_sessions WHERE key_id NOT IN (SELECT id FROM api_keys)",
}


async def _sqlite_rows(path: Path) -> dict[str, int]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
        for name, query in ORPHANS.items():  # rows no purge reaches: what they belonged to is gone
            rows[name] = db.execute(query).fetchone()[0]
        return rows


@contextlib.asynccontextmanager
async def mixed(f: Fleet, deadline: float, seed: int) -> AsyncIterator[Scenario]:
    """The mix's scenario picker (``MIX``, by weight), its session keys made, and the API's session sweep
    running as it does in a served API."""
    from api.sessions import sweep_loop

    keys = [(await f.ctx.store.create_key(1_000_000, name=f"soak-session-{i}", max_concurrent_requests=MAX_CONCURRENT))[0]
            for i in range(SESSION_KEYS)]
    m = Mix(f=f, session_keys=keys, rng=random.Random(seed), deadline=deadline)
    names, weights = list(MIX), [w for w, _ in MIX.values()]

    async def run(http: aiohttp.ClientSession, rng: random.Random) -> tuple[str, str | None]:
        name = rng.choices(names, weights)[0]
        try:
            return name, await MIX[name][1](http, m)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as e:
            return name, f"{type(e).__name__}: {e}"

    sweeper = asyncio.create_task(sweep_loop(f.ctx, 1.0))
    try:
        yield run
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)


class FlatScorer:
    """The validator's scorer with a fixed reward (no reference model to run): each job's uids are credited in
    the score book, then the job leaves the inbox, as ``Scorer.score`` ends."""

    def __init__(self, scores: Any, inbox: Any) -> None:
        self.scores, self.inbox = scores, inbox

    async def score(self, job: Any) -> None:
        for uid, hotkey in job.hotkeys.items():
            self.scores.update(uid, hotkey, job.task, 0.5, organic=job.source == "organic")
        self.inbox.settle([job])


@contextlib.asynccontextmanager
async def validator_behind(f: Fleet, tmp: Path, outbox: Any = None) -> AsyncIterator[Callable[[], Awaitable[
        dict[str, int]]]]:
    """The real validator app behind the API: the API's scoring outbox (``outbox``, on the API's Redis links, which
    ``store_on`` closes; None: one on the fleet's SQLite file, closed here) delivers every
    settled race's payload to it, its inbox keeps them on disk, a worker scores them, and the API refreshes
    its availability from it. The validator's metagraph gives a uid a new hotkey every second (the score book
    synced as its loop does): its per-uid maps must stay within the metagraph. Yields how to read its
    structures and the outbox's depth."""
    from api.availability import AvailabilityCache
    from api.scoring_outbox import OutboxForwarder
    from neurons.validator.app import ValidatorContext, create_validator_app, scoring_verifier
    from neurons.validator.availability import AvailabilityBook
    from neurons.validator.inbox import open_inbox
    from neurons.validator.intake import RecentPayloads
    from neurons.validator.scores import ScoreBook
    from neurons.validator.scoring import scoring_worker
    from neurons.validator.scoring_queue import ScoringQueue
    from neurons.validator.tasks import default_registry
    from shared.metagraph import MetagraphSnapshot, MetagraphView
    from shared.store.outbox import open_outbox
    from tests.helpers import StaticSource, serve_app

    view = MetagraphView(StaticSource(f.ctx.metagraph.snapshot))
    await view.refresh()
    inbox = open_inbox(tmp / "inbox.db")
    queue = ScoringQueue(1000, settle=inbox.settle)
    scores = ScoreBook(default_registry().probabilities)
    serves = {"task_availabilities": {"InferenceTask": True, "WebRetrievalTask": True},
              "llm_model_availabilities": {"sn1/deterministic": True}}
    book = AvailabilityBook(entries={uid: serves for uid in f.profiles})
    vctx = ValidatorContext(book=book, scoring_queue=queue, scores=scores, metagraph=view, inbox=inbox,
                            seen=RecentPayloads(SOAK_SEEN_SIZE),
                            verifier=scoring_verifier(VALIDATOR.ss58_address, [VALIDATOR.ss58_address]))
    own = outbox is None
    if own:
        outbox = open_outbox(f"sqlite:///{tmp / 'api.db'}", namespace=f"sn1-soak-{os.getpid()}")

    async def churn() -> None:
        rng = random.Random(7)
        for n in itertools.count():
            await asyncio.sleep(1.0)
            snap = view.snapshot
            uid = rng.choice(f.uids(*FAULTY))
            neurons = [replace(x, hotkey=f"churned-{n}") if x.uid == uid else x for x in snap.neurons]
            view.snapshot = MetagraphSnapshot(snap.netuid, snap.block + 1, neurons)
            scores.sync(view.snapshot)

    async with serve_app(create_validator_app(vctx)) as url:
        forwarder = OutboxForwarder(outbox, f.ctx.client, url, VALIDATOR.ss58_address)
        f.ctx.attach_forwarder(forwarder)
        f.ctx.availability = AvailabilityCache(f.ctx.client, url, VALIDATOR.ss58_address, refresh_seconds=1.0)
        tasks = [asyncio.create_task(c) for c in (forwarder.run(), f.ctx.availability.run(), churn(),
                                                   scoring_worker(queue, FlatScorer(scores, inbox), view))]

        async def read() -> dict[str, int]:
            return {"validator queue": queue.qsize(), "validator inbox waiting": inbox.waiting,
                    "validator score book": len(scores.miners), "validator seen-list": len(vctx.seen._seen),
                    "validator nonce window": len(getattr(vctx.verifier.nonce_store, "_seen", ())),
                    "outbox depth": await outbox.depth(), "outbox unstored": len(forwarder._pending)}
        try:
            yield read
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if own:
                await outbox.close()
            await inbox.close()
            f.ctx.availability = None


def render_samples(samples: list[Sample]) -> list[str]:
    """RSS, Python's blocks, SQLite's memory and the bounded structures after each phase."""
    if len(samples) < 2:
        return []
    names = list(samples[0].bounded)
    redis = samples[0].redis is not None
    heads = ("requests", "RSS MB", "trimmed", "py blocks", "steady*", "SQLite MB") + (("Redis keys", "Redis KB", "used MB*") if redis else ())
    lines = ["  over the run:" + "".join(f"{h:>11}" for h in heads)
             + "".join(f"  {n} (<= {BOUNDED[n]})" for n in names)]
    for x in samples:
        trimmed = f"{x.trimmed_mb:>11.1f}" if x.trimmed_mb is not None else f"{'-':>11}"
        held = (f"{x.redis.total_keys:>11}{x.redis.bytes / 1024:>11.0f}{x.redis.used_memory / (1 << 20):>11.1f}"
                if x.redis is not None else "")
        lines.append(f"  {'':<12}{x.requests:>11}{x.rss_mb:>11.1f}{trimmed}{x.py_blocks:>11}{_steady_blocks(x):>11}{x.sqlite_mb:>11.1f}{held}"
                     + "".join(f"  {x.bounded.get(n, 0):>{len(n) + 6 + len(BOUNDED[n])}}" for n in names))
    return lines


def render(r: Report, max_rss_mb: float) -> str:
    b, a = r.before, r.after
    assert b is not None and a is not None
    what = (f"a mix of every endpoint on {r.store}: {dict(sorted(r.scenarios.items()))}" if r.mix
            else "each raced 1 honest + 3 faulty miners")
    lines = [
        f"soak: {r.requests} requests at concurrency {r.concurrency} in {r.seconds:.1f}s "
        f"({r.requests / max(r.seconds, 1e-9):.0f} req/s); {what}",
        f"  answers: {dict(Counter(r.statuses))}; longest event-loop stall {r.max_loop_lag * 1000:.0f} ms",
        f"  {'':<24}{'before':>10}{'after':>10}{'delta':>10}   limit",
        f"  {'open fds':<24}{b.fds:>10}{a.fds:>10}{a.fds - b.fds:>+10}   <= +{FD_SLACK}"
        + (f" + Redis's sockets ({a.redis_sockets - b.redis_sockets:+}: {b.redis_sockets} -> {a.redis_sockets}, "
           f"pooled, <= {2 * REDIS_CONNECTIONS} a client)" if a.redis_sockets or b.redis_sockets else ""),
        f"  {'asyncio tasks':<24}{b.tasks:>10}{a.tasks:>10}{a.tasks - b.tasks:>+10}   <= 0",
        f"  {'RSS (MB)':<24}{b.rss_mb:>10.1f}{a.rss_mb:>10.1f}{a.rss_mb - b.rss_mb:>+10.1f}   < {max_rss_mb:g}",
    ]
    if r.samples:
        first, last = _steady_blocks(r.samples[0]), _steady_blocks(r.samples[-1])
        lines.append(f"  {'Python blocks*':<24}{first:>10}{last:>10}{last - first:>+10}   "
                     f"< {MAX_BLOCKS_PER_REQUEST * r.requests:g}")
        if (trend := blocks_trend(r.samples)) is not None:
            limit = ("printed, not judged: the mix's readings move by ~1,000 blocks a phase" if r.mix
                     else f"< {MAX_BLOCKS_TREND:g} a request (Theil-Sen over {len(r.samples)} readings)")
            lines.append(f"  {'Python blocks* trend':<24}{'':>20}{trend:>+10.3f}   {limit}")
    if b.trimmed_mb is not None and a.trimmed_mb is not None:
        lines.append(f"  {'RSS, heap trimmed':<24}{b.trimmed_mb:>10.1f}{a.trimmed_mb:>10.1f}"
                     f"{a.trimmed_mb - b.trimmed_mb:>+10.1f}")
    for name, after in r.structures_after.items():
        before = r.structures_before.get(name, 0)
        lines.append(f"  {name:<24}{before:>10}{after:>10}{after - before:>+10}   <= 0")
    for name, after in r.validator_after.items():
        before = r.validator_before.get(name, 0)
        limit = "0" if name in DRAINED else (f"<= {SOAK_SEEN_SIZE}" if "seen" in name else "<= uids")
        lines.append(f"  {name:<24}{before:>10}{after:>10}{after - before:>+10}   {limit}")
    for name in sorted(set(r.rows_before) | set(r.rows_after)):
        before, after = r.rows_before.get(name, 0), r.rows_after.get(name, 0)
        limit = "0" if name in ORPHANS else ""
        lines.append(f"  {'store ' + name:<24}{before:>10}{after:>10}{after - before:>+10}   {limit}")
    first, last = (r.samples[0].redis, r.samples[-1].redis) if r.samples else (None, None)
    if first is not None and last is not None:
        lines += render_held(first, last, r.requests)
    lines += render_samples(r.samples)
    if r.samples:
        lines.append("  * live Python blocks (sys.getallocatedblocks) but the miners' windows' (5 a nonce, 1 a latency)")
    lines += [f"  grew: {n:+} {name}" for name, n in r.types_grown.items()]
    lines += [f"  grew in every phase: {n:+} {name}" for name, n in r.types_every_phase.items()]
    lines += [f"  unexpected: {u}" for u in r.unexpected]
    lines += [f"  left on Redis for good: {p}" for p in r.redis_problems]
    lines.append("soak: PASS" if r.ok else "soak: FAIL")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--deadline", type=float, default=5.0, help="per-request timeout sent to the API (s)")
    p.add_argument("--max-rss-mb", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mix", action="store_true", help="every endpoint (MIX), not only chat completions")
    p.add_argument("--store", default="sqlite", metavar="sqlite|redis",
                   help="the API's stores: a SQLite file (default), or Redis at --redis-url, in a namespace of "
                        "its own deleted after (a redis:// URL here is taken as --redis-url)")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="the Redis of --store redis "
                   "(default: REDIS_URL); the run's keys and their memory are read after each phase")
    p.add_argument("--samples", type=int, default=None, help="phases the run is read after (RSS, blocks and "
                   f"their trend over the run; default a {PHASE_REQUESTS:,} requests, up to 10)")
    p.add_argument("--types", action="store_true", help="print the object types that grew most over the run")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line too")
    args = p.parse_args()
    try:
        store_url = redis_store_url(args.store, args.redis_url)
    except ValueError as e:
        p.error(str(e))
    setup_logging("WARNING", role="soak")
    logger.disable("api")  # one INFO line per request would dominate the run
    report = asyncio.run(soak(args.requests, args.concurrency, args.deadline, args.max_rss_mb, args.seed,
                              mix=args.mix, store_url=store_url, samples=args.samples or min(10, max(1, args.requests // PHASE_REQUESTS)),
                              types=args.types))
    print(render(report, args.max_rss_mb), flush=True)
    if args.json:
        print(json.dumps(asdict(report)), flush=True)
    return 0 if report.ok else 1


def redis_store_url(store: str, redis_url: str | None) -> str | None:
    """The Redis the API's stores go on (None: SQLite), from ``--store`` and ``--redis-url``."""
    if is_redis(store):
        return store
    if store == "sqlite":
        return None
    if store != "redis":
        raise ValueError(f"--store: sqlite or redis, not {store!r}")
    if not redis_url:
        raise ValueError("--store redis needs --redis-url or REDIS_URL")
    return redis_url


if __name__ == "__main__":
    sys.exit(main())
