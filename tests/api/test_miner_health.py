"""The API's memory of failing miners (``api.miner_health``): set aside after a run of failures, skipped by
selection, probed after a cooldown that doubles while probes fail, back in rotation at the first answer."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from api.miner_health import MinerHealth, probe_forever
from api.selection import passed_over, select_miners
from shared.errors import ApiError
from shared.metagraph import MetagraphSnapshot, Neuron


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def neuron(uid: int, hotkey: str | None = None) -> Neuron:
    return Neuron(uid=uid, hotkey=hotkey or f"hk{uid}", coldkey=f"ck{uid}", stake=0.0, incentive=0.5,
                  validator_permit=False, axon=f"127.0.0.1:{40000 + uid}")


def health(clock: Clock, *, threshold: int = 3, cooldown: float = 10.0, max_cooldown: float = 35.0) -> MinerHealth:
    return MinerHealth(threshold, cooldown, max_cooldown, clock=clock)


def fail(h: MinerHealth, n: Neuron, times: int, kind: str = "http_5xx") -> None:
    for _ in range(times):
        h.record(n, kind)


def test_a_run_of_failures_sets_a_miner_aside_and_an_answer_between_resets_it() -> None:
    h, a = health(Clock()), neuron(1)
    fail(h, a, 2)
    h.record(a, None)  # answered: the run starts again
    fail(h, a, 2)
    assert not h.is_aside(a)
    fail(h, a, 1, "timeout")
    assert h.is_aside(a) and h.records[1].reason == "timeout"


@pytest.mark.parametrize("kind", ["not_served", "refused", "unfit"])
def test_an_answer_the_caller_cannot_use_still_counts_as_answering(kind: str) -> None:
    h, a = health(Clock()), neuron(1)
    fail(h, a, 2)
    h.record(a, kind)
    fail(h, a, 2)
    assert not h.is_aside(a)


def test_a_stopped_request_changes_nothing() -> None:
    h, a = health(Clock()), neuron(1)
    fail(h, a, 2)
    h.record(a, "cancelled")
    assert h.records[1].failures == 2
    fail(h, a, 1)
    assert h.is_aside(a)


def test_the_cooldown_doubles_while_probes_fail_and_ends_at_an_answer() -> None:
    clock = Clock()
    h, a = health(clock), neuron(1)
    fail(h, a, 3)
    assert h.next_probe_in([a]) == 10 and h.due() == []
    fail(h, a, 4)  # requests started before it was set aside end meanwhile: the cooldown is not lengthened
    assert h.next_probe_in([a]) == 10
    clock.now += 10
    assert h.due() == [1] and h.due() == []  # one probe at a time
    assert h.is_aside(a)  # still skipped while its probe runs
    fail(h, a, 1)  # the probe failed
    assert h.next_probe_in([a]) == 20
    clock.now += 20
    assert h.due() == [1]
    fail(h, a, 1)
    assert h.next_probe_in([a]) == 35  # capped by max_cooldown
    clock.now += 35
    assert h.due() == [1]
    h.record(a, None)  # the probe answered
    assert not h.is_aside(a) and h.records == {}
    fail(h, a, 3)  # a new run starts over at the first cooldown
    assert h.next_probe_in([a]) == 10


def test_a_uid_that_changed_hands_starts_clean() -> None:
    h = health(Clock())
    fail(h, neuron(1, "old"), 3)
    assert not h.is_aside(neuron(1, "new"))
    fail(h, neuron(1, "new"), 1)
    assert h.records[1].failures == 1


def test_zero_failures_to_set_aside_turns_it_off() -> None:
    h, a = health(Clock(), threshold=0), neuron(1)
    fail(h, a, 100)
    assert not h.is_aside(a) and h.records == {}


def snap(*neurons: Neuron) -> MetagraphSnapshot:
    return MetagraphSnapshot(netuid=1, block=1, neurons=neurons)


def test_selection_skips_miners_set_aside_and_refuses_at_once_when_all_are() -> None:
    h, a, b = health(Clock()), neuron(1), neuron(2)
    fail(h, a, 3)
    for _ in range(20):
        picked = select_miners(snap(a, b), None, uids=None, task=None, model=None, k=5, rng=random.Random(),
                               health=h)
        assert [n.uid for n in picked] == [2]
    fail(h, b, 3, "timeout")
    with pytest.raises(ApiError) as e:
        select_miners(snap(a, b), None, uids=None, task=None, model=None, k=5, rng=random.Random(), health=h)
    assert e.value.status == 503 and e.value.code == "no_miners_available"
    assert "set aside" in e.value.message and "http_5xx x1" in e.value.message and "timeout x1" in e.value.message
    assert e.value.headers == {"Retry-After": "10"}
    # a caller who names the uids gets them, as asked
    named = select_miners(snap(a, b), None, uids=[1], task=None, model=None, k=5, rng=random.Random(), health=h)
    assert [n.uid for n in named] == [1]


def test_the_miners_passed_over_for_a_model_are_those_set_aside_that_may_serve_it() -> None:
    """What makes a race of miners that each say they do not serve the model a 503 rather than OpenAI's 404."""
    from api.availability import AvailabilityCache

    h, a, b, c = health(Clock()), neuron(1), neuron(2), neuron(3)
    metagraph = snap(a, b, c)
    assert passed_over(metagraph, None, h, task=None, model="m/a") == []  # none set aside: nothing to look up
    fail(h, a, 3)
    fail(h, c, 3)
    # without fresh availability nothing rules a serving miner out: each set aside may serve it
    assert [n.uid for n in passed_over(metagraph, None, h, task=None, model="m/a")] == [1, 3]
    cache = AvailabilityCache(None, "http://127.0.0.1:9", "-")  # type: ignore[arg-type]
    cache.accept({1: {"task_availabilities": {"InferenceTask": True}, "llm_model_availabilities": {"m/a": True}},
                  2: {"task_availabilities": {"InferenceTask": True}, "llm_model_availabilities": {"m/a": True}},
                  3: {"task_availabilities": {"InferenceTask": True}, "llm_model_availabilities": {"m/b": True}}})
    assert [n.uid for n in passed_over(metagraph, cache, h, task="InferenceTask", model="m/a")] == [1]
    assert [n.uid for n in passed_over(metagraph, cache, h, task="InferenceTask", model="m/b")] == [3]
    assert passed_over(metagraph, cache, h, task="InferenceTask", model="m/none") == []
    assert passed_over(metagraph, cache, None, task=None, model="m/a") == []  # no health kept (turned off)


async def test_the_prober_asks_each_due_miner_once_and_forgets_a_uid_gone_from_the_metagraph() -> None:
    clock = Clock()
    h, a, gone = health(clock), neuron(1), neuron(2)
    fail(h, a, 3)
    fail(h, gone, 3)
    clock.now += 10
    probed: list[int] = []

    def probe(n: Neuron) -> asyncio.Future[object]:
        probed.append(n.uid)
        return asyncio.get_running_loop().create_future()  # still running

    task = asyncio.create_task(probe_forever(h, {1: a}.get, probe, every=0.01))
    await asyncio.sleep(0.1)
    task.cancel()
    assert probed == [1] and 2 not in h.records


def test_recording_costs_well_under_a_microsecond_or_two() -> None:
    """The hot path's added cost: one ``record`` per miner raced, answering and failing alike. The best of five
    rounds: a round the host's other processes took the core from (a full run beside other work) read 5.2 us."""
    h, ok, bad = health(Clock()), neuron(1), neuron(2)
    n = 40_000

    def answered_round() -> float:
        started = time.perf_counter()
        for _ in range(n):
            h.record(ok, None)
        return (time.perf_counter() - started) / n

    def mixed_round() -> float:
        started = time.perf_counter()
        for _ in range(n):
            h.record(ok, None)
            h.record(bad, "timeout")
        return (time.perf_counter() - started) / (2 * n)

    answered = min(answered_round() for _ in range(5))
    fail(h, bad, 3)
    mixed = min(mixed_round() for _ in range(5))
    print(f"record: {answered * 1e9:.0f} ns (no miner failing), {mixed * 1e9:.0f} ns (one set aside)")
    assert answered < 5e-6 and mixed < 5e-6  # generous: a loaded 2-core CI host


def test_a_miner_back_in_rotation_is_told_as_the_end_of_its_run() -> None:
    """Its set-aside WARNING begins ``uid N set aside``; the INFO line when it answers again begins ``recovered: uid N
    set aside``, as every run's end does (``shared.store.outage.RECOVERED``), so one log rule pairs the two. It said
    ``uid N answers again: ...``, which no rule for the other runs' ends matched."""
    from loguru import logger

    clock, lines = Clock(), []
    h, a = health(clock), neuron(7)
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO", format="{message}")
    try:
        fail(h, a, 3)
        clock.now += 40
        h.record(a, None)
    finally:
        logger.remove(sink)
    assert lines[0].startswith("uid 7 set aside: "), lines
    assert lines[1] == "recovered: uid 7 set aside: it answers again, back in rotation after 40 s", lines
