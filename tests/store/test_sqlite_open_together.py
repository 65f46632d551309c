"""Several API workers opening one new SQLite file at the same moment all start.

``WORKERS=4`` on SQLite: each worker creates the file, switches it to WAL and
creates the key, outbox and session tables as it starts. With the serving busy
timeout (0.5 s) on that step, a worker died at start with "database is locked"
(seen in CI; here in most runs of this test before the fix).
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from shared.store.outbox import SQLiteOutbox
from shared.store.sessions import SQLiteSessionStore
from shared.store.sqlite import SQLiteStore
from shared.store.sqlite_tables import unreclaimed

PROCESSES = 8
ROUNDS = 20


def open_everything(path: Path, start, results) -> None:  # noqa: ANN001 - multiprocessing primitives
    start.wait()  # every process at once, as a supervisor's workers start
    try:
        SQLiteStore(path)
        SQLiteOutbox(path)
        SQLiteSessionStore(path)
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test, which names it
        results.put(repr(e))


def test_workers_opening_a_new_file_together_all_start(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for round_ in range(ROUNDS):
        path = tmp_path / f"api-{round_}.db"
        start, results = ctx.Barrier(PROCESSES), ctx.Queue()
        procs = [ctx.Process(target=open_everything, args=(path, start, results)) for _ in range(PROCESSES)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=10)
        assert outcomes == ["ok"] * PROCESSES, f"round {round_}: {outcomes}"
        assert unreclaimed(path) is None  # made by whichever came first, it gives freed pages back


WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("INSERT INTO t VALUES ('from another process')")
db.close()  # the last connection out checkpoints and removes the WAL, if it can take the lock that says so
"""


def test_a_second_store_opened_in_a_process_keeps_the_first_ones_locks(tmp_path: Path) -> None:
    """An API process opens one SQLite file several times (keys, outbox, sessions, responses). Looking at the
    file's header with a descriptor of its own, then closing it, dropped every POSIX lock the process held on
    the file: another process's last connection then took the lock meant for "nobody else is here", checkpointed
    and deleted the WAL under this one, and this process's next writes went to a WAL nobody else reads (a stored
    response one API process wrote was not found by the next turn on another)."""
    import subprocess
    import sys

    from shared.store.sqlite_tables import open_db

    path = tmp_path / "api.db"
    first = open_db(path, synchronous="NORMAL", schema="CREATE TABLE IF NOT EXISTS t (v TEXT);")
    first.execute("INSERT INTO t VALUES ('before')")
    second = open_db(path, synchronous="NORMAL")  # another store of this process, on the same file
    subprocess.run([sys.executable, "-c", WRITER, str(path)], check=True, timeout=30)
    first.execute("INSERT INTO t VALUES ('after')")
    reader = subprocess.run([sys.executable, "-c", "import sqlite3, sys; print(sorted(r[0] for r in sqlite3.connect("
                             "sys.argv[1]).execute('SELECT v FROM t')))", str(path)],
                            check=True, timeout=30, capture_output=True, text=True)
    assert reader.stdout.strip() == str(sorted(["before", "from another process", "after"])), reader.stdout
    second.close()
    first.close()
