"""A ``conversation``'s responses stored as the API stores them (``responses_state.last_turn`` and ``Keeping.part``),
on SQLite and on Redis: each names the conversation's last stored turn and keeps only what came after it, so N turns
take space linear in N (each record held the whole conversation before it, N² / 2 in all), and each reads back the
conversation it answered exactly as a whole record held it, items added to the conversation between turns included.
A conversation whose earlier items changed, or whose last stored turn is still pending, is stored whole."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from api.responses_state import Keeping, last_turn
from shared.store.base import KeyRecord
from shared.store.responses import ResponseStore, prev_of
from tests.store.test_response_parts import stored_bytes, turn

KEY = KeyRecord(id="key-a", key_hash="", prefix="", rate_limit=0)


async def stored_turn(responses: ResponseStore, conversation: list[dict[str, Any]], i: int, *,
                      pending: bool = False) -> tuple[str, str]:
    """Turn ``i`` of ``conversation`` stored as the API stores it (the conversation then gets its input and output,
    unless ``pending``): its id and its stored form."""
    ctx: Any = SimpleNamespace(responses=responses)  # what ``last_turn`` reads: the store
    response, added = turn(i)
    if pending:
        response = response | {"status": "in_progress", "output": []}
    keeping = Keeping(KEY, 60, await last_turn(ctx, KEY, conversation), added)
    data = keeping.part(response)
    assert data is not None
    assert await responses.put(KEY.id, response["id"], data, retention=60, pending=pending,
                               item_ids=[item["id"] for item in added + response["output"]])
    found = await responses.get(KEY.id, response["id"])
    assert found is not None and found.items == conversation + added  # read as a whole record held it
    if not pending:
        conversation += added + response["output"]
    return response["id"], data


def said(text: str, n: int) -> dict[str, Any]:
    """An item added to the conversation itself (not by a response)."""
    return {"id": f"msg_said_{n}", "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_text", "text": text}]}


async def test_a_conversations_turns_take_space_linear_in_their_turns(responses: ResponseStore) -> None:
    """100 turns of 2.5 KB answers, an item added to the conversation every 10 turns: a few times the turns' own
    bytes (whole records: about 50 times); each reads back its conversation as it was."""
    conversation = [said("I live in Paris.", 0)]
    own, ids, prevs = 0, [], []
    for i in range(100):
        if i % 10 == 5:
            conversation.append(said(f"By the way, {i}.", i))
        made, data = await stored_turn(responses, conversation, i)
        ids.append(made)
        prevs.append(prev_of(data))
        own += sum(len(json.dumps(part).encode()) for part in turn(i))
    stored = await stored_bytes(responses, KEY.id)
    assert stored < 3 * own, f"{stored} bytes stored for turns of {own} bytes"
    assert prevs == [None, *ids[:-1]]
    found = await responses.get(KEY.id, ids[49])
    assert found is not None and [item["id"] for item in found.items][-3:] == ["msg_in_48", "msg_out_48", "msg_in_49"]


async def test_a_changed_conversation_or_a_pending_turn_is_stored_whole(responses: ResponseStore) -> None:
    """An item of the conversation deleted (or changed) before the last stored turn: the next turn holds its whole
    conversation, and the turns after it continue it; a background turn still pending is never continued."""
    conversation = [said("I live in Paris.", 0)]
    for i in range(3):
        await stored_turn(responses, conversation, i)
    del conversation[2]  # the first answer, deleted from the conversation
    _, data = await stored_turn(responses, conversation, 3)
    assert prev_of(data) is None
    went_on, data = await stored_turn(responses, conversation, 4)
    assert prev_of(data) == "resp_3"
    conversation[-1] = conversation[-1] | {"status": "incomplete"}  # changed: not what resp_4 read
    _, data = await stored_turn(responses, conversation, 5)
    assert prev_of(data) is None
    await stored_turn(responses, conversation, 6)
    await stored_turn(responses, conversation, 7, pending=True)
    conversation += turn(7)[1]  # its input, added to the conversation by hand: what the pending one read
    _, data = await stored_turn(responses, conversation, 8)
    assert prev_of(data) is None and went_on == "resp_4"
