"""A sticky session with ``failover`` on two real ``sn1 api`` hosts (one Redis), its pinned miner failing as a
real model server does: its role chunk first, then the connection dropped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from neurons.miner.backends.deterministic import generate_text
from tests.helpers import Script, wait_until
from tests.integration.test_fleet_hosts import MODEL, two_hosts

pytestmark = pytest.mark.redis
MESSAGES = [{"role": "user", "content": "Hi"}]
ROLE = json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})


def drops_after_its_role_chunk() -> Script:
    """The role chunk at once, the connection dropped two seconds later, no content between."""
    return Script([(0.0, f"data: {ROLE}\n\n".encode()), (2.0, b"")], die=True)


async def _json(http: aiohttp.ClientSession, method: str, url: str, head: dict[str, str],
                body: Any = None) -> tuple[int, dict[str, str], Any]:
    async with http.request(method, url, headers=head, json=body) as r:
        return r.status, dict(r.headers), await r.json()


async def test_a_failover_turn_whose_session_another_host_replaced_is_answered_by_another_miner(
        tmp_path: Path) -> None:
    """Host A runs a turn on the key's session, pinned to uid 1; host B opens the key's new session meanwhile;
    then uid 1 drops after its role chunk. The turn was a 502 twice over: a miner that had sent a chunk was
    not failed over, and a session that had ended was not either. It is answered by uid 2, and the new session
    is failed over the same way on B (it pins uid 1 or 2, opened at random)."""
    async with two_hosts(tmp_path, slow=drops_after_its_role_chunk(), honest=(2,)) as fleet, \
            aiohttp.ClientSession() as http:
        head = {"Authorization": f"Bearer {fleet.key}"}
        opening = {"model": MODEL, "failover": True, "session_duration": 600}
        for _ in range(50):  # selection is random over the two miners: open until the session pins uid 1
            status, _, session = await _json(http, "POST", f"{fleet.a.url}/v1/sessions", head, opening)
            assert status == 200, session
            if session["uid"] == 1:
                break
        assert session["uid"] == 1
        turn = asyncio.create_task(_json(http, "POST", f"{fleet.a.url}/v1/chat/completions", head,
                                         {"messages": MESSAGES, "seed": 5}))
        assert await wait_until(lambda: fleet.miner.active == 1, 10) < 2, "the turn reached its miner (uid 1)"
        status, _, new = await _json(http, "POST", f"{fleet.b.url}/v1/sessions", head, opening)
        assert status == 200, new
        status, headers, body = await turn
        assert status == 200, body
        assert headers["x-sn1-miner-uid"] == "2" and headers["x-sn1-session-id"] == session["session_id"]
        assert body["choices"][0]["message"]["content"] == generate_text({"messages": MESSAGES, "seed": 5})
        assert (await _json(http, "GET", f"{fleet.a.url}/v1/sessions", head))[2] == new, "the new session untouched"
        status, headers, body = await _json(http, "POST", f"{fleet.b.url}/v1/chat/completions", head,
                                            {"messages": MESSAGES, "stream": False})
        assert status == 200 and headers["x-sn1-miner-uid"] == "2", body
        assert headers.get("x-sn1-session-moved-from") == ("1" if new["uid"] == 1 else None)
        assert (await _json(http, "GET", f"{fleet.a.url}/v1/sessions", head))[2]["uid"] == 2
