"""Requests in flight per key (``shared/store/inflight.py``), the same on both stores: slots taken up to a limit and
refused past it, given back, shared by every process on the store (two holders: two API processes), a dead holder's
slots counted no longer than their lease, and a live holder's kept by renewing them."""

from __future__ import annotations

import asyncio

from api.concurrency import open_slots
from shared.store.base import Store
from shared.store.inflight import Acquired, InflightSlots

LEASE_S = 1.0


async def test_slots_are_taken_up_to_the_limit_and_freed_when_given_back(store: Store) -> None:
    slots = open_slots(store, "host:1:a")
    assert [await slots.acquire("k1", f"s{i}", 3, LEASE_S) for i in range(3)] == [
        Acquired(True, 1), Acquired(True, 2), Acquired(True, 3)]
    assert await slots.acquire("k1", "s3", 3, LEASE_S) == Acquired(False, 3)  # refused: nothing added
    assert await slots.acquire("k2", "t0", 3, LEASE_S) == Acquired(True, 1)  # another key's own count
    assert await slots.count("k1") == 3
    await slots.release("k1", "s1")
    assert await slots.count("k1") == 2
    assert await slots.acquire("k1", "s4", 3, LEASE_S) == Acquired(True, 3)


async def test_two_processes_share_one_count(store: Store) -> None:
    one, two = open_slots(store, "host:1:a"), open_slots(store, "host:2:b")
    assert (await one.acquire("k", "a:0", 2, LEASE_S)).taken
    assert (await two.acquire("k", "b:0", 2, LEASE_S)).taken
    assert await one.acquire("k", "a:1", 2, LEASE_S) == Acquired(False, 2)
    await two.release("k", "b:0")
    assert (await one.acquire("k", "a:1", 2, LEASE_S)).taken


async def test_a_dead_holders_slots_lapse_after_their_lease_and_a_live_ones_are_renewed(store: Store) -> None:
    dead, live = open_slots(store, "host:1:dead"), open_slots(store, "host:2:live")
    assert (await dead.acquire("k", "dead:0", 2, LEASE_S)).taken
    assert (await live.acquire("k", "live:0", 2, LEASE_S)).taken
    assert not (await live.acquire("k", "live:1", 2, LEASE_S)).taken
    for _ in range(4):  # the live one renews every third of a lease; the dead one never does
        await asyncio.sleep(LEASE_S / 3)
        await renew(live, {"k": ["live:0"]})
    assert await live.count("k") == 1  # the dead holder's slot lapsed, the live one's is still held
    assert (await live.acquire("k", "live:1", 2, LEASE_S)).taken
    assert not (await live.acquire("k", "live:2", 2, LEASE_S)).taken


async def renew(slots: InflightSlots, held: dict[str, list[str]]) -> None:
    await slots.renew(held, LEASE_S)
