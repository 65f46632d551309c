"""One suite, both backends: what every API worker relies on the store for."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from shared.store.base import (
    USAGE_DAYS_KEPT,
    KeyChanges,
    NewKey,
    Store,
    StoreUnavailable,
    UsageCounts,
    UsageDelta,
    hash_key,
    usage_day,
)
from shared.store.redis import RedisStore

T0 = float(int(time.time()))  # a whole second: bucket arithmetic below stays readable


async def test_create_then_lookup_by_hash_and_id(store: Store) -> None:
    secret, rec = await store.create_key(7, name="alice", scopes=("chat",), allowed_models=("m1",),
                                         expires_at=T0 + 3600)
    assert secret.startswith("sn1-") and len(secret) >= 4 + 43  # 256 bits, urlsafe base64
    got = await store.get_key(hash_key(secret))
    assert got is not None
    assert (got.id, got.rate_limit, got.name, got.scopes, got.allowed_models, got.expires_at) == (
        rec.id, 7, "alice", ("chat",), ("m1",), T0 + 3600)
    assert got.prefix == secret[:10] and got.key_hash == hash_key(secret)
    assert (await store.get_key_by_id(rec.id)) == got
    assert await store.get_key(hash_key(secret + "x")) is None
    assert await store.get_key_by_id("0123456789abcdef") is None


async def test_every_new_key_setting_is_kept(store: Store) -> None:
    """``NewKey`` lists a key's settings once for both backends: each one given is the key's, as read back."""
    given: NewKey = {"name": "team", "scopes": ("chat",), "allowed_models": ("m1",), "expires_at": T0 + 3600,
                     "daily_token_limit": 1000, "secret": "imported-" + "x" * 32, "max_concurrent_requests": 3,
                     "max_stored_bytes_per_day": 4096}
    assert set(given) == set(NewKey.__annotations__), "a setting added to NewKey is checked here too"
    secret, rec = await store.create_key(7, **given)
    got = await store.get_key_by_id(rec.id)
    assert secret == given["secret"] and got is not None and got == await store.get_key(hash_key(secret))
    assert {name: getattr(got, name) for name in given if name != "secret"} == {
        name: value for name, value in given.items() if name != "secret"}


async def test_keys_are_distinct_and_listed_without_secrets(store: Store) -> None:
    created = [await store.create_key(10 + i, name=f"k{i}") for i in range(3)]
    secrets_ = {s for s, _ in created}
    assert len(secrets_) == 3
    listed = await store.list_keys()
    assert [r.id for r in listed] == [r.id for _, r in created]
    assert all(s not in repr(listed) for s in secrets_)


async def test_authorize_reports_unknown_expired_scope_and_charges_only_live_keys(store: Store) -> None:
    live, live_rec = await store.create_key(3, scopes=("chat",))
    old, _ = await store.create_key(3, expires_at=T0 - 1)
    assert (await store.authorize(hash_key("sn1-nope"), scope="chat", now=T0)).status == "unknown"
    expired = await store.authorize(hash_key(old), scope="chat", now=T0)
    assert expired.status == "expired" and expired.decision is None
    denied = await store.authorize(hash_key(live), scope="web_retrieval", now=T0)
    assert denied.status == "scope" and denied.decision is None and denied.record.id == live_rec.id
    ok = await store.authorize(hash_key(live), scope="chat", now=T0)
    assert ok.status == "ok" and ok.decision.allowed and ok.decision.remaining == 2  # the scope miss was free
    no_scope_needed = await store.authorize(hash_key(live), scope=None, now=T0)
    assert no_scope_needed.decision.remaining == 1


async def test_burst_of_limit_then_nothing_until_the_window_passes(store: Store) -> None:
    secret, _ = await store.create_key(5)
    h = hash_key(secret)
    decisions = [(await store.authorize(h, scope="chat", now=T0 + 0.1 * i)).decision for i in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert decisions[5].retry_after == pytest.approx(61 - 0.5)
    assert decisions[4].reset_after == pytest.approx(61 - 0.4)
    # A token bucket refilling at 5/min would admit one more 12 s after the burst; the window must not.
    assert not (await store.authorize(h, scope="chat", now=T0 + 12.5)).decision.allowed
    assert not (await store.authorize(h, scope="chat", now=T0 + 60.9)).decision.allowed
    after = (await store.authorize(h, scope="chat", now=T0 + 61.0)).decision
    assert after.allowed and after.remaining == 4


async def test_never_more_than_limit_in_any_60s_window(store: Store) -> None:
    limit = 4
    secret, _ = await store.create_key(limit)
    rng = random.Random(7)
    t, admitted = T0, []
    for _ in range(120):
        t += rng.choice([0.05, 0.3, 1.0, 4.0, 9.0])
        if (await store.authorize(hash_key(secret), scope=None, now=t)).decision.allowed:
            admitted.append(t)
    assert len(admitted) >= 2 * limit  # it keeps admitting as time passes
    for i, start in enumerate(admitted):
        assert sum(1 for x in admitted[i:] if x < start + 60) <= limit


async def test_concurrent_charges_admit_exactly_the_limit(store: Store) -> None:
    secret, _ = await store.create_key(20)
    results = await asyncio.gather(*(store.authorize(hash_key(secret), scope="chat", now=T0) for _ in range(60)))
    assert sum(r.decision.allowed for r in results) == 20


async def test_charge_named_bucket_and_peek(store: Store) -> None:
    assert (await store.charge("admin-fail:1.2.3.4", 2, cost=0, now=T0)).allowed
    assert (await store.charge("admin-fail:1.2.3.4", 2, now=T0)).allowed
    assert (await store.charge("admin-fail:1.2.3.4", 2, now=T0)).allowed
    peek = await store.charge("admin-fail:1.2.3.4", 2, cost=0, now=T0)
    assert not peek.allowed and peek.remaining == 0
    assert (await store.charge("admin-fail:5.6.7.8", 2, now=T0)).allowed  # buckets are independent


async def test_a_negative_charge_gives_back_the_newest_reservations_and_never_goes_below_none(store: Store) -> None:
    """The admin gate takes a slot per attempt before it compares the key, and a right key gives it back: the
    one given back is the newest (a second may have turned between the two calls), and nothing more."""
    bucket = "admin-fail:9.9.9.9"
    assert (await store.charge(bucket, 3, now=T0)).allowed
    assert (await store.charge(bucket, 3, now=T0 + 1)).allowed  # reserved in the next second
    back = await store.charge(bucket, 3, cost=-1, now=T0 + 2)  # given back a second later still
    assert back.remaining == 2
    assert (await store.charge(bucket, 3, cost=0, now=T0 + 2)).remaining == 2
    for _ in range(3):  # more than was taken: none below zero
        await store.charge(bucket, 3, cost=-1, now=T0 + 2)
    assert (await store.charge(bucket, 3, cost=0, now=T0 + 2)).remaining == 3
    assert [(await store.charge(bucket, 3, now=T0 + 2)).allowed for _ in range(4)] == [True, True, True, False]


async def test_update_applies_to_the_next_request_and_never_resurrects(store: Store) -> None:
    secret, rec = await store.create_key(1)
    h = hash_key(secret)
    assert (await store.authorize(h, scope="chat", now=T0)).decision.allowed
    assert not (await store.authorize(h, scope="chat", now=T0)).decision.allowed
    new = await store.update_key(rec.id, KeyChanges(rate_limit=3, name="renamed", scopes=("availability",)))
    assert new is not None and (new.rate_limit, new.name, new.scopes) == (3, "renamed", ("availability",))
    assert (await store.authorize(h, scope="chat", now=T0)).status == "scope"
    assert (await store.authorize(h, scope="availability", now=T0)).decision.remaining == 1
    dated = await store.update_key(rec.id, KeyChanges(expires_at=T0 + 5))
    assert dated.expires_at == T0 + 5 and dated.rate_limit == 3
    assert (await store.authorize(h, scope=None, now=T0 + 6)).status == "expired"
    cleared = await store.update_key(rec.id, KeyChanges(clear_expiry=True))
    assert cleared.expires_at is None
    assert await store.delete_key(rec.id)
    assert await store.update_key(rec.id, KeyChanges(rate_limit=9)) is None
    assert await store.get_key(h) is None and await store.list_keys() == []


async def test_delete_is_immediate_and_idempotent(store: Store) -> None:
    secret, rec = await store.create_key(5)
    other, _ = await store.create_key(5)
    assert await store.delete_key(rec.id)
    assert (await store.authorize(hash_key(secret), scope="chat", now=T0)).status == "unknown"
    assert not await store.delete_key(rec.id)
    assert (await store.authorize(hash_key(other), scope="chat", now=T0)).status == "ok"


async def test_usage_batches_add_up_by_day_and_in_total(store: Store) -> None:
    _, rec = await store.create_key(5)
    day1, day2 = usage_day(T0 - 86400), usage_day(T0)
    await store.add_usage([
        UsageDelta(rec.id, day1, UsageCounts(requests=2, prompt_tokens=10, completion_tokens=5), T0 - 86400),
        UsageDelta(rec.id, day2, UsageCounts(requests=1, errors=1, rate_limited=0), T0),
        UsageDelta("ffffffffffffffff", day2, UsageCounts(requests=1), T0),  # unknown key: dropped
    ])
    await store.add_usage([UsageDelta(rec.id, day2, UsageCounts(requests=3, rate_limited=2, completion_tokens=4),
                                      T0 - 10)])
    report = await store.usage(rec.id)
    assert report.totals.as_dict() == {"requests": 6, "prompt_tokens": 10, "completion_tokens": 9, "errors": 1,
                                       "rate_limited": 2, "total_tokens": 19}
    assert list(report.days) == [day1, day2]
    assert report.days[day2].requests == 4 and report.days[day1].prompt_tokens == 10
    assert report.last_used_at == pytest.approx(T0)  # the latest, not the last written
    assert (await store.get_key_by_id(rec.id)).last_used_at == pytest.approx(T0)
    assert list((await store.usage(rec.id, since_day=day2)).days) == [day2]
    assert (await store.usage("ffffffffffffffff")).totals.requests == 0


async def test_per_day_usage_is_kept_for_usage_days_kept_and_totals_for_good(store: Store) -> None:
    """A day's counts for every key that was used, kept forever, grew a busy Redis by some 100 KB per key a
    year: days older than USAGE_DAYS_KEPT go at a later flush; the totals stay whole."""
    _, rec = await store.create_key(5)
    _, idle = await store.create_key(5)
    old = T0 - (USAGE_DAYS_KEPT + 3) * 86400
    await store.add_usage([UsageDelta(rec.id, usage_day(old), UsageCounts(requests=2), old),
                           UsageDelta(idle.id, usage_day(old), UsageCounts(requests=1), old)])
    await store.add_usage([UsageDelta(rec.id, usage_day(T0 - 86400), UsageCounts(requests=1), T0 - 86400)])
    report = await store.usage(rec.id)
    assert report.totals.requests == 3 and list(report.days) == [usage_day(T0 - 86400)]
    await store.add_usage([UsageDelta(rec.id, usage_day(T0), UsageCounts(requests=1), T0)])
    assert list((await store.usage(rec.id)).days) == [usage_day(T0 - 86400), usage_day(T0)]
    assert (await store.usage(rec.id)).totals.requests == 4


async def test_a_daily_token_limit_is_kept_changed_and_removed(store: Store) -> None:
    secret, rec = await store.create_key(5, daily_token_limit=1000)
    plain, _ = await store.create_key(5)
    assert rec.daily_token_limit == 1000
    assert (await store.get_key(hash_key(secret))).daily_token_limit == 1000
    assert (await store.get_key(hash_key(plain))).daily_token_limit is None
    assert (await store.authorize(hash_key(secret), scope="chat", now=T0)).record.daily_token_limit == 1000
    assert [k.daily_token_limit for k in await store.list_keys()] == [1000, None]
    renamed = await store.update_key(rec.id, KeyChanges(name="n"))
    assert renamed.daily_token_limit == 1000, "a change of another field keeps the limit"
    assert (await store.update_key(rec.id, KeyChanges(daily_token_limit=50))).daily_token_limit == 50
    assert (await store.authorize(hash_key(secret), scope="chat", now=T0)).record.daily_token_limit == 50
    assert (await store.update_key(rec.id, KeyChanges(clear_token_limit=True))).daily_token_limit is None
    assert (await store.get_key_by_id(rec.id)).daily_token_limit is None


async def test_a_keys_own_storage_budget_is_kept_changed_and_put_back_to_the_default(store: Store) -> None:
    """``max_stored_bytes_per_day``: a number (0 too: no limit for the key) is kept until changed; cleared, it is
    None again (the API's STORED_BYTES_PER_KEY_PER_DAY), and what authorization reads (every request) says so."""
    secret, rec = await store.create_key(5, max_stored_bytes_per_day=4096)
    plain, _ = await store.create_key(5)
    assert rec.max_stored_bytes_per_day == 4096
    assert (await store.get_key(hash_key(plain))).max_stored_bytes_per_day is None
    assert (await store.authorize(hash_key(secret), scope="chat", now=T0)).record.max_stored_bytes_per_day == 4096
    assert [k.max_stored_bytes_per_day for k in await store.list_keys()] == [4096, None]
    renamed = await store.update_key(rec.id, KeyChanges(name="n", max_concurrent_requests=3))
    assert renamed.max_stored_bytes_per_day == 4096, "a change of other fields keeps the budget"
    assert (await store.update_key(rec.id, KeyChanges(max_stored_bytes_per_day=0))).max_stored_bytes_per_day == 0
    assert (await store.authorize(hash_key(secret), scope="chat", now=T0)).record.max_stored_bytes_per_day == 0
    cleared = await store.update_key(rec.id, KeyChanges(clear_storage_budget=True))
    assert (cleared.max_stored_bytes_per_day, cleared.max_concurrent_requests) == (None, 3)
    assert (await store.get_key_by_id(rec.id)).max_stored_bytes_per_day is None


async def test_day_tokens_counts_one_days_prompt_and_completion_tokens(store: Store) -> None:
    _, rec = await store.create_key(5)
    today, yesterday = usage_day(T0), usage_day(T0 - 86400)
    assert await store.day_tokens(rec.id, today) == 0
    await store.add_usage([
        UsageDelta(rec.id, yesterday, UsageCounts(requests=1, prompt_tokens=100, completion_tokens=100), T0 - 86400),
        UsageDelta(rec.id, today, UsageCounts(requests=2, prompt_tokens=7, completion_tokens=5), T0),
    ])
    await store.add_usage([UsageDelta(rec.id, today, UsageCounts(completion_tokens=3), T0)])
    assert await store.day_tokens(rec.id, today) == 15
    assert await store.day_tokens(rec.id, yesterday) == 200
    assert await store.day_tokens("ffffffffffffffff", today) == 0


async def test_deleting_a_key_drops_its_usage(store: Store) -> None:
    _, rec = await store.create_key(5)
    await store.add_usage([UsageDelta(rec.id, usage_day(T0), UsageCounts(requests=1), T0)])
    await store.delete_key(rec.id)
    assert (await store.usage(rec.id)).totals.requests == 0


@pytest.mark.redis
async def test_unreachable_redis_raises_store_unavailable() -> None:
    from tests.ports import free_port

    dead = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace="nowhere")
    try:
        with pytest.raises(StoreUnavailable):
            await dead.authorize(hash_key("sn1-x"), scope="chat")
        with pytest.raises(StoreUnavailable):
            await dead.create_key(5)
    finally:
        await dead.close()


async def test_a_clock_slightly_behind_still_counts(store: Store) -> None:
    """Hosts' clocks differ a little: a charge stamped earlier than the newest bucket still counts."""
    secret, _ = await store.create_key(2)
    h = hash_key(secret)
    assert (await store.authorize(h, scope=None, now=T0 + 5.2)).decision.allowed
    assert (await store.authorize(h, scope=None, now=T0 + 3.9)).decision.allowed
    assert not (await store.authorize(h, scope=None, now=T0 + 4.5)).decision.allowed


async def test_a_clock_stepped_back_past_the_window_holds_a_full_key_a_minute_not_the_step(store: Store) -> None:
    """NTP stepped the clock (this host's, or Redis's) back an hour: every charge went to a bucket an hour
    ahead, and a key that had used its limit was refused until the clock caught up, its ``Retry-After`` an
    hour long. The window is re-dated to end now: refused for up to the window, never for more than the limit."""
    secret, _ = await store.create_key(2)
    h = hash_key(secret)
    assert (await store.authorize(h, scope=None, now=T0)).decision.allowed
    assert (await store.authorize(h, scope=None, now=T0 + 0.5)).decision.allowed
    back = T0 - 3600  # the step
    refused = (await store.authorize(h, scope=None, now=back)).decision
    assert not refused.allowed and refused.retry_after == pytest.approx(61), "the limit still holds, for a minute"
    assert not (await store.authorize(h, scope=None, now=back + 60.9)).decision.allowed
    again = (await store.authorize(h, scope=None, now=back + 61)).decision
    assert again.allowed and again.remaining == 1


async def test_rotating_a_key_replaces_its_secret_and_keeps_everything_else(store: Store) -> None:
    now = time.time()  # not T0: the store drops rate windows a minute stale by the real clock
    old, rec = await store.create_key(2, name="team", scopes=("chat",), daily_token_limit=99)
    assert (await store.authorize(hash_key(old), scope="chat", now=now)).decision.remaining == 1
    await store.add_usage([UsageDelta(rec.id, usage_day(now), UsageCounts(requests=1, prompt_tokens=5), now)])
    rotated = await store.rotate_key(rec.id)
    assert rotated is not None
    new, after = rotated
    assert new != old and new.startswith("sn1-") and after.prefix == new[:10] and after.key_hash == hash_key(new)
    assert (await store.authorize(hash_key(old), scope="chat", now=now)).status == "unknown", "the old secret is dead"
    got = await store.authorize(hash_key(new), scope="chat", now=now)
    assert got.status == "ok" and got.record.id == rec.id
    assert (got.record.name, got.record.scopes, got.record.daily_token_limit) == ("team", ("chat",), 99)
    assert got.decision.remaining == 0, "the rate-limit window carries over (it is the key's, not the secret's)"
    assert (await store.usage(rec.id)).totals.prompt_tokens == 5
    assert [k.prefix for k in await store.list_keys()] == [after.prefix]
    assert (await store.get_key_by_id(rec.id)).key_hash == hash_key(new)
    assert await store.rotate_key("ffffffffffffffff") is None
    assert await store.delete_key(rec.id) and await store.rotate_key(rec.id) is None


async def test_a_key_made_with_its_own_secret_is_found_by_it_and_shows_its_first_6_and_last_4(store: Store) -> None:
    """An imported key (the subnet's original API's, 32 hex digits) is stored and looked up like any other."""
    secret = "0123456789abcdef0123456789abcdef"
    made, record = await store.create_key(5, name="imported", secret=secret)
    assert made == secret and record.prefix == "012345...cdef" and record.key_hash == hash_key(secret)
    found = await store.get_key(hash_key(secret))
    assert found is not None and (found.id, found.rate_limit, found.name) == (record.id, 5, "imported")
    assert (await store.authorize(hash_key(secret), scope="chat", now=T0)).decision.allowed
