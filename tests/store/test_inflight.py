"""Requests in flight per key, taken by ``authorize`` with a ``Hold`` (``shared/store/inflight.py``), the same on both
stores: slots taken up to the key's limit in the store call that charges its rate, past it ``busy`` and not charged,
given back, shared by every process on the store (two holders: two API processes), a key's own limit over the
default, a dead holder's slots counted no longer than their lease, and a live holder's kept by renewing them."""

from __future__ import annotations

import asyncio
import secrets
import urllib.parse
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from loguru import logger

from api.concurrency import RELEASE_BATCH_S, ConcurrencyLimiter
from shared.store.base import Authorization, Hold, KeyChanges, KeyRecord, Store, hash_key
from shared.store.inflight import GivenBack
from shared.store.redis import RedisStore
from shared.store.sqlite import SQLiteStore
from tests.chaos.tcp_proxy import tcp_proxy
from tests.helpers import log_lines
from tests.store.conftest import drop_namespace, redis_url

LEASE_S = 1.0


def hold(holder: str, n: int, limit: int = 2) -> Hold:
    return Hold(holder=holder, slot=f"{holder}:{n}", default_limit=limit, lease_s=LEASE_S)


async def ask(store: Store, secret: str, holder: str, n: int, limit: int = 2) -> Authorization:
    return await store.authorize(hash_key(secret), scope="chat", hold=hold(holder, n, limit))


async def test_slots_are_taken_up_to_the_limit_uncharged_past_it_and_freed_when_given_back(store: Store) -> None:
    secret, rec = await store.create_key(10)
    one, two = await ask(store, secret, "h", 0), await ask(store, secret, "h", 1)
    assert (one.status, one.slot, one.in_flight) == ("ok", "h:0", 1)
    assert (two.status, two.slot, two.in_flight) == ("ok", "h:1", 2)
    assert two.decision is not None and two.decision.remaining == 8
    third = await ask(store, secret, "h", 2)
    assert (third.status, third.slot, third.decision, third.in_flight) == ("busy", None, None, 2)
    plain = await store.authorize(hash_key(secret), scope="chat")  # no hold (/v1/usage): neither counted nor refused
    assert plain.status == "ok" and plain.slot is None and plain.decision is not None
    assert plain.decision.remaining == 7  # the busy one was not charged
    slots = store.inflight()
    assert await slots.count(rec.id) == 2
    await slots.release([GivenBack(rec.key_hash, rec.id, "h:1")])
    assert await slots.count(rec.id) == 1
    assert (await ask(store, secret, "h", 3)).slot == "h:3"


async def test_a_hold_removes_the_slots_it_gives_back_before_it_counts(store: Store) -> None:
    """A process's slots given back and not yet removed by its batch go with its next authorization of the key,
    removed before the count: at the limit, the request is let in. A slot not there (already removed, or of
    another key) counts for nothing."""
    secret, rec = await store.create_key(100)
    assert (await ask(store, secret, "h", 0)).slot and (await ask(store, secret, "h", 1)).slot
    giving_back = replace(hold("h", 2), releases=("h:0", "h:gone"))
    got = await store.authorize(hash_key(secret), scope="chat", hold=giving_back)
    assert (got.status, got.slot, got.in_flight) == ("ok", "h:2", 2)
    assert await store.inflight().count(rec.id) == 2
    assert (await ask(store, secret, "h", 3)).status == "busy"


async def test_a_slot_given_back_by_its_keys_hash_alone_is_removed(store: Store) -> None:
    """A request cancelled before its authorization came back knows its key's hash, not its id."""
    secret, rec = await store.create_key(100)
    assert (await ask(store, secret, "h", 0)).slot == "h:0"
    await store.inflight().release([GivenBack(rec.key_hash, None, "h:0"), GivenBack("0" * 64, None, "h:9")])
    assert await store.inflight().count(rec.id) == 0


async def test_a_rotated_keys_slots_are_given_back_under_its_old_secret_and_its_count_goes_on(store: Store) -> None:
    """The admin rotates a key (a new secret, the same id) while requests taken under its old secret are in flight:
    the count goes on under the new one (the key's slots, not its secret's), and a slot given back by the old
    secret's hash alone (a request cancelled, or whose answer was lost, as the rotation ran) is removed: left to its
    lease, it held one of the key's slots for up to 30 s."""
    secret, rec = await store.create_key(100)
    assert (await ask(store, secret, "h", 0)).slot == "h:0" and (await ask(store, secret, "h", 1)).slot == "h:1"
    rotated = await store.rotate_key(rec.id)
    assert rotated is not None
    new_secret, new = rotated
    assert new.id == rec.id and new.key_hash != rec.key_hash
    assert (await ask(store, new_secret, "h", 2)).status == "busy"  # the old secret's two still count
    await store.inflight().release([GivenBack(rec.key_hash, rec.id, "h:0"), GivenBack(rec.key_hash, None, "h:1")])
    assert await store.inflight().count(rec.id) == 0
    assert [(await ask(store, new_secret, "h", i)).status for i in (3, 4, 5)] == ["ok", "ok", "busy"]


async def test_requests_of_one_turn_are_decided_in_order(store: Store) -> None:
    secret, rec = await store.create_key(10)
    got = await asyncio.gather(*(ask(store, secret, "h", i) for i in range(4)))
    assert [a.status for a in got] == ["ok", "ok", "busy", "busy"]
    assert await store.inflight().count(rec.id) == 2


async def test_the_rate_refused_take_no_slot_and_a_keys_own_limit_wins(store: Store) -> None:
    secret, rec = await store.create_key(1)
    assert (await ask(store, secret, "h", 0)).slot == "h:0"
    refused = await ask(store, secret, "h", 1)
    assert refused.status == "ok" and refused.decision is not None and not refused.decision.allowed
    assert refused.slot is None and await store.inflight().count(rec.id) == 1
    secret3, rec3 = await store.create_key(10)
    await store.update_key(rec3.id, KeyChanges(max_concurrent_requests=0))  # no limit for this key
    assert [(await ask(store, secret3, "h", 10 + i)).slot for i in range(3)] == [None] * 3
    await store.update_key(rec3.id, KeyChanges(max_concurrent_requests=1))
    assert (await ask(store, secret3, "h", 20)).status == "ok"
    assert (await ask(store, secret3, "h", 21)).status == "busy"


async def at_the_limit(store: Store, first: str, second: str, asking: str) -> tuple[str, KeyRecord]:
    """A key whose 2 slots ``first`` and ``second`` hold (their slot 0 each): ``asking``'s slot 1 is ``busy``."""
    secret, rec = await store.create_key(100)
    assert (await ask(store, secret, first, 0)).slot and (await ask(store, secret, second, 0)).slot
    assert (await ask(store, secret, asking, 1)).status == "busy"
    return secret, rec


async def test_two_processes_share_one_count(store: Store) -> None:
    secret, rec = await at_the_limit(store, "a", "b", "a")
    await store.inflight().release([GivenBack(rec.key_hash, rec.id, "b:0")])
    assert (await ask(store, secret, "a", 1)).slot == "a:1"


async def test_a_dead_holders_slots_lapse_after_their_lease_and_a_live_ones_are_renewed(store: Store) -> None:
    secret, rec = await at_the_limit(store, "dead", "live", "live")
    live = store.inflight()
    for _ in range(4):  # the live one renews every third of a lease; the dead one never does
        await asyncio.sleep(LEASE_S / 3)
        await live.renew({rec.id: ["live:0"]}, LEASE_S)
    assert await live.count(rec.id) == 1  # the dead holder's slot lapsed, the live one's is still held
    assert (await ask(store, secret, "live", 1)).slot == "live:1"
    assert (await ask(store, secret, "live", 2)).status == "busy"


async def test_expired_slots_stop_counting_even_before_anyone_cleans_them_up(store: Store) -> None:
    secret, _ = await at_the_limit(store, "dead", "gone", "h")
    await asyncio.sleep(LEASE_S * 1.2)  # no renewal, no sweep: only their expiry tells
    assert [(await ask(store, secret, "h", i)).status for i in range(2, 5)] == ["ok", "ok", "busy"]


class CountingSlots:
    """The store's slots, each ``release`` call counted (what reaches the store, unchanged)."""

    def __init__(self, slots: object) -> None:
        self.slots = slots
        self.calls: list[int] = []

    async def release(self, given: list[GivenBack]) -> None:
        self.calls.append(len(given))
        await self.slots.release(given)  # type: ignore[attr-defined]

    async def count(self, key_id: str) -> int:
        return await self.slots.count(key_id)  # type: ignore[attr-defined]


async def holding_requests(store: Store, limiter: ConcurrencyLimiter, secret: str, rec: KeyRecord,
                           n: int) -> list[web.Request]:
    """``n`` requests of the key, each authorized with a slot this limiter holds (as the API's handlers are)."""
    requests = []
    for _ in range(n):
        taken = await store.authorize(hash_key(secret), scope="chat", hold=limiter.hold())
        request = make_mocked_request("POST", "/v1/chat/completions")
        limiter.holding(request, rec, taken.slot)
        requests.append(request)
    return requests

async def test_slots_given_back_together_are_removed_in_one_store_call(store: Store) -> None:
    """Under load many requests end within a few milliseconds: their slots go in one transaction or round trip,
    not a store write each; and they are gone from the count right after."""
    secret, rec = await store.create_key(100)
    counted = CountingSlots(store.inflight())
    limiter = ConcurrencyLimiter(counted, 10, lease_s=LEASE_S, holder="h")  # type: ignore[arg-type]
    requests = await holding_requests(store, limiter, secret, rec, 8)
    assert await counted.count(rec.id) == 8
    for request in requests:
        limiter.give_back(request)
    await limiter.drain()
    assert counted.calls == [8]
    assert await counted.count(rec.id) == 0
    assert limiter.held == {}


class SlowStore:
    """The store, each authorization's answer coming ``delay_s`` later (a busy store, a loaded host)."""

    def __init__(self, store: Store, delay_s: float) -> None:
        self.store = store
        self.delay_s = delay_s

    async def authorize(self, key_hash: str, *, scope: str | None, hold: Hold | None = None) -> Authorization:
        auth = await self.store.authorize(key_hash, scope=scope, hold=hold)
        await asyncio.sleep(self.delay_s)
        return auth


async def test_a_slot_given_back_is_removed_once_by_the_next_authorization_not_by_the_batch_too(store: Store) -> None:
    """A slot given back goes with the key's next authorization from this process, which removes it; the batch that
    ran while that authorization was on its way removed it as well (a second store write for the same slot, every
    time the store took longer than ``RELEASE_BATCH_S`` to answer). Now the batch has nothing left to remove."""
    secret, rec = await store.create_key(100)
    counted = CountingSlots(store.inflight())
    limiter = ConcurrencyLimiter(counted, 10, lease_s=LEASE_S, holder="h")  # type: ignore[arg-type]
    (request,) = await holding_requests(store, limiter, secret, rec, 1)
    limiter.give_back(request)
    slow = SlowStore(store, RELEASE_BATCH_S * 4)
    taken = await limiter.authorize(slow, hash_key(secret), "chat")  # type: ignore[arg-type]
    await limiter.drain()
    assert taken.status == "ok" and taken.in_flight == 1  # the slot given back was not counted
    assert counted.calls == []
    assert await counted.count(rec.id) == 1


async def test_a_request_cancelled_as_its_authorization_comes_back_gives_its_slot_back(tmp_path: Path) -> None:
    """SQLite answers a turn's authorizations in a callback; a cancel that lands in the same loop turn (its client
    left) is raised where the request awaits its answer, which had taken the slot. The slot it sent is given back
    (on Redis, through a real API and a reply held on its way: tests/integration/test_concurrency_limit.py)."""
    store = SQLiteStore(tmp_path / "api.db")
    secret, rec = await store.create_key(100)
    limiter = ConcurrencyLimiter(store.inflight(), 2, lease_s=30.0, holder="h")
    asking = asyncio.create_task(limiter.authorize(store, hash_key(secret), "chat"))
    await asyncio.sleep(0)  # it asked: its turn's transaction is the next callback
    asyncio.get_running_loop().call_soon(asking.cancel)  # ... and the cancel the one after it
    try:
        await asking
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("not cancelled")
    await limiter.drain()
    assert await store.inflight().count(rec.id) == 0  # not held for the 30 s lease
    await store.close()


@pytest.mark.redis
async def test_a_store_down_is_one_warning_for_every_batch_it_fails_then_one_line_when_it_answers() -> None:
    """Redis unreachable fails every batch of slots given back, one each ``RELEASE_BATCH_S`` under traffic: each was a
    WARNING of its own (200 lines a second that buried the log; 10 failing batches here were 10). Now the run is one WARNING, and an INFO line when
    the store answers again; the slots given back after it are removed as before."""
    real = urllib.parse.urlparse(redis_url())
    async with tcp_proxy(real.hostname or "127.0.0.1", real.port or 6379) as proxy:
        store = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}{real.path or '/0'}",
                                    namespace=f"test-{secrets.token_hex(6)}")
        lines, sink = log_lines("INFO")
        try:
            secret, rec = await store.create_key(100)
            limiter = ConcurrencyLimiter(store.inflight(), 50, lease_s=LEASE_S, holder="h")
            requests = await holding_requests(store, limiter, secret, rec, 11)
            await proxy.cut()
            for request in requests[:10]:  # 10 batches, each failing
                limiter.give_back(request)
                await limiter.drain()
            told = [line for line in lines if "not given back" in line]
            assert len(told) == 1 and told[0].startswith("WARNING"), lines
            await proxy.restore()
            limiter.give_back(requests[10])
            await limiter.drain()
            assert any(line.startswith("INFO") and "not given back" in line for line in lines), lines
            assert len([line for line in lines if line.startswith("WARNING")]) == 1, lines
            assert limiter.release_outage.failures == 0
        finally:
            logger.remove(sink)
            await proxy.restore()
            await drop_namespace(store)
            await store.close()
