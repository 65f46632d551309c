"""The store interface: everything API workers and hosts must share.

Two implementations (SQLite for one host, Redis for a fleet) are held to one
shared test suite (``tests/store``). Secrets never enter the store: keys are
kept as a SHA-256 hash plus a short display prefix, and looked up by hash.

The hot path is ``authorize``: one call (one Redis round trip, one SQLite
transaction) finds the key, checks expiry and scope and charges its rate
limit, so a request costs a single store operation (a request that holds a slot of its key's
limit on requests in flight takes it there too, and gives it back with one more, after its answer). Later features (scoring
outbox, sticky sessions) reach the backend through ``SQLiteStore.db`` /
``RedisStore.redis`` and ``RedisStore.key(...)`` for namespaced names.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TypedDict, TypeVar, Unpack

from shared.aio import obeying_cancel
from shared.store.usage_models import ModelCounts, add_models

if TYPE_CHECKING:
    from shared.store.inflight import InflightSlots
    from shared.store.persistence import Persistence

T = TypeVar("T")
KEY_PREFIX = "sn1-"
ALL_SCOPES = ("chat", "web_retrieval", "availability")
WINDOW_SECONDS = 60
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "errors", "rate_limited")


# How long a start waits for a Redis store's first PING (``sn1 api``'s check, and ``sn1 localnet``'s before it starts
# anything): a Redis this slow to answer one PING at start is as good as down.
STORE_START_SECONDS = 5.0


class StoreUnavailable(Exception):
    """The store could not be reached; callers answer 503, never let a request through."""


# SQLite's primary result codes for a file that refuses every write until someone acts (made read-only, a full
# disk, a failing one, its directory gone or unwritable): unlike a lock held elsewhere, it does not pass by itself.
_REFUSING_WRITES = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR,
                              sqlite3.SQLITE_CANTOPEN})


def refused_write(error: object) -> str | None:
    """What an operator must fix when ``error`` (a ``StoreUnavailable``, or its cause) is a SQLite file that
    refuses writes; None for anything else (a lock, a Redis blip: they pass by themselves)."""
    cause = error.__cause__ if isinstance(error, StoreUnavailable) else error
    code = getattr(cause, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in _REFUSING_WRITES:
        return None
    return (f"the SQLite file refuses writes ({cause.sqlite_errorname}): is its disk full, or its directory or "
            "file read-only? Requests that write answer 503 and GET /ready names the failing check until it "
            "takes writes again")


# How long a Redis command (and a connect) may take before it is StoreUnavailable. Without it a Redis that
# stalls (a host gone from the network, CLIENT PAUSE, a long blocking command) held a request as long as it
# lasted: the key store had it, the stored responses, conversations, sessions and the outbox did not. Those
# carry up to a MiB a command (a stored conversation, a batch of payloads): they get longer, so a loaded
# Redis is not an outage to them (2 s made a conversation read a 503 under a loaded test machine).
REDIS_TIMEOUT_S = 2.0
REDIS_DATA_TIMEOUT_S = 5.0
REDIS_CONNECTIONS = 64  # a Redis client's commands in flight in one process; past it a command waits for one


def redis_client(url: str, *, timeout: float = REDIS_DATA_TIMEOUT_S, name: str | None = None, **options: Any) -> Any:
    """The asyncio Redis client of every Redis-backed store, for ``url``: its commands and connects fail after
    ``timeout`` (no I/O here); ``name`` is each connection's ``CLIENT SETNAME`` (what ``CLIENT LIST`` shows). Its
    commands go through a ``RedisGate``, which holds them to ``REDIS_CONNECTIONS`` at once; the pool's own
    bound, twice that, is never what a command meets (a plain pool past it refuses at once, ``Too many
    connections``: a burst of 300 requests on one worker was 200 503s naming the session store, from a Redis that
    was up). It is there for a connection still being given back in the background after a cancelled command,
    which must not fail the next one. Bounded, a fleet's hosts and workers stay far below Redis's ``maxclients``
    (10,000)."""
    import redis.asyncio as aioredis

    pool = aioredis.ConnectionPool.from_url(
        url, max_connections=2 * REDIS_CONNECTIONS, socket_timeout=timeout, socket_connect_timeout=timeout,
        health_check_interval=30, client_name=name, **options)
    return aioredis.Redis.from_pool(pool)


class RedisLink:
    """One Redis client (one connection pool) and its ``REDIS_CONNECTIONS`` slots: every store handed it shares
    both, each through its own ``RedisGate`` (its name in errors). One bound for the pool's commands, not one per
    store: four stores' bounds on one pool added up to four times the connections it may hold.

    ``for_keys``: the key store's (keys, rate limits, usage: every request's authorization), replies decoded,
    commands told after ``REDIS_TIMEOUT_S``. ``for_data``: the other stores' (sessions, stored responses,
    conversations, the scoring outbox), replies as bytes, ``REDIS_DATA_TIMEOUT_S`` (up to a MiB a command).
    redis-py sets both per connection, hence two clients; apart, a burst of large payloads never holds up an
    authorization's command either."""

    def __init__(self, client: Any, *, shared: bool = False) -> None:
        self.client = client
        self.slots = asyncio.Semaphore(REDIS_CONNECTIONS)
        self.shared = shared  # one of a process's RedisLinks: its stores leave it open, RedisLinks.aclose closes it

    @classmethod
    def for_keys(cls, url: str, *, name: str | None = None, shared: bool = False) -> Self:
        return cls(redis_client(url, timeout=REDIS_TIMEOUT_S, name=name, decode_responses=True), shared=shared)

    @classmethod
    def for_data(cls, url: str, *, name: str | None = None, shared: bool = False) -> Self:
        return cls(redis_client(url, timeout=REDIS_DATA_TIMEOUT_S, name=name), shared=shared)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def release(self) -> None:
        """A store's close: a link it opened for itself (``from_url``) is closed with it; a shared one is left open
        for the other stores on it, to its owner to close once."""
        if not self.shared:
            await self.aclose()


@dataclass(frozen=True)
class RedisLinks:
    """A process's two Redis clients for its ``STORE_URL`` (``RedisLink``), built once in ``main`` and handed to
    every store: a worker holds at most ``2 * REDIS_CONNECTIONS`` connections to Redis (each store had its own
    client: five pools, up to five times that). ``name``: ``CLIENT SETNAME``'s, ``<name>-keys`` and
    ``<name>-data``."""

    keys: RedisLink
    data: RedisLink

    @classmethod
    def open(cls, url: str, *, name: str) -> RedisLinks:
        return cls(RedisLink.for_keys(url, name=f"{name}-keys", shared=True),
                   RedisLink.for_data(url, name=f"{name}-data", shared=True))

    async def aclose(self) -> None:
        await self.keys.aclose()
        await self.data.aclose()


class RedisGate:
    """At most ``REDIS_CONNECTIONS`` of one link's commands in flight (its ``slots``, shared by every store on
    it); one past them waits for a slot, for as long as a command may take (its client's ``socket_timeout``: no
    slot freed in that long is a Redis that stalls), then is StoreUnavailable. Any Redis failure is
    StoreUnavailable naming ``label``'s store (an OOM or READONLY reply in a failover too, or the link gone).

    Not redis-py's ``BlockingConnectionPool``, which waits the same way: its Condition and timeout on every
    command cost ~8 us more than this semaphore (whose timer is set only when a command must wait), on the
    auth hot path. redis is imported here, not at the top: a SQLite API never loads it."""

    def __init__(self, link: RedisLink, label: str) -> None:
        import redis

        self.label = label
        self.wait_s = link.client.connection_pool.connection_kwargs.get("socket_timeout") or REDIS_DATA_TIMEOUT_S
        self._slots = link.slots
        self._errors = (redis.RedisError, OSError)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await one command (a coroutine not yet started: it takes its connection once it has a slot)."""
        if self._slots.locked():
            await self._wait(coro)
        else:
            await self._slots.acquire()  # free: returns at once, no timer
        try:
            return await obeying_cancel(coro)  # redis-py may swallow a cancel (3.11's wait_for)
        except self._errors as e:
            raise StoreUnavailable(f"{self.label}: {e.__class__.__name__}: {e}") from e
        finally:
            self._slots.release()

    async def _wait(self, coro: Coroutine[Any, Any, T]) -> None:
        try:
            async with asyncio.timeout(self.wait_s):
                await self._slots.acquire()
        except BaseException as e:
            coro.close()  # never started: no "was never awaited" warning
            if isinstance(e, TimeoutError):
                raise StoreUnavailable(f"{self.label}: no free connection in {self.wait_s:g} s "
                                       f"({REDIS_CONNECTIONS} commands in flight: is Redis stalled?)") from e
            raise


def ttl_ms(retention: float) -> int:
    """A retention in seconds as a Redis TTL in whole milliseconds: at least 1 (``PX 0`` is an error)."""
    return max(1, round(retention * 1000))


class RedisBacked:
    """A store on one ``RedisLink`` (its client ``r``), its names under a namespace (``ns``), its commands through
    its ``gate`` (a ``RedisGate`` naming the store ``LABEL``; ``_call`` is its ``call``); ``from_url`` opens a link
    of its own (no I/O until the first command), which ``aclose`` closes (``RedisLink.release``). Subclasses
    register their Lua scripts in ``__init__``."""

    LABEL = "redis"

    def __init__(self, link: RedisLink, *, namespace: str = "sn1") -> None:
        self.link = link
        self.r = link.client
        self.ns = namespace
        self.gate = RedisGate(link, self.LABEL)
        self._call = self.gate.call

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "sn1") -> Self:
        return cls(RedisLink.for_data(url), namespace=namespace)

    async def aclose(self) -> None:
        await self.link.release()


def is_redis(url: str) -> bool:
    """A ``STORE_URL`` naming a Redis (``redis://``, ``rediss://``)."""
    return url.startswith(("redis://", "rediss://"))


def open_by_url(url: str, sqlite: Callable[[Path], T], redis: Callable[..., T], *, namespace: str,
                links: RedisLinks | None = None) -> T:
    """The store of ``STORE_URL``'s kind: ``sqlite(path)`` for ``sqlite:///path``; for ``redis://`` and
    ``rediss://``, ``redis(link, namespace=...)`` (a ``RedisBacked``) on the process's data link (``links``), or on
    a link of its own without; any other scheme is a ValueError."""
    if url.startswith("sqlite:///"):
        return sqlite(Path(url[len("sqlite:///"):]))
    if is_redis(url):
        return redis(RedisLink.for_data(url) if links is None else links.data, namespace=namespace)
    raise ValueError(f"unsupported STORE_URL scheme: {url}")


def new_api_key() -> str:
    """A fresh key: recognisable prefix + 256 bits from the OS CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    """A public identifier for a key (safe to log and show; 64 random bits)."""
    return secrets.token_hex(8)


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()


def display_prefix(api_key: str) -> str:
    """What a listing shows of a key: ``sn1-`` and 6 characters; of another (one imported from the subnet's
    original API) its first 6 and its last 4, ``012345...cdef``: the keys of one file may all start alike (an
    operator's own prefix), and were each listed as that one prefix, told apart by their ids alone, which the
    operator could not match to the file's keys. 10 characters of at least 32, as of ours: no secret."""
    if api_key.startswith(KEY_PREFIX):
        return api_key[: len(KEY_PREFIX) + 6]
    return f"{api_key[:6]}...{api_key[-4:]}"


def usage_day(ts: float) -> str:
    """The UTC calendar day usage is filed under."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def until_day_ends(ts: float) -> float:
    """Seconds from ``ts`` to the end of its UTC day (``usage_day``'s): when a daily limit's count starts again."""
    return 86400 - ts % 86400


# Days of per-day usage kept per key (its totals are kept for good): a day's counts for every key that was
# used, kept forever, grew a busy Redis by some 100 KB per key a year.
USAGE_DAYS_KEPT = 400


def oldest_usage_day(ts: float) -> str:
    """The first day whose per-day usage is kept at ``ts`` (``USAGE_DAYS_KEPT``)."""
    return usage_day(ts - USAGE_DAYS_KEPT * 86400)


@dataclass(frozen=True)
class KeyRecord:
    id: str
    key_hash: str
    prefix: str
    rate_limit: int
    name: str | None = None
    scopes: tuple[str, ...] = ALL_SCOPES
    allowed_models: tuple[str, ...] | None = None
    expires_at: float | None = None
    created_at: float = 0.0
    last_used_at: float | None = None
    extra: dict = field(default_factory=dict)
    daily_token_limit: int | None = None  # prompt + completion tokens per UTC day (None: no limit)
    # requests in flight at once (None: MAX_CONCURRENT_REQUESTS_PER_KEY's default; 0: no limit for this key)
    max_concurrent_requests: int | None = None
    # bytes written to storage per UTC day (None: STORED_BYTES_PER_KEY_PER_DAY's default; 0: no limit for this key)
    max_stored_bytes_per_day: int | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def new_secret(record: KeyRecord, secret: str | None = None) -> tuple[str, KeyRecord]:
    """A fresh secret for ``record`` (or ``secret``, one imported), and the record with its hash and display
    prefix."""
    secret = secret or new_api_key()
    return secret, replace(record, key_hash=hash_key(secret), prefix=display_prefix(secret))


class NewKey(TypedDict, total=False):
    """A new key's settings besides its rate limit, each as ``KeyRecord`` holds it; one not given is ``mint_key``'s
    default. Listed once: ``Store.create_key`` and both backends take them as ``**settings`` and hand them on."""

    name: str | None
    scopes: tuple[str, ...]
    allowed_models: tuple[str, ...] | None
    expires_at: float | None
    daily_token_limit: int | None
    secret: str | None  # the key's own (one imported from the subnet's original API), not a fresh one
    max_concurrent_requests: int | None
    max_stored_bytes_per_day: int | None


def mint_key(
    rate_limit: int, *, name: str | None = None, scopes: tuple[str, ...] = ALL_SCOPES,
    allowed_models: tuple[str, ...] | None = None, expires_at: float | None = None,
    daily_token_limit: int | None = None, secret: str | None = None, max_concurrent_requests: int | None = None,
    max_stored_bytes_per_day: int | None = None,
) -> tuple[str, KeyRecord]:
    """A new secret (or ``secret``) and the record every backend stores for it (hash, display prefix, public
    id)."""
    return new_secret(KeyRecord(
        id=new_key_id(), key_hash="", prefix="", rate_limit=rate_limit,
        name=name, scopes=tuple(scopes), allowed_models=tuple(allowed_models) if allowed_models else None,
        expires_at=expires_at, created_at=time.time(), daily_token_limit=daily_token_limit,
        max_concurrent_requests=max_concurrent_requests, max_stored_bytes_per_day=max_stored_bytes_per_day,
    ), secret)


@dataclass(frozen=True)
class KeyChanges:
    """A partial update of a key; ``None`` leaves a field alone, ``clear_expiry`` removes the expiry and
    ``clear_token_limit`` the daily token limit, ``clear_concurrency`` the key's own concurrency limit and
    ``clear_storage_budget`` its own daily storage budget (each back to the API's default)."""

    rate_limit: int | None = None
    name: str | None = None
    scopes: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None
    expires_at: float | None = None
    clear_expiry: bool = False
    daily_token_limit: int | None = None
    clear_token_limit: bool = False
    max_concurrent_requests: int | None = None
    clear_concurrency: bool = False
    max_stored_bytes_per_day: int | None = None
    clear_storage_budget: bool = False

    def apply(self, record: KeyRecord) -> KeyRecord:
        return replace(
            record,
            rate_limit=_changed(self.rate_limit, record.rate_limit),
            name=_changed(self.name, record.name),
            scopes=_changed(self.scopes, record.scopes),
            allowed_models=(self.allowed_models or None) if self.allowed_models is not None else record.allowed_models,
            expires_at=_changed(self.expires_at, record.expires_at, cleared=self.clear_expiry),
            daily_token_limit=_changed(self.daily_token_limit, record.daily_token_limit,
                                       cleared=self.clear_token_limit),
            max_concurrent_requests=_changed(self.max_concurrent_requests, record.max_concurrent_requests,
                                             cleared=self.clear_concurrency),
            max_stored_bytes_per_day=_changed(self.max_stored_bytes_per_day, record.max_stored_bytes_per_day,
                                              cleared=self.clear_storage_budget),
        )


def _changed(new: T | None, old: T | None, *, cleared: bool = False) -> T | None:
    """A key field after a change: removed (or back to the API's default) when ``cleared``, else the new value,
    else (None: not given) the old one."""
    return None if cleared else (old if new is None else new)


@dataclass(frozen=True)
class RateDecision:
    """The outcome of charging a sliding-window limit (what the x-ratelimit-* headers report).

    ``reset_after``: seconds until the window is empty again; ``retry_after``: seconds
    until the next request would be admitted (0 when this one was).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float


@dataclass(frozen=True)
class Hold:
    """A request that takes a slot of its key's limit on requests in flight (``api/concurrency.py``), in the same
    store call as its authorization: ``slot`` names it (its process, the holder, and a counter), ``default_limit``
    applies to a key without its own (``KeyRecord.max_concurrent_requests``), ``lease_s`` is how long it counts
    unless renewed. ``releases``: slots of the same key this process gave back and has not yet removed (its
    release batch waits ``RELEASE_BATCH_S``), removed by the same store call before it counts, once the key is
    found: a client that ends a request and sends the next at once, at its limit, is not refused for the slot
    the ended one still held."""

    holder: str
    slot: str
    default_limit: int
    lease_s: float
    releases: tuple[str, ...] = ()


def releases_of(holds: Iterable[Hold | None]) -> list[str]:
    """The slots a turn's holds give back (each once: the requests of one key in a turn may name the same)."""
    return list(dict.fromkeys(slot for hold in holds if hold is not None for slot in hold.releases))


def concurrency_limit(record: KeyRecord, default_limit: int) -> int:
    """The key's limit on requests in flight: its own, else the default; 0: none."""
    return own_or_default(record.max_concurrent_requests, default_limit)


def own_or_default(own: int | None, default: int) -> int:
    """A per-key limit in force: the key's own (``0`` too: no limit for it), else (None) the API's default."""
    return default if own is None else own


@dataclass(frozen=True)
class Authorization:
    """What ``Store.authorize`` found. ``decision`` is None when nothing was charged:
    the key is unknown, expired or lacks the scope, or (``busy``) holds its limit of requests in flight.
    ``slot``: the slot this request took (its ``Hold``'s), None when it took none (none asked, no limit, refused);
    ``in_flight``: the key's slots after it (with a ``Hold`` and a limit)."""

    record: KeyRecord | None
    decision: RateDecision | None
    status: str  # "ok" | "unknown" | "expired" | "scope" | "busy"
    slot: str | None = None
    in_flight: int = 0


Waiter = tuple[str, str | None, Hold | None, asyncio.Future[Authorization]]  # key hash, scope, slot, the answer


class TurnGroups:
    """A turn's authorize callers grouped by key hash, each group in arrival order (both backends
    batch a turn this way). A caller that went away before the turn was sent is left out: it is
    not charged."""

    def __init__(self, batch: Iterable[Waiter]) -> None:
        self.by_key: dict[str, list[tuple[str | None, Hold | None, asyncio.Future[Authorization]]]] = {}
        for key_hash, scope, hold, waiter in batch:
            if not waiter.done():
                self.by_key.setdefault(key_hash, []).append((scope, hold, waiter))

    def scopes(self, key_hash: str) -> list[str | None]:
        return [scope for scope, _, _ in self.by_key[key_hash]]

    def holds(self, key_hash: str) -> list[Hold | None]:
        return [hold for _, hold, _ in self.by_key[key_hash]]

    def answer(self, results: Iterable[list[Authorization]]) -> None:
        """One list of answers per group, in ``by_key`` order."""
        for entries, answers in zip(self.by_key.values(), results, strict=True):
            for (_, _, waiter), answer in zip(entries, answers, strict=True):
                if not waiter.done():
                    waiter.set_result(answer)

    def fail(self, error: Exception) -> None:
        for entries in self.by_key.values():
            for _, _, waiter in entries:
                if not waiter.done():
                    waiter.set_exception(error)


def check_key(record: KeyRecord | None, scope: str | None, now: float) -> str:
    """Why a key may not be charged ("unknown", "expired", "scope") or "ok"; one rule for every backend."""
    if record is None:
        return "unknown"
    if record.expired(now):
        return "expired"
    if scope is not None and scope not in record.scopes:
        return "scope"
    return "ok"


@dataclass
class UsageCounts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    rate_limited: int = 0
    # A day's answered requests and tokens by model (``usage_models``); a report's totals have none
    models: dict[str, ModelCounts] = field(default_factory=dict)

    def add(self, other: UsageCounts, *, models: bool = True) -> None:
        """Add ``other``'s counts (and, unless ``models`` is False, its models' rows, within the day's cap)."""
        for f in USAGE_FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))
        if models and other.models:
            add_models(self.models, other.models)

    def counted(self) -> bool:
        """Anything counted: a store's ``usage`` lists a day only then, both stores alike (SQLite keeps a day's stored
        bytes in the day's row of counts, and a day with bytes only was an all-zero day there, none on Redis)."""
        return any(getattr(self, f) for f in USAGE_FIELDS)

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens together (what a daily token limit counts)."""
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        d = {f: getattr(self, f) for f in USAGE_FIELDS}
        d["total_tokens"] = self.tokens
        return d


@dataclass(frozen=True)
class UsageDelta:
    """Counts to add for one key on one day (a flush batch is a list of these)."""

    key_id: str
    day: str
    counts: UsageCounts
    last_used_at: float


@dataclass
class UsageReport:
    key_id: str
    totals: UsageCounts
    days: dict[str, UsageCounts]
    last_used_at: float | None = None
    # bytes written to storage (``add_stored_bytes``), by day from ``since_day``: read with the counts, in the same
    # query or command (``/v1/usage`` read today's with a second call)
    stored_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredBytes:
    """A key's bytes written to storage on a UTC day, after ``Store.add_stored_bytes``: ``allowed``, whether the
    write was counted (False: it would pass the limit, and nothing was added)."""

    allowed: bool
    used: int


@dataclass(frozen=True)
class StoreMarker:
    """What a store's marker says (``Store.marker``): a Redis without persistence that restarts comes back empty,
    and an empty store answers every key 401 as if each had been deleted; the marker, written with the store's
    first key and never expiring, is what tells "lost its data" from "never had any".

    ``status``: ``present`` (as it was), ``new`` (an empty store, not marked until its first key), ``adopted``
    (keys, made by a release before the marker: marked now) or ``lost`` (gone while the store was in use).
    ``since``: when the store was marked, or when the loss was first seen (by any process)."""

    status: str
    since: float
    where: str  # the server, never its password (``redis://***@host:port/db``)
    namespace: str
    keys: int = 0  # ``adopted``: how many keys it holds


class Store(Protocol):
    async def create_key(self, rate_limit: int, **settings: Unpack[NewKey]) -> tuple[str, KeyRecord]:
        """Create a key; returns (the secret, shown once; its record). Durable once it returns. ``secret``: the
        key's own (one imported from the subnet's original API; the caller checked it is not stored yet)."""
        ...

    async def get_key(self, key_hash: str) -> KeyRecord | None: ...

    async def get_key_by_id(self, key_id: str) -> KeyRecord | None: ...

    async def update_key(self, key_id: str, changes: KeyChanges) -> KeyRecord | None:
        """Apply ``changes``; None if the key does not exist (a deleted key is never recreated)."""
        ...

    async def rotate_key(self, key_id: str) -> tuple[str, KeyRecord] | None:
        """A new secret for the key (the old one stops working at once); its id, settings, usage and
        rate-limit window stay. None if the key does not exist."""
        ...

    async def delete_key(self, key_id: str) -> bool: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def authorize(self, key_hash: str, *, scope: str | None, now: float | None = None,
                        hold: Hold | None = None) -> Authorization:
        """Look the key up, check expiry and scope, and charge its limit, atomically for the fleet; with ``hold``,
        take its slot of the key's requests in flight in the same step (``busy``, uncharged, at the limit)."""
        ...

    def inflight(self) -> InflightSlots:
        """The slots beside the keys (the same Redis link and namespace, the same SQLite file), for the API's
        ``ConcurrencyLimiter`` to give back, renew and count."""
        ...

    async def charge(self, bucket: str, limit: int, *, cost: int = 1, now: float | None = None) -> RateDecision:
        """Charge ``cost`` against any named sliding window (``cost=0`` only peeks; a negative cost gives back
        what the newest charges took, never below none: a reservation not spent)."""
        ...

    async def add_usage(self, deltas: list[UsageDelta]) -> None:
        """Add a batch of usage counts (one call per flush, not per request)."""
        ...

    async def usage(self, key_id: str, *, since_day: str | None = None) -> UsageReport:
        """The key's usage by day from ``since_day`` (and its bytes written to storage), and its totals."""
        ...

    async def day_tokens(self, key_id: str, day: str) -> int:
        """The key's flushed prompt + completion tokens on ``day`` (one small read: a daily token
        limit checks it before each request of a key that has one)."""
        ...

    async def add_stored_bytes(self, key_id: str, day: str, size: int, *, limit: int) -> StoredBytes:
        """Count ``size`` bytes the key writes to storage (stored responses, conversations) on ``day``, in the
        key's daily usage row, atomically for the fleet: refused (nothing added) when they would take the day past
        ``limit``; ``limit`` 0 adds them whatever the day holds (a write that must be stored once begun). A deleted
        key's is allowed and not counted (its write is refused by the store it goes to). A negative ``size`` (with
        ``limit`` 0) gives back a count whose write was refused or failed, never taking the day below 0."""
        ...

    async def day_stored_bytes(self, key_id: str, day: str) -> int:
        """The key's bytes written to storage on ``day`` (``add_stored_bytes``'s)."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable if the backend cannot be reached."""
        ...

    async def eviction_policy(self) -> str | None:
        """Redis's ``maxmemory-policy`` (``unknown`` where CONFIG is refused); None for a store that evicts
        nothing (a SQLite file). At start and by ``/ready``, never per request."""
        ...

    async def persistence(self) -> Persistence | None:
        """Redis's ``appendonly`` and ``save`` (None where CONFIG is refused); None for a SQLite file. At start."""
        ...

    async def marker(self, *, seen: bool) -> StoreMarker | None:
        """The store's marker (``StoreMarker``); None where a store cannot lose its data behind the API's back
        (a SQLite file). ``seen``: this process has seen the marker, so its absence is a loss, recorded for every
        process; to a process that has not, an empty store is new (the first key marks it) unless another
        process already saw it lost. Not for the hot path: every few seconds."""
        ...

    async def close(self) -> None: ...


def now_or_clock(now: float | None) -> float:
    return time.time() if now is None else now
