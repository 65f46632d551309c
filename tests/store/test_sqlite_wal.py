"""The SQLite store's files stay the size their data needs, not their busiest moment's."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from itertools import pairwise
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


def _on_disk(path: Path) -> int:
    """The file's size once its -wal is checkpointed into it (what an operator sees after a quiet moment)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path.stat().st_size


async def test_a_burst_of_stored_responses_is_given_back_once_it_expires(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Expired rows were deleted but the file kept its high-water mark for good (a burst's 100 MB stayed 100 MB):
    the purges that follow give the freed pages back, at most RECLAIM_PAGES a pass."""
    from shared.store import responses as responses_module
    from shared.store import sqlite_tables
    from shared.store.responses import SQLiteResponseStore, encode

    # each later write reclaims, not each second (raising=False: the test reads the same before the fix)
    monkeypatch.setattr(responses_module, "RECLAIM_AGAIN_S", 0.0, raising=False)
    path = tmp_path / "api.db"
    store = SQLiteResponseStore(path)
    try:
        for i in range(600):  # ~12 MB of stored conversations, expiring together
            await store.put("key-a", f"resp_{i}", encode({"id": f"resp_{i}"}, [{"text": "x" * 20000}]), retention=0.3)
        burst = _on_disk(path)
        assert burst > 11 << 20
        await asyncio.sleep(0.4)
        store._next_purge = 0.0
        page = store._query("PRAGMA page_size")[0][0]
        sizes = []
        for i in range(40):
            await store.put("key-a", f"later_{i}", encode({"id": f"later_{i}"}, []), retention=60)
            sizes.append(_on_disk(path))
        assert store._query("SELECT COUNT(*) FROM stored_responses") == [(40,)]
        assert sizes[-1] < 2 << 20, sizes  # back to what 40 small rows need, and the slack kept for reuse
        # bounded: no pass gave back more than RECLAIM_PAGES (one long write lock held against every worker), and
        # a pointer-map page of theirs
        assert all(a - b <= (sqlite_tables.RECLAIM_PAGES + 1) * page for a, b in pairwise([burst, *sizes])), sizes
    finally:
        await store.aclose()


async def test_expired_conversations_are_given_back_too(tmp_path: Path) -> None:
    from shared.store.conversations import Conversation, SQLiteConversationStore

    path = tmp_path / "api.db"
    store = SQLiteConversationStore(path)
    try:
        for i in range(100):
            await store.create("key-a", Conversation(f"conv_{i}", 0, {}, 0), ['{"text":"%s"}' % ("x" * 40000)],
                               retention=0.2)
        burst = _on_disk(path)
        await asyncio.sleep(0.3)
        store._next_purge = 0.0
        await store.create("key-a", Conversation("conv_new", 0, {}, 0), [], retention=60)  # purges, then reclaims
        assert _on_disk(path) < burst - (512 << 10)
        assert store._next_purge < time.time() + 2  # more free pages waiting: again soon
    finally:
        await store.aclose()


def test_a_file_made_before_keeps_its_size_until_sn1_vacuum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file made without auto_vacuum cannot be switched in place: the API leaves it (a WARNING at start says how
    to convert it), and ``sn1 vacuum`` with the API stopped shrinks it and makes it give space back from then on."""
    from loguru import logger

    from api.main import _warn_unreclaimed
    from shared.cli import main
    from shared.store import sqlite_tables
    from shared.store.responses import SCHEMA

    path = tmp_path / "api.db"
    old = sqlite3.connect(path, isolation_level=None)  # as a release before 2026-12-06 made it
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(SCHEMA)
    old.executemany("INSERT INTO stored_responses VALUES (?,?,?,?)",
                    [(f"resp_{i}", "key-a", "x" * 20000, 0.0) for i in range(300)])
    old.execute("DELETE FROM stored_responses")
    old.close()
    db = sqlite_tables.open_db(path, synchronous="NORMAL", schema=SCHEMA)
    assert sqlite_tables.reclaim(db) == 0 and _on_disk(path) > 5 << 20  # nothing done in place
    db.close()
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        _warn_unreclaimed(path)
    finally:
        logger.remove(sink)
    assert len(warnings) == 1 and f"sn1 vacuum {path}" in warnings[0] and "MiB free" in warnings[0], warnings
    with pytest.raises(SystemExit) as done:
        main(["vacuum", str(path)])
    assert done.value.code is None and "MiB ->" in capsys.readouterr().out
    assert _on_disk(path) < 1 << 20 and sqlite_tables.unreclaimed(path) is None
    with pytest.raises(SystemExit) as done:
        main(["vacuum", str(tmp_path / "missing.db")])
    assert "no such file" in str(done.value.code)
    with pytest.raises(SystemExit) as done:  # the STORE_URL, as .env.api has it, names the same file
        main(["vacuum", f"sqlite:///{path}"])
    assert done.value.code is None and capsys.readouterr().out.startswith(f"{path}: ")
    with pytest.raises(SystemExit) as done:
        main(["vacuum", "redis://:secret@127.0.0.1:6379/0"])
    assert done.value.code == ("sn1 vacuum: redis://***@127.0.0.1:6379/0: not a SQLite store (sqlite:///path); a "
                               "Redis store frees its memory by itself")
    (tmp_path / "notes.txt").write_text("not a database at all, " * 100)
    with pytest.raises(SystemExit) as done:
        main(["vacuum", str(tmp_path / "notes.txt")])  # the file's fault: stopping the API would not help
    assert "file is not a database" in str(done.value.code) and "stop the API" not in str(done.value.code)


def _write_and_purge(path: Path, worker: int, start, results) -> None:  # noqa: ANN001 - multiprocessing primitives
    """One API worker's writes, each one due to purge and reclaim (as under a burst's expiry)."""
    from shared.store import responses as responses_module
    from shared.store.responses import SQLiteResponseStore, encode

    async def run() -> None:
        store = SQLiteResponseStore(path)
        start.wait()
        try:
            for i in range(60):
                store._next_purge = 0.0
                await store.put("key-a", f"w{worker}_{i}", encode({"id": f"w{worker}_{i}"}, [{"text": "y" * 3000}]),
                                retention=60)
        finally:
            await store.aclose()

    responses_module.RECLAIM_AGAIN_S = 0.0
    try:
        asyncio.run(run())
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test, which names it
        results.put(repr(e))


async def test_workers_reclaiming_one_file_together_lose_nothing(tmp_path: Path) -> None:
    """Four worker processes purge and give pages back on one file while each writes: every write is stored
    (a pass refused by another's write lock waits for the next), and the burst's space is given back."""
    import multiprocessing

    from shared.store.responses import SQLiteResponseStore, encode

    path = tmp_path / "api.db"
    store = SQLiteResponseStore(path)
    for i in range(400):
        await store.put("key-a", f"old_{i}", encode({"id": f"old_{i}"}, [{"text": "x" * 20000}]), retention=0.2)
    await store.aclose()
    burst = _on_disk(path)
    await asyncio.sleep(0.3)
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_write_and_purge, args=(path, w, start, results)) for w in range(4)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    assert outcomes == ["ok"] * 4
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM stored_responses").fetchone() == (240,)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    assert _on_disk(path) < burst // 2


def test_sn1_vacuum_refuses_a_file_another_process_has_open(tmp_path: Path) -> None:
    """``sn1 vacuum`` on the store of an API still running (the README says stop it first; an operator in a hurry
    does not): it went ahead, and the rewrite held the write lock of every worker for as long as it took (seconds
    per GB: every keyed request a 503). It now refuses in one line while another process has the file open, and
    changes nothing; once that process is gone, it runs."""
    import subprocess
    import sys

    from shared.store import sqlite_tables
    from shared.store.responses import SCHEMA

    path = tmp_path / "api.db"
    db = sqlite_tables.open_db(path, synchronous="NORMAL", schema=SCHEMA)
    db.close()
    holder = subprocess.Popen([sys.executable, "-c", (  # an API worker: the store open, idle between requests
        "import time; from pathlib import Path; from shared.store import sqlite_tables; "
        "from shared.store.responses import SCHEMA; "
        f"db = sqlite_tables.open_db(Path({str(path)!r}), synchronous='NORMAL', schema=SCHEMA); "
        "db.execute('SELECT count(*) FROM stored_responses').fetchall(); print('open', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n", holder.communicate()
        done = subprocess.run([sys.executable, "-m", "shared.cli", "vacuum", str(path)], capture_output=True,
                              text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"sn1 vacuum: {path} is open in another process" in done.stderr and "stop the API" in done.stderr, done
    again = subprocess.run([sys.executable, "-m", "shared.cli", "vacuum", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "MiB ->" in again.stdout, (again.stdout, again.stderr)
