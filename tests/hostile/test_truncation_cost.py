"""What ``truncation: "auto"`` costs the API: a conversation its miners refuse as too long is cut and asked again,
and the cut summed what was left of the conversation once per message dropped (and looked for tool results left
without their call once per result dropped): a body of 20,000 short messages, well within the body cap, held the
API worker's event loop 7 s a cut (120,000: minutes), three cuts a request."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.helpers import Script, api_with_miners, chunk, loop_gaps, sse

OVERFLOW = "This model's maximum context length is 40 tokens (context_length_exceeded)"
MESSAGES = 30_000  # about 1 MB: what the test's miner takes


async def test_cutting_a_long_conversation_does_not_hold_the_event_loop(tmp_path: Path) -> None:
    refusing = Script([(0, d) for d in sse(chunk("Fits now."), chunk(finish="stop"))], status=400,
                      error_code="model_server_rejected", error_message=OVERFLOW, errors=1)
    # a call, answered, then many turns whose tool results answer it again: once the call is cut, each is left
    # without its call and goes too
    call = [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"}]
    talk = [item for i in range(MESSAGES // 10) for item in (
        *({"role": "user", "content": "hi"} for _ in range(9)),
        {"type": "function_call_output", "call_id": "c1", "output": "ok"})]
    body = {"input": call + talk + [{"role": "user", "content": "last"}], "truncation": "auto",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]}
    async with api_with_miners(tmp_path, {1: refusing}) as api, aiohttp.ClientSession() as s:
        async with loop_gaps() as gaps:
            async with s.post(api.url + "/v1/responses", json=body, timeout=aiohttp.ClientTimeout(total=300),
                              headers={"Authorization": f"Bearer {api.key}"}) as r:
                status, answer = r.status, await r.json()
        assert status == 200, answer
        assert max(gaps) < 1.0, f"the event loop was held {max(gaps):.2f} s"
        (sent,) = [b for b in refusing.bodies[1:]]  # the cut conversation the miner answered
    roles = [m["role"] for m in sent["messages"]]
    assert roles.count("tool") == 0, "results whose call was cut are dropped with it"
    assert sent["messages"][-1]["content"] == "last" and len(roles) < MESSAGES  # the oldest half cut
