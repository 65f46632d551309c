"""A SQLite file that cannot grow (a full disk; here ``PRAGMA max_page_count``, which fails a write the same
way, SQLITE_FULL): the write is a ``StoreUnavailable`` naming the cause, and the tables work again once
the file can grow."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.store.base import StoreUnavailable
from shared.store.outbox import SQLiteOutbox
from shared.store.responses import SQLiteResponseStore, encode

BIG = "x" * 200_000  # more than the free pages of a fresh file
RESPONSE = encode({"id": "resp_1", "object": "response", "output_text": BIG}, [])


async def test_a_full_file_names_itself_and_recovers(tmp_path: Path) -> None:
    outbox, responses = SQLiteOutbox(tmp_path / "api.db"), SQLiteResponseStore(tmp_path / "api.db")
    pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]
    for db in (outbox._db, responses._db):
        db.execute(f"PRAGMA max_page_count={pages}")
    # SQLite rolls a transaction that met SQLITE_FULL back itself; a ROLLBACK after it said "cannot rollback -
    # no transaction is active", and the log line of the 503 named that instead of the full disk.
    with pytest.raises(StoreUnavailable, match="database or disk is full"):
        await outbox.put_many([{"payload": BIG}])
    with pytest.raises(StoreUnavailable, match="database or disk is full"):
        await responses.put("key1", "resp_1", RESPONSE, retention=60)
    assert not outbox._db.in_transaction and not responses._db.in_transaction
    for db in (outbox._db, responses._db):
        db.execute("PRAGMA max_page_count=1073741823")  # room again: the same connections write
    assert await outbox.put_many([{"payload": BIG}]) == 0
    await responses.put("key1", "resp_1", RESPONSE, retention=60)
    assert (await responses.get("key1", "resp_1")) is not None
