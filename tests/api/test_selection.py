"""Miner selection: incentive bias, filters, explicit uids, validator outage and stale cache."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from api.availability import AvailabilityCache
from api.selection import select_miners
from shared.errors import ApiError
from tests.helpers import keypair, snapshot

V = keypair("//Validator").ss58_address


def snap(incentives: dict[int, float] | None = None, n: int = 6):
    miners = {uid: (f"hk{uid}", f"127.0.0.1:{9000 + uid}") for uid in range(1, n + 1)}
    return snapshot(V, miners, incentives=incentives)


def cache(entries: dict, *, age: float = 0.0, stale: float = 120.0) -> AvailabilityCache:
    c = AvailabilityCache(client=None, validator_url="http://127.0.0.1:9", validator_hotkey=V,  # type: ignore[arg-type]
                          stale_seconds=stale)
    c.entries = entries
    c.refreshed_at = time.monotonic() - age
    return c


def entry(tasks=("InferenceTask",), models=("m1",)) -> dict:
    return {"task_availabilities": {t: True for t in tasks}, "llm_model_availabilities": {m: True for m in models}}


def pick(s, c, **kw) -> list[int]:
    kw.setdefault("uids", None)
    kw.setdefault("task", "InferenceTask")
    kw.setdefault("model", None)
    kw.setdefault("k", 2)
    return [n.uid for n in select_miners(s, c, rng=kw.pop("rng", random.Random(0)), **kw)]


def test_high_incentive_miners_are_picked_more_but_others_still_explored() -> None:
    s = snap({1: 0.9, 2: 0.05, 3: 0.05, 4: 0.0, 5: 0.0, 6: 0.0})
    rng = random.Random(42)
    counts = Counter(uid for _ in range(3000) for uid in pick(s, None, k=1, rng=rng))
    assert counts[1] > 0.5 * 3000
    assert all(counts[u] > 0 for u in (4, 5, 6)), "zero-incentive miners must still be explored"


def test_model_and_task_filters() -> None:
    c = cache({1: entry(models=("m1",)), 2: entry(models=("m2",)), 3: None,
               4: entry(tasks=("WebRetrievalTask",)), 5: entry(models=("m1",)), 6: entry()})
    assert set(pick(snap(), c, model="m2", k=5)) == {2}
    assert set(pick(snap(), c, model="m1", k=5)) == {1, 5, 6}
    assert set(pick(snap(), c, task="WebRetrievalTask", k=5)) == {4}


def test_unknown_model_is_404_and_unserved_task_is_503() -> None:
    c = cache({1: entry(), 2: entry()})
    with pytest.raises(ApiError) as e:
        pick(snap(n=2), c, model="nope")
    assert e.value.status == 404 and e.value.code == "model_not_found"
    with pytest.raises(ApiError) as e:
        pick(snap(n=2), c, task="WebRetrievalTask")
    assert e.value.status == 503 and "WebRetrievalTask" in e.value.message


def test_every_miner_down_is_503_not_an_unknown_model_or_task() -> None:
    """With every miner down at the validator's last poll, a request for the model they serve was a 404
    model_not_found: the caller was told to fix its request, and the operator's log read as bad requests."""
    c = cache({1: None, 2: None})
    for fields in ({"model": "m1"}, {"task": "ProgrammingTask"}, {}):
        with pytest.raises(ApiError) as e:
            pick(snap(n=2), c, **fields)
        assert e.value.status == 503 and e.value.code == "no_miners_available", fields
        assert "none of the 2 serving miner(s) answered the validator's last availability poll" in e.value.message


def test_unknown_task_is_400_but_an_advertised_new_task_is_not() -> None:
    c = cache({1: entry(tasks=("InferenceTask", "ProgrammingTask")), 2: entry()})
    with pytest.raises(ApiError) as e:
        pick(snap(n=2), c, task="NoSuchTask")
    assert e.value.status == 400 and e.value.code == "unknown_task"
    assert pick(snap(n=2), c, task="ProgrammingTask", k=5) == [1]


def test_stale_cache_falls_back_to_all_serving_miners() -> None:
    c = cache({1: entry(models=("m1",))}, age=1000, stale=60)
    assert set(pick(snap(n=3), c, model="m2", k=5)) == {1, 2, 3}


def test_validator_never_reached_falls_back_to_all_serving() -> None:
    c = cache({}, age=10**9)
    assert set(pick(snap(n=3), c, k=5)) == {1, 2, 3}


def test_explicit_uids_bypass_sampling_but_are_validated() -> None:
    c = cache({1: entry(), 2: entry(models=("m2",))})
    assert pick(snap(n=2), c, uids=[2, 2, 1], k=1) == [2, 1]
    with pytest.raises(ApiError) as e:
        pick(snap(n=2), c, uids=[7])
    assert e.value.status == 400
    with pytest.raises(ApiError) as e:
        pick(snap(n=2), c, uids=[1], model="m2")
    assert e.value.status == 400 and "uid 1" in e.value.message


def test_self_is_never_selected() -> None:
    s = snap(n=2)
    assert 0 not in pick(s, None, k=5, self_hotkey=V)


@pytest.mark.parametrize(("incentives", "top"), [({}, None), ({6: 1e-4}, 6)])
def test_zero_or_tiny_incentives_still_spread_the_picks(incentives: dict[int, float], top: int | None) -> None:
    """``u ** (1 / w)`` underflowed to 0.0 for small weights and the ties fell to metagraph order: with
    every incentive 0 (a new subnet) every pick was uid 1; with a top incentive of 1e-4 uid 1 still won
    92% of picks and the top miner 7%."""
    rng = random.Random(3)
    counts = Counter(uid for _ in range(3000) for uid in pick(snap(incentives), None, k=1, rng=rng))
    assert all(counts[uid] > 0 for uid in range(1, 7)), counts
    if top is None:
        assert max(counts.values()) < 2 * min(counts.values()), f"equal miners are picked alike: {counts}"
    else:  # weight 1.05e-4 against 5e-6 for each of the five others: about 81% of picks
        assert counts[top] > 0.7 * 3000 and counts.most_common(1)[0][0] == top, counts
