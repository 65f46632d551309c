"""The race consumes events in groups (one per network read): grouping must change nothing visible.

A group is absorbed event by event, so a bad event in the middle of a group
keeps the events before it, marks the miner failed and never lets the events
after it through; events of one group share one arrival time; ``follow_batches``
hands the client exactly the winner's events, in order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from api.race import Race
from shared.metagraph import Neuron
from shared.miner_client import Event, event_text


def chunk(text: str, finish: str | None = None) -> str:
    return json.dumps({"object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})


ROLE = json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
GARBAGE = '{"choices": [{"delta": {"content": "half'


def choices_of(events: list[Event]) -> list[object]:
    """The events' choices: what a miner said in them (each goes on in the API's envelope, ``MinerRun.envelope``)."""
    return [json.loads(event_text(e))["choices"] for e in events]


class GroupedClient:
    """Serves scripted groups of events per uid, yielding to the loop between groups."""

    def __init__(self, groups: dict[int, list[list[str]]]) -> None:
        self.groups = groups

    async def stream_chat_batches(self, neuron: Neuron, body: bytes, deadline: float, *,
                                  request_id: str | None = None, stream: bool = True) -> AsyncIterator[list[str]]:
        for group in self.groups[neuron.uid]:
            await asyncio.sleep(0)
            yield list(group)


async def run_race(groups: dict[int, list[list[str]]], *, stream: bool) -> Race:
    deadline = asyncio.get_running_loop().time() + 5
    race = Race(GroupedClient(groups), [Neuron(uid=u, hotkey=f"hk{u}") for u in groups], b"{}", deadline,
                stream=stream)
    race.start()
    return race


async def test_bad_event_mid_group_keeps_earlier_events_and_fails_the_stream() -> None:
    race = await run_race({1: [[ROLE, chunk("a"), chunk("b")], [chunk("c"), GARBAGE, chunk("never")]]}, stream=True)
    winner = await race.winner()
    assert winner is not None and winner.uid == 1
    relayed = [batch async for batch in race.follow_batches(winner)]
    await race.finish()
    flat = [e for batch in relayed for e in batch]
    assert choices_of(flat) == choices_of([ROLE, chunk("a"), chunk("b"), chunk("c")])
    assert winner.text == "abc"
    assert winner.error and "invalid chunk" in winner.error
    assert winner.timings[0] == winner.timings[1] == winner.timings[2] <= winner.timings[3]


async def test_non_stream_winner_is_the_complete_grouped_answer() -> None:
    race = await run_race({1: [[ROLE], [chunk("x"), chunk("y")], [chunk("z", finish="stop")]],
                           2: [[ROLE, chunk("p")], [GARBAGE]]}, stream=False)
    winner = await race.winner()
    await race.finish()
    assert winner is not None and winner.uid == 1 and winner.error is None
    assert winner.text == "xyz" and len(winner.timings) == len(winner.events) == 4
    loser = next(r for r in race.runs if r.uid == 2)
    assert loser.error and choices_of(loser.events) == choices_of([ROLE, chunk("p")])
    assert race.payload()["chunks"] == {"1": winner.event_texts(), "2": loser.event_texts()}
    assert race.payload()["hotkeys"] == {"1": "hk1", "2": "hk2"}, "who answered, for the validator to check"
    assert abs(race.payload()["deadline_s"] - 5.0) < 0.05, "the deadline the miners had, for the latency reward"


async def test_an_answer_that_only_calls_a_tool_is_estimated_as_more_than_nothing() -> None:
    """A miner that sends no usage: the estimate counted the text only, so a tool call was 0 tokens."""
    from api.completion import response_usage
    from shared.protocol import ChatCompletionRequest

    call = json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        "finish_reason": "tool_calls"}]})
    race = await run_race({1: [[ROLE, call]]}, stream=False)
    winner = await race.winner()
    await race.finish()
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "Weather?"}]})
    usage = response_usage(req, winner)
    assert usage["estimated"] is True and usage["completion_tokens"] >= 10


async def test_an_answer_without_a_finish_reason_was_cut_short_and_loses() -> None:
    """Well-formed chunks that stop before any ``finish_reason``: a dropped model server, not an answer."""
    race = await run_race({1: [[ROLE, chunk("a"), chunk("b")]]}, stream=False)
    assert await race.winner() is None
    await race.finish()
    assert "without a finish_reason" in (race.runs[0].error or "") and race.runs[0].error_kind == "bad_response"


def thinking(text: str) -> str:
    return json.dumps({"object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}]})


async def test_a_reasoning_models_thinking_streams_as_it_comes_and_is_kept_when_waited_for() -> None:
    """Nothing was relayed until the first answer token (a reasoning model thinks for seconds), and a
    completion waited for lost the thinking."""
    streamed = await run_race({1: [[ROLE, thinking("Let me")], [thinking(" think.")], [chunk("42", finish="stop")]]},
                              stream=True)
    winner = await streamed.winner()
    assert winner is not None and winner.uid == 1 and winner.text == "", "claimed while thinking, before its text"
    await streamed.finish()
    assert "".join(winner.reasoning) == "Let me think." and winner.text == "42"
    from api.completion import completion_for
    from shared.protocol import ChatCompletionRequest
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "?"}]})
    message = completion_for(req, winner, {})["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think." and message["content"] == "42"
    # waited for, thinking alone (cut by max_tokens) does not beat an answer with content
    waited = await run_race({1: [[ROLE, thinking("hmm")], [chunk("", finish="length")]],
                             2: [[ROLE], [chunk("x")], [chunk("y", finish="stop")]]}, stream=False)
    best = await waited.winner()
    await waited.finish()
    assert best is not None and best.uid == 2


async def test_whitespace_alone_does_not_start_an_answer() -> None:
    """A miner that sent " " at once claimed every streamed race it was in, and its first-content time,
    the validator's latency, was that space's: an exact answer at 9.5 s of 10 scored as one at 0.1 s."""
    race = await run_race({1: [[ROLE, chunk(" ")], [chunk("\n")], [], [], [chunk("late", finish="stop")]],
                           2: [[ROLE], [chunk("first")], [chunk("!", finish="stop")]]}, stream=True)
    winner = await race.winner()
    await race.finish()
    assert winner is not None and winner.uid == 2
    from neurons.validator.scoring import rebuild_answer
    spaced = next(r for r in race.runs if r.uid == 1)
    timings = [0.1, 0.1, 0.2, 9.5]
    assert rebuild_answer(spaced.event_texts(), timings, None).first_content_s == 9.5


def test_what_a_miner_says_reaches_the_logs_on_one_line() -> None:
    """A miner's error body ``oops\\n2026-... | INFO | api | chat rid=FORGED ... status=ok`` was written into the
    API's and the validator's logs as a line of its own: what a peer sent is logged with its line breaks
    escaped, in the MinerError it becomes and in a chunk's error."""
    from shared.logging import printable
    from shared.miner_client import MinerError

    forged = "oops\n2026-12-06 02:00:00.000 | INFO    | api | chat rid=FORGED status=ok\r\u2028"
    assert "\n" not in str(MinerError(f"HTTP 500: {forged}")) and "\\x0a2026" in str(MinerError(forged))
    assert printable(forged) == forged.replace("\n", "\\x0a").replace("\r", "\\x0d").replace("\u2028", "\\u2028")
    assert printable("plain text, tabs aside") == "plain text, tabs aside"
