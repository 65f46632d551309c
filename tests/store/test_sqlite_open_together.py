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
