"""Never a mixed answer: ``api.race.Race`` against thousands of randomised miner timings.

Each case races 1-5 in-process fake miners (same interface as ``MinerClient``)
whose events carry ``<uid>:<index>`` tokens, with random pauses, failures,
stalls and garbage. Whatever the interleaving, what the client is given is
exactly one miner's stream, in order, never spliced from two; the winner is a
miner whose first content arrived first (or, when no miner gives any, one that
ended cleanly with nothing to say); a complete answer is complete.
Seeded, so a failure names the seed that reproduces it.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from api.race import MinerRun, Race
from shared.metagraph import Neuron
from shared.miner_client import Event, MinerError, event_text

CASES = 3000
BATCH = 60
MODES = ("ok", "ok", "ok", "fail_before", "fail_after", "garbage", "nasty", "stall", "empty")
NASTY = (
    '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1e999}]}}]}',  # int(inf): OverflowError
    "[" * 50_000 + "]" * 50_000,  # json.loads: RecursionError
    '{"choices":[{"index":0,"delta":{},"finish_reason":{"not":"a string"}}]}',
)


def chunk(uid: int, i: int) -> str:
    return json.dumps({"object": "chat.completion.chunk", "model": f"m{uid}",
                       "choices": [{"index": 0, "delta": {"content": f"{uid}:{i} "}, "finish_reason": None}]})


ROLE = json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
FINISH = json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})


@dataclass
class FakeMiner:
    uid: int
    mode: str
    n: int  # content chunks in a full answer
    cut: int  # where fail_after / garbage / stall / nasty strike (content chunks before)
    pauses: list[int]  # loop iterations to wait before each event
    nasty: str

    def events(self) -> list[str]:
        if self.mode == "empty":
            return [ROLE, FINISH]
        return [ROLE] + [chunk(self.uid, i) for i in range(self.n)] + [FINISH]

    def full_text(self) -> str:
        return "".join(f"{self.uid}:{i} " for i in range(self.n)) if self.mode != "empty" else ""


def make_miner(uid: int, rng: random.Random) -> FakeMiner:
    n = rng.randint(1, 8)
    return FakeMiner(uid=uid, mode=rng.choice(MODES), n=n, cut=rng.randint(0, n - 1),
                     pauses=[rng.choice((0, 0, 1, 2, 3, 5, 8)) for _ in range(n + 3)], nasty=rng.choice(NASTY))


class FakeClient:
    """``MinerClient.stream_chat`` over scripted miners, with the same deadline semantics."""

    def __init__(self, miners: dict[int, FakeMiner]) -> None:
        self.miners = miners

    async def stream_chat_batches(self, neuron: Neuron, body: bytes, deadline: float, *,
                                  request_id: str | None = None, stream: bool = True) -> AsyncIterator[list[str]]:
        """What the race consumes: here one event per group, the worst case for splicing."""
        async for data in self.stream_chat(neuron, body, deadline, request_id=request_id):
            yield [data]

    async def stream_chat(self, neuron: Neuron, body: bytes, deadline: float, *,
                          request_id: str | None = None) -> AsyncIterator[str]:
        m = self.miners[neuron.uid]
        try:
            async with asyncio.timeout_at(deadline):
                if m.mode == "fail_before":
                    await _pause(m.pauses[0])
                    raise MinerError("refused", kind="unreachable")
                content_sent = 0
                for step, data in enumerate(m.events()):
                    await _pause(m.pauses[min(step, len(m.pauses) - 1)])
                    is_content = data not in (ROLE, FINISH)
                    if is_content and content_sent == m.cut:
                        if m.mode == "fail_after":
                            raise MinerError("connection reset", kind="unreachable")
                        if m.mode == "garbage":
                            yield '{"choices": [{"delta": {"content": "half'
                        if m.mode == "nasty":
                            yield m.nasty
                        if m.mode == "stall":
                            await asyncio.Event().wait()
                    yield data
                    content_sent += is_content
        except TimeoutError:
            raise MinerError("deadline exceeded", kind="timeout") from None


async def _pause(iterations: int) -> None:
    for _ in range(iterations):
        await asyncio.sleep(0)


def tokens(events: list[Event]) -> list[tuple[int, int]]:
    out = []
    for e in events:
        for c in json.loads(event_text(e)).get("choices", []):
            for tok in (c.get("delta", {}).get("content") or "").split():
                uid, i = tok.split(":")
                out.append((int(uid), int(i)))
    return out


def first_content_time(run: MinerRun) -> float | None:
    for data, t in zip(run.events, run.timings, strict=True):
        if tokens([data]):
            return t
    return None


async def one_case(seed: int) -> None:
    rng = random.Random(seed)
    miners = {uid: make_miner(uid, rng) for uid in range(1, rng.randint(1, 5) + 1)}
    stream = rng.random() < 0.6
    loop = asyncio.get_running_loop()
    # Mostly a far deadline (stalls then end it); sometimes one that strikes mid-race.
    deadline = loop.time() + (rng.choice((0.0005, 0.002, 0.01)) if rng.random() < 0.15 else 0.05)
    race = Race(FakeClient(miners), [Neuron(uid=u, hotkey=f"hk{u}") for u in miners], b"{}", deadline,
                stream=stream, request_id=str(seed))
    race.start()
    try:
        winner = await race.winner()
        if winner is None:
            if stream:
                assert not any(r.has_answer for r in race.runs), f"seed {seed}: an answer started, no winner"
            else:
                assert not any(r.done and r.has_answer and not r.error for r in race.runs), f"seed {seed}"
            return
        m = miners[winner.uid]
        relayed = [e async for e in race.follow(winner)] if stream else winner.event_texts()
        got = tokens(relayed)
        assert {u for u, _ in got} <= {winner.uid}, f"seed {seed}: spliced answer {got}"
        assert [i for _, i in got] == list(range(len(got))), f"seed {seed}: out of order {got}"
        if not got:  # a clean empty answer, and only once no miner can give a valid one
            assert m.mode == "empty" and winner.error is None and winner.finish_reason, f"seed {seed}: no content"
            assert all(r.done and (r.error or not r.has_answer) for r in race.runs), f"seed {seed}: empty won"
        if not stream:
            assert winner.error is None and winner.text == m.full_text(), f"seed {seed}: partial non-stream winner"
        elif winner.error is None:
            assert winner.text == m.full_text(), f"seed {seed}: stream ended early without an error: {winner.text!r}"
        else:
            assert m.full_text().startswith(winner.text)
        if stream:
            won_at = first_content_time(winner)
            for r in race.runs:
                t = first_content_time(r)
                assert t is None or won_at is None or t >= won_at, f"seed {seed}: uid {r.uid} answered first"
        await race.finish()
        for r in race.runs:
            assert r.done and (r.error is None or r.error_kind), f"seed {seed}: unattributed failure"
    finally:
        race.cancel()
        await asyncio.gather(*race.tasks, return_exceptions=True)


@pytest.mark.parametrize("batch", range(CASES // BATCH))
async def test_every_streamed_answer_is_exactly_one_miners_stream(batch: int) -> None:
    await asyncio.gather(*(one_case(batch * BATCH + i) for i in range(BATCH)))


async def test_a_miner_crashing_our_parser_is_a_failed_miner_not_a_truncated_success() -> None:
    """Chunks that make ``json``/``int`` raise beyond ValueError must still count as the miner's failure."""
    for nasty in NASTY[:2]:
        for stream in (False, True):
            m = FakeMiner(uid=1, mode="nasty", n=3, cut=1, pauses=[0] * 6, nasty=nasty)
            race = Race(FakeClient({1: m}), [Neuron(uid=1, hotkey="hk1")], b"{}",
                        asyncio.get_running_loop().time() + 1, stream=stream)
            race.start()
            winner = await race.winner()
            if winner is not None:
                [e async for e in race.follow(winner)]
            await race.finish()
            run = race.runs[0]
            assert run.error and run.error_kind == "bad_response", (nasty[:30], stream, run.error)
            assert not stream or winner is run, "it won with a valid first chunk, then broke"
            assert stream or winner is None, "a broken miner must never win a non-streaming race"
