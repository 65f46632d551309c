"""Usage by model, both backends: a key's day broken down by the model its answers named, within a cap of names
per key and day for the fleet (callers choose the string), kept, pruned and deleted with the key's days."""

from __future__ import annotations

import time

from shared.store.base import USAGE_DAYS_KEPT, Store, UsageCounts, UsageDelta, usage_day
from shared.store.redis import RedisStore
from shared.store.usage_models import MODELS_PER_DAY, OTHER, ModelCounts

T0 = float(int(time.time()))


def day_of(requests: int, models: dict[str, tuple[int, int, int]]) -> UsageCounts:
    """A delta's counts: ``requests`` and each model's (requests, prompt, completion), the day's tokens their sum."""
    rows = {m: ModelCounts(*c) for m, c in models.items()}
    return UsageCounts(requests=requests, prompt_tokens=sum(r.prompt_tokens for r in rows.values()),
                       completion_tokens=sum(r.completion_tokens for r in rows.values()), models=rows)


def breakdown(counts: UsageCounts) -> dict[str, tuple[int, int, int]]:
    return {m: (r.requests, r.prompt_tokens, r.completion_tokens) for m, r in counts.models.items()}


async def stored_model_days(store: Store, key_id: str) -> set[str]:
    """The days a key's model rows are kept for, read from the store itself (a report lists a day's models only
    with the day, so rows left behind would not show there)."""
    if isinstance(store, RedisStore):
        names = await store.redis.hkeys(store.key("usage", key_id))
        return {n.split(":")[0] for n in names if ":model" in n}
    return {r[0] for r in store.db.execute("SELECT day FROM usage_models WHERE key_id = ?", (key_id,))}


async def test_a_days_models_add_up_across_batches_and_stay_apart_by_day(store: Store) -> None:
    _, rec = await store.create_key(5)
    day1, day2 = usage_day(T0 - 86400), usage_day(T0)
    await store.add_usage([
        UsageDelta(rec.id, day1, day_of(2, {"alpha": (2, 10, 5)}), T0 - 86400),
        UsageDelta(rec.id, day2, day_of(3, {"alpha": (1, 3, 4), "org/beta:7b": (1, 6, 1)}), T0),
    ])
    await store.add_usage([UsageDelta(rec.id, day2, day_of(1, {"org/beta:7b": (1, 2, 2)}), T0)])
    report = await store.usage(rec.id)
    assert breakdown(report.days[day1]) == {"alpha": (2, 10, 5)}
    assert breakdown(report.days[day2]) == {"alpha": (1, 3, 4), "org/beta:7b": (2, 8, 3)}
    today = report.days[day2]
    assert sum(r.tokens for r in today.models.values()) == today.tokens == 18, "the models' tokens are the day's"
    assert report.totals.as_dict()["total_tokens"] == 33 and report.totals.models == {}, "totals: no breakdown"
    assert list((await store.usage(rec.id, since_day=day2)).days) == [day2]
    assert breakdown((await store.usage(rec.id, since_day=day2)).days[day2]) == breakdown(today)


async def test_past_the_cap_a_days_new_names_are_counted_under_other(store: Store) -> None:
    """Each flush is within the cap on its own (a worker's buffer keeps to it); the store holds the day's names
    for every worker, so a later batch's new names past the cap go to ``other``, and its known ones to their own."""
    _, rec = await store.create_key(5)
    today, tomorrow = usage_day(T0), usage_day(T0 + 86400)
    first = {f"m{i:02d}": (1, 1, 1) for i in range(MODELS_PER_DAY - 2)}
    await store.add_usage([UsageDelta(rec.id, today, day_of(len(first), first), T0)])
    later = {"m00": (1, 5, 5), "n1": (1, 1, 0), "n2": (1, 1, 0), "n3": (1, 2, 0), "n4": (2, 3, 0), OTHER: (1, 0, 1)}
    await store.add_usage([UsageDelta(rec.id, today, day_of(7, later), T0),
                           UsageDelta(rec.id, tomorrow, day_of(1, {"n4": (1, 1, 1)}), T0 + 86400)])
    day = (await store.usage(rec.id)).days[today]
    assert len(day.models) == MODELS_PER_DAY + 1 and {"n1", "n2"} <= set(day.models)
    assert "n3" not in day.models and "n4" not in day.models
    assert breakdown(day)[OTHER] == (4, 5, 1), "n3's, n4's and other's own"
    assert breakdown(day)["m00"] == (2, 6, 6)
    assert sum(r.tokens for r in day.models.values()) == day.tokens, "nothing lost to the cap"
    assert breakdown((await store.usage(rec.id)).days[tomorrow]) == {"n4": (1, 1, 1)}, "each day its own room"


async def test_a_keys_model_rows_go_with_the_key(store: Store) -> None:
    _, rec = await store.create_key(5)
    _, kept = await store.create_key(5)
    for key_id in (rec.id, kept.id):
        await store.add_usage([UsageDelta(key_id, usage_day(T0), day_of(1, {"alpha": (1, 2, 3)}), T0)])
    assert await stored_model_days(store, rec.id) == {usage_day(T0)}
    await store.delete_key(rec.id)
    assert await stored_model_days(store, rec.id) == set()
    await store.add_usage([UsageDelta(rec.id, usage_day(T0), day_of(1, {"alpha": (1, 2, 3)}), T0)])
    assert await stored_model_days(store, rec.id) == set(), "a flush after the delete adds nothing"
    assert breakdown((await store.usage(kept.id)).days[usage_day(T0)]) == {"alpha": (1, 2, 3)}


async def test_a_keys_model_rows_are_pruned_with_its_old_days(store: Store) -> None:
    _, rec = await store.create_key(5)
    old, recent = T0 - (USAGE_DAYS_KEPT + 3) * 86400, T0 - 86400
    await store.add_usage([UsageDelta(rec.id, usage_day(old), day_of(1, {"alpha": (1, 1, 1)}), old)])
    await store.add_usage([UsageDelta(rec.id, usage_day(recent), day_of(1, {"beta": (1, 1, 1)}), recent)])
    assert await stored_model_days(store, rec.id) == {usage_day(recent)}
    report = await store.usage(rec.id)
    assert report.totals.tokens == 4 and list(report.days) == [usage_day(recent)], "totals whole, the old day gone"
