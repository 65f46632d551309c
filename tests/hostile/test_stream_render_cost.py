"""What a miner's streamed calls cost the API to turn into Responses events: each delta looked its item up in the
list of the answer's items, and each delta of a call left open by a later one parsed its arguments whole, so an
answer of thousands of calls, or of one call's arguments in thousands of pieces, held the worker's event loop for
seconds (20,000 calls: 8 s)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import Script, api_with_miners, loop_gaps, sse

CALLS = 12_000
PIECES = 30_000
TOOLS = [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]


def call_chunk(index: int, arguments: str, *, name: str | None = None) -> str:
    fn = {"arguments": arguments} | ({"name": name} if name else {})
    call = {"index": index, "function": fn} | ({"id": f"c{index}", "type": "function"} if name else {})
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                       "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]})


def end_chunk() -> str:
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})


def many_calls() -> list[str]:
    return [call_chunk(i, '{"x": 1', name="f") for i in range(CALLS)] + [call_chunk(i, "}") for i in range(CALLS)]


def one_call_in_pieces() -> list[str]:
    # call 0 opens, call 1 begins (call 0 is left open, its arguments not whole), then call 0's arguments go on
    return ([call_chunk(0, '{"x": "', name="f"), call_chunk(1, "{}", name="f")]
            + [call_chunk(0, "aaaaaaaaaa") for _ in range(PIECES)] + [call_chunk(0, '"}')])


@pytest.mark.parametrize("chunks", [many_calls, one_call_in_pieces], ids=["many-calls", "one-call-in-pieces"])
async def test_a_streamed_answers_calls_do_not_hold_the_event_loop(tmp_path: Path, chunks) -> None:
    miner = Script([(0, d) for d in sse(*chunks(), end_chunk())])
    async with api_with_miners(tmp_path, {1: miner}, miner_max_response_bytes=8 << 20) as api, \
            aiohttp.ClientSession() as s:
        async with loop_gaps() as gaps:
            async with s.post(api.url + "/v1/responses", json={"input": "Hi", "stream": True, "tools": TOOLS},
                              headers={"Authorization": f"Bearer {api.key}"},
                              timeout=aiohttp.ClientTimeout(total=300)) as r:
                status, text = r.status, await r.text()
        assert status == 200
        assert max(gaps) < 1.0, f"the event loop was held {max(gaps):.2f} s"
    done = [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and '"response.function_call_arguments.done"' in line]
    assert len(done) == (CALLS if chunks is many_calls else 2) and "response.completed" in text
    assert all(json.loads(d["arguments"]) for d in done if d["output_index"] == 0)  # each whole when done
