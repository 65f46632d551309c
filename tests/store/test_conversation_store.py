"""The conversation store, on SQLite and on Redis alike: a conversation is its key's alone, keeps its items in
order, is bounded in size, expires after its last write, and two writers appending at once lose nothing."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shared.store import conversations as conversations_module
from shared.store import forgotten
from shared.store.conversations import (
    Conversation,
    ConversationStore,
    RedisConversationStore,
    SQLiteConversationStore,
    encode_item,
    valid_id,
)
from shared.store.forgotten import KeyForgotten
from tests.store.conftest import (
    BACKENDS,
    conversations_of,
    drop_keys,
    redis_url,
    stores_in_one_place,
    swept_marks,
)


def item(n: int, text: str = "Hi") -> str:
    return encode_item({"id": f"msg_{n}", "type": "message", "role": "user", "status": "completed",
                        "content": [{"type": "input_text", "text": text}]})


def conversation(conversation_id: str = "conv_1", metadata: dict[str, str] | None = None) -> Conversation:
    return Conversation(conversation_id, 1700000000, metadata or {}, 0)


@pytest.fixture(params=BACKENDS)
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    """Opens stores on one SQLite file or one Redis namespace (each a worker's), all closed afterwards."""
    async with stores_in_one_place(request.param, tmp_path / "c.db", SQLiteConversationStore,
                                   RedisConversationStore) as open_one:
        yield open_one


@pytest.fixture
def conversations(opener: Callable[[], Any]) -> ConversationStore:
    return opener()


async def test_a_conversation_keeps_its_items_in_order_for_its_key_only(conversations: ConversationStore) -> None:
    await conversations.create("key-a", conversation(metadata={"topic": "x"}), [item(1), item(2)], retention=60)
    found = await conversations.get("key-a", "conv_1")
    assert found is not None and (found.created_at, found.metadata) == (1700000000, {"topic": "x"})
    assert found.size == len(item(1).encode()) * 2
    assert await conversations.get("key-b", "conv_1") is None and await conversations.items("key-b", "conv_1") is None
    added = await conversations.append("key-a", "conv_1", [item(3)], retention=60, max_bytes=None)
    assert added.found and not added.full and added.size == found.size + len(item(3).encode())
    assert [i["id"] for i in await conversations.items("key-a", "conv_1") or []] == ["msg_1", "msg_2", "msg_3"]
    assert not (await conversations.append("key-b", "conv_1", [item(4)], retention=60, max_bytes=None)).found
    assert await conversations.set_metadata("key-a", "conv_1", {"topic": "y"}, retention=60)
    assert not await conversations.set_metadata("key-b", "conv_1", {"topic": "z"}, retention=60)
    assert (await conversations.get("key-a", "conv_1")).metadata == {"topic": "y"}  # type: ignore[union-attr]


async def test_items_are_deleted_one_by_one_and_the_conversation_whole(conversations: ConversationStore) -> None:
    await conversations.create("key-a", conversation(), [item(1), item(2), item(3)], retention=60)
    assert await conversations.delete_item("key-a", "conv_1", "msg_2", retention=60) is True
    assert await conversations.delete_item("key-a", "conv_1", "msg_2", retention=60) is False
    assert await conversations.delete_item("key-b", "conv_1", "msg_1", retention=60) is None
    assert [i["id"] for i in await conversations.items("key-a", "conv_1") or []] == ["msg_1", "msg_3"]
    assert (await conversations.get("key-a", "conv_1")).size == 2 * len(item(1).encode())  # type: ignore[union-attr]
    assert not await conversations.delete("key-b", "conv_1")
    assert await conversations.delete("key-a", "conv_1")
    assert await conversations.get("key-a", "conv_1") is None and await conversations.items("key-a", "conv_1") is None
    assert not await conversations.delete("key-a", "conv_1")


async def test_an_append_over_the_bound_adds_nothing(conversations: ConversationStore) -> None:
    await conversations.create("key-a", conversation(), [item(1)], retention=60)
    one = len(item(1).encode())
    full = await conversations.append("key-a", "conv_1", [item(2), item(3)], retention=60, max_bytes=2 * one)
    assert full.found and full.full and full.size == 3 * one
    assert len(await conversations.items("key-a", "conv_1") or []) == 1
    assert not (await conversations.append("key-a", "conv_1", [item(2)], retention=60, max_bytes=2 * one)).full


async def test_a_conversation_expires_after_its_last_write(conversations: ConversationStore) -> None:
    await conversations.create("key-a", conversation(), [item(1)], retention=0.3)
    await conversations.create("key-a", conversation("conv_2"), [item(1)], retention=0.3)
    await asyncio.sleep(0.2)
    await conversations.append("key-a", "conv_2", [item(2)], retention=0.3, max_bytes=None)  # refreshed
    await asyncio.sleep(0.2)
    assert await conversations.get("key-a", "conv_1") is None and await conversations.items("key-a", "conv_1") is None
    assert not (await conversations.append("key-a", "conv_1", [item(3)], retention=60, max_bytes=None)).found
    assert len(await conversations.items("key-a", "conv_2") or []) == 2


async def test_a_deleted_keys_conversations_all_go_and_no_others(conversations: ConversationStore) -> None:
    for n in range(3):
        await conversations.create("key-a", conversation(f"conv_{n}"), [item(n)], retention=60)
    await conversations.create("key-b", conversation("conv_9"), [item(9)], retention=60)
    await conversations.create("key-a*", conversation("conv_8"), [], retention=60)  # a pattern is no wildcard
    assert await conversations.forget_key("key-a") >= 3
    assert [await conversations.get("key-a", f"conv_{n}") for n in range(3)] == [None] * 3
    assert await conversations.get("key-b", "conv_9") is not None
    assert await conversations.get("key-a*", "conv_8") is not None


async def test_a_deleted_keys_late_writes_keep_nothing(opener: Callable[[], Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A request of a key still in flight as an admin deleted the key (on another worker or host: another store on
    the file or namespace) wrote after the delete: a new conversation was kept its usual day, though no key could
    ever read it. Every write of a forgotten key is refused now (``KeyForgotten``) and keeps nothing, and a turn's
    withdrawal leaves no fence; another key's writes are kept as ever, and the mark goes after its time."""
    deleting, late = opener(), opener()
    await late.create("key-a", conversation("conv_0"), [item(1), item(2)], retention=60)
    await deleting.forget_key("key-a")
    with pytest.raises(KeyForgotten):
        await late.create("key-a", conversation("conv_1"), [item(3)], retention=60)
    with pytest.raises(KeyForgotten):
        await late.append("key-a", "conv_0", [item(3)], retention=60, max_bytes=None, once=True, fence="resp_1")
    with pytest.raises(KeyForgotten):
        await late.set_metadata("key-a", "conv_0", {"topic": "x"}, retention=60)
    with pytest.raises(KeyForgotten):
        await late.delete_item("key-a", "conv_0", "msg_1", retention=60)
    assert await late.withdraw("key-a", "conv_0", [item(3)], fence="resp_1", retention=60) is None
    assert await late.get("key-a", "conv_0") is None and await late.get("key-a", "conv_1") is None
    assert await conversations_of(late, "key-a") == []
    await late.create("key-b", conversation("conv_1"), [item(3)], retention=60)  # another key: kept
    assert len(await late.items("key-b", "conv_1") or []) == 1
    # the mark goes after FORGOTTEN_FOR_S (key ids are never made again): none is kept for good
    monkeypatch.setattr(forgotten, "FORGOTTEN_FOR_S", 0.05)
    await deleting.forget_key("key-c")
    await asyncio.sleep(0.1)
    await late.create("key-c", conversation("conv_2"), [], retention=60)
    assert await late.get("key-c", "conv_2") is not None
    if isinstance(late, SQLiteConversationStore):  # the session sweep drops the marks past their time
        assert await swept_marks(late.path) == {"key-a"}


@pytest.mark.redis
async def test_a_write_landing_while_redis_forgets_the_key_keeps_nothing() -> None:
    """Redis's ``forget_key`` marks the key, then SCANs its names and deletes them in batches (a SQLite file
    deletes in one transaction: nothing lands between). A turn added after the SCAN deleted a conversation's item
    list but before it reached its hash wrote the list again, behind the SCAN: kept its usual day for no key. The
    scripts read the mark with their write: nothing is written then, and nothing is left."""
    store = RedisConversationStore.from_url(redis_url(), namespace=f"test-{secrets.token_hex(6)}")
    try:
        await store.create("key-a", conversation(), [item(1)], retention=60)
        head = f"{store.ns}:conversation:key-a:conv_1"
        await store.r.set(f"{store.ns}:response_forgotten:key-a", 1, px=60_000)  # forget_key's first step...
        await store.r.delete(head + ":items")  # ...its SCAN's first batch...
        with pytest.raises(KeyForgotten):  # ...a turn of the key's in-flight request...
            await store.append("key-a", "conv_1", [item(2)], retention=60, max_bytes=None, once=True, fence="resp_1")
        with pytest.raises(KeyForgotten):
            await store.set_metadata("key-a", "conv_1", {"topic": "x"}, retention=60)
        assert await store.withdraw("key-a", "conv_1", [item(2)], fence="resp_1", retention=60) is None
        await store.r.delete(head)  # ...and its last batch
        assert await conversations_of(store, "key-a") == []
    finally:
        await drop_keys(store.r, store.ns)
        await store.aclose()


async def test_two_workers_appending_at_once_lose_no_item(opener: Callable[[], Any]) -> None:
    """Each worker its own connection (its own client), appending concurrently: every item lands, once."""
    first, second = opener(), opener()
    await first.create("key-a", conversation(), [], retention=60)

    async def appends(store: ConversationStore, base: int) -> None:
        for n in range(base, base + 20):
            await store.append("key-a", "conv_1", [item(n), item(n + 1000)], retention=60, max_bytes=None)

    if isinstance(first, SQLiteConversationStore):  # each call blocks its thread: two threads, as two processes
        threads = [threading.Thread(target=asyncio.run, args=(appends(s, b),)) for s, b in ((first, 0), (second, 100))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        await asyncio.gather(appends(first, 0), appends(second, 100))
    ids = [i["id"] for i in await first.items("key-a", "conv_1") or []]
    assert sorted(ids) == sorted(f"msg_{n}" for b in (0, 100) for m in range(b, b + 20) for n in (m, m + 1000))
    for n in range(20):  # each append's two items stay together
        assert ids.index(f"msg_{n + 1000}") == ids.index(f"msg_{n}") + 1
    stored = await first.items("key-a", "conv_1") or []
    assert (await first.get("key-a", "conv_1")).size == sum(len(encode_item(i).encode()) for i in stored)


def test_only_our_shape_of_id_is_looked_up() -> None:
    assert valid_id("conv_0123abcd") and valid_id("conv_" + "a" * 128)
    for bad in ("conv_", "conv_a:items", "resp_1", "conv_*", "conv_" + "a" * 129, "conv_a b"):
        assert not valid_id(bad), bad


async def test_sqlite_drops_expired_conversations_and_their_items_in_bounded_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.store import conversations as conversations_module

    monkeypatch.setattr(conversations_module, "PURGE_BATCH", 2)
    store = SQLiteConversationStore(tmp_path / "c.db")
    try:
        for n in range(3):
            await store.create("key-a", conversation(f"conv_old{n}"), [item(n)], retention=-1)  # already expired
        count = lambda table: store._query(f"SELECT COUNT(*) FROM {table}")[0][0]  # noqa: E731
        assert (count("conversations"), count("conversation_items")) == (2, 2)  # the first create purged itself
        store._next_purge = 0.0
        await store.create("key-a", conversation("conv_new"), [item(9)], retention=60)
        assert (count("conversations"), count("conversation_items")) == (1, 1)  # its own batch of 2, not more
    finally:
        await store.aclose()


async def test_an_append_asked_again_once_adds_its_items_once(conversations: ConversationStore) -> None:
    """``once``: a write asked again after a failure that landed after all adds nothing more; another
    append, or the same items without ``once`` (a caller's own items, sent twice), is added."""
    await conversations.create("key-a", conversation(), [item(1)], retention=60)
    first = await conversations.append("key-a", "conv_1", [item(2), item(3)], retention=60, max_bytes=None, once=True)
    again = await conversations.append("key-a", "conv_1", [item(2), item(3)], retention=60, max_bytes=None, once=True)
    assert again.found and not again.full and again.size == first.size
    assert [i["id"] for i in await conversations.items("key-a", "conv_1") or []] == ["msg_1", "msg_2", "msg_3"]
    await conversations.append("key-a", "conv_1", [item(3)], retention=60, max_bytes=None, once=True)  # the tail
    assert len(await conversations.items("key-a", "conv_1") or []) == 3
    await conversations.append("key-a", "conv_1", [item(2)], retention=60, max_bytes=None, once=True)
    await conversations.append("key-a", "conv_1", [item(2)], retention=60, max_bytes=None)
    assert [i["id"] for i in await conversations.items("key-a", "conv_1") or []] == ["msg_1", "msg_2", "msg_3",
                                                                                      "msg_2", "msg_2"]
    assert not (await conversations.append("key-b", "conv_1", [item(2)], retention=60, max_bytes=None,
                                           once=True)).found


async def test_a_withdrawn_turn_is_taken_out_wherever_it_is_and_its_late_write_adds_nothing(
        conversations: ConversationStore) -> None:
    """A response's turn whose write was reported failed (the caller is told to send it again) may have landed:
    ``withdraw`` takes its items out, wherever they are (another writer may have added after them), and the
    conversation's size with them. On Redis the turn is fenced too: its write, should it come later (a timed-out
    call Redis runs when it resumes), adds nothing. Another key's conversation, or none, is not touched."""
    turn = [item(2, "turn"), item(3, "answer")]
    await conversations.create("key-a", conversation(), [item(1)], retention=60)
    before = await conversations.get("key-a", "conv_1")
    assert await conversations.withdraw("key-a", "conv_1", turn, fence="resp_0", retention=60) == 0  # never landed
    await conversations.append("key-a", "conv_1", turn, retention=60, max_bytes=None, once=True, fence="resp_1")
    await conversations.append("key-a", "conv_1", [item(4, "after")], retention=60, max_bytes=None)
    assert await conversations.withdraw("key-b", "conv_1", turn, fence="resp_1", retention=60) is None
    assert await conversations.withdraw("key-a", "conv_1", turn, fence="resp_1", retention=60) == 2
    assert [i["id"] for i in await conversations.items("key-a", "conv_1") or []] == ["msg_1", "msg_4"]
    after = await conversations.get("key-a", "conv_1")
    assert before is not None and after is not None and after.size == before.size + len(item(4, "after").encode())
    late = await conversations.append("key-a", "conv_1", turn, retention=60, max_bytes=None, once=True,
                                      fence="resp_1")
    if isinstance(conversations, RedisConversationStore):
        assert late.found and late.withdrawn
        assert [i["id"] for i in await conversations.items("key-a", "conv_1") or []] == ["msg_1", "msg_4"]
    # another turn (another fence) is added as ever
    added = await conversations.append("key-a", "conv_1", [item(5)], retention=60, max_bytes=None, once=True,
                                       fence="resp_2")
    assert added.found and not added.withdrawn
    assert [i["id"] for i in await conversations.items("key-a", "conv_1") or []][-1] == "msg_5"


async def test_a_conversation_keeps_the_name_of_its_last_stored_turn_with_its_items(
        conversations: ConversationStore) -> None:
    """``append``'s ``last`` is kept with the items (or when a write asked again finds them there), read with them by
    ``turn_items``; None leaves it, "" takes it away; a record without one reads None."""
    await conversations.create("key-a", conversation(), [item(1)], retention=60)
    assert await conversations.turn_items("key-a", "conv_1") == ([json_of(item(1))], None)
    await conversations.append("key-a", "conv_1", [item(2)], retention=60, max_bytes=None, once=True, last='{"n":2}')
    assert await conversations.turn_items("key-a", "conv_1") == ([json_of(item(1)), json_of(item(2))], '{"n":2}')
    await conversations.append("key-a", "conv_1", [item(2)], retention=60, max_bytes=None, once=True, last='{"n":3}')
    await conversations.append("key-a", "conv_1", [item(3)], retention=60, max_bytes=None)
    assert (await conversations.turn_items("key-a", "conv_1") or ([], ""))[1] == '{"n":3}'
    assert await conversations.items("key-a", "conv_1") == [json_of(item(n)) for n in (1, 2, 3)]
    full = await conversations.append("key-a", "conv_1", [item(4)], retention=60, max_bytes=1, last='{"n":4}')
    assert full.full and (await conversations.turn_items("key-a", "conv_1") or ([], ""))[1] == '{"n":3}'
    await conversations.append("key-a", "conv_1", [item(4)], retention=60, max_bytes=None, last="")
    assert (await conversations.turn_items("key-a", "conv_1") or ([], ""))[1] is None
    assert await conversations.turn_items("key-b", "conv_1") is None


def json_of(encoded: str) -> dict[str, Any]:
    return json.loads(encoded)


async def test_a_sqlite_file_made_before_the_name_of_the_last_stored_turn_takes_it(tmp_path: Path) -> None:
    """A file whose conversations table has no ``last_turn`` column (made before 2026-12-07): its conversations read as
    before, naming none, and take the name once opened by this release (the column is added)."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(conversations_module.SCHEMA)  # the table as the earlier release made it
    db.execute("INSERT INTO conversations (id, key_id, data, expires_at) VALUES ('conv_1', 'key-a', ?, ?)",
               ('{"created_at":1700000000,"metadata":{}}', time.time() + 60))
    db.execute("INSERT INTO conversation_items (conversation_id, item_id, data, size) VALUES ('conv_1', 'msg_1', ?, ?)",
               (item(1), len(item(1))))
    db.commit()
    assert "last_turn" not in {row[1] for row in db.execute("PRAGMA table_info(conversations)")}
    db.close()
    conversations = SQLiteConversationStore(path)
    try:
        assert await conversations.turn_items("key-a", "conv_1") == ([json_of(item(1))], None)
        await conversations.append("key-a", "conv_1", [item(2)], retention=60, max_bytes=None, last='{"n":2}')
        assert (await conversations.turn_items("key-a", "conv_1") or ([], ""))[1] == '{"n":2}'
    finally:
        await conversations.aclose()
