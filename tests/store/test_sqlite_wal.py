"""The SQLite store's files stay the size their data needs, not their busiest moment's."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_wal_that_grew_once_is_cut_back_after_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The -wal file kept its high-water mark for good (8 MB after a soak, more after a burst): it is cut back
    to WAL_SIZE_LIMIT once a checkpoint has copied it into the database."""
    import os

    from shared.store import sqlite_tables

    monkeypatch.setattr(sqlite_tables, "WAL_SIZE_LIMIT", 1 << 20)
    path = tmp_path / "x.db"
    db = sqlite_tables.open_db(path, synchronous="NORMAL", schema="CREATE TABLE t (v BLOB);")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("BEGIN")
    db.executemany("INSERT INTO t VALUES (?)", [(os.urandom(1000),) for _ in range(4000)])
    db.execute("COMMIT")
    assert os.path.getsize(f"{path}-wal") > 3 << 20
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    db.execute("INSERT INTO t VALUES (x'00')")  # the next write starts the log over, cut to the limit
    assert os.path.getsize(f"{path}-wal") <= 1 << 20
    db.close()
