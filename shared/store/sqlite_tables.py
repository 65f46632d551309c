"""A small base for SQLite-backed tables beside the key store (outbox, sessions).

Each gets its own connection to the API's SQLite file (WAL, so many worker
processes share it), write transactions taken with ``BEGIN IMMEDIATE`` so
concurrent writers serialise instead of failing, and every sqlite error
surfaced as ``StoreUnavailable`` (a 503 at the edge, never an open door).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

from shared.store.base import StoreUnavailable

# How long a statement waits for another connection's write lock. Calls run on the event loop, so
# this is also how long the whole worker (every request, /health included) can freeze on a locked
# file: SQLite's default here was 10 s, which froze the loop 10 s per request while another process
# held the lock. WAL commits take micro- to milliseconds, so half a second is ample for real
# contention; past it the caller gets StoreUnavailable (503) and the loop moves on.
BUSY_TIMEOUT_S = 0.5
# Opening is different: the workers of one API start together and each creates the file, switches
# it to WAL and creates its tables, one after another under SQLite's locks, before it serves anything.
# Held to 0.5 s there, a worker on a slow disk died at start ("database is locked", seen in CI with
# WORKERS=4); so opening waits up to this long, and is retried if SQLite refuses to wait at all (it
# does, rather than risk a deadlock between two connections upgrading their locks).
OPEN_TIMEOUT_S = 30.0

INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
WAL_SIZE_LIMIT = 16 << 20  # bytes of -wal file kept after a checkpoint
# Free pages given back to the file system by one ``reclaim`` (1 MiB at SQLite's 4 KiB pages): its own short
# write transaction, on the event loop, so it must stay short (~10 ms); a file with this many free pages or
# fewer keeps them for its next inserts (reused, not given back and grown again each purge).
RECLAIM_PAGES = 256
RECLAIM_AGAIN_S = 1.0  # how soon a store's next write reclaims again while more free pages are waiting

T = TypeVar("T")


def open_db(path: Path, *, synchronous: str, schema: str = "",
            migrate: Callable[[sqlite3.Connection], None] | None = None) -> sqlite3.Connection:
    """A WAL connection to ``path`` with ``schema`` created and ``migrate`` run (columns an earlier release's
    file lacks: ``add_columns``), both with the start's patience, then ``BUSY_TIMEOUT_S`` for serving. Run after
    the serving timeout, a migration's read met another worker switching the new file to WAL and died at start
    ("database is locked", 1 round in 20 of ``test_sqlite_open_together`` on a loaded host)."""
    made = create_private(path)
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    while True:
        db = sqlite3.connect(path, timeout=OPEN_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            # Before anything makes the file's first page: a new file gives back the pages its deleted rows
            # free (``reclaim``). On a file made before 2026-12-06 it changes nothing (``compact`` converts one).
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")  # WAL + NORMAL survives a process crash
            # A WAL that grew once (a burst, a long read holding checkpoints back) is cut back to this after
            # each checkpoint instead of keeping its high-water mark on disk for good.
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            if schema:
                db.executescript(schema)
            if migrate is not None:  # each step may run again after a refusal: it adds only what is missing
                migrate(db)
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            if not made:  # SQLite read it as a database: one made by an older release may be made private now
                _make_private(path)
            return db
        except sqlite3.OperationalError as e:
            db.close()
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def why_not_opened(path: Path, error: BaseException) -> str:
    """What to fix, for a SQLite file a start could not open (``""``: the error says it all, a file that is not a
    database). SQLite says "unable to open database file" for a directory named as the file, and for a file in a
    directory this user cannot write (it writes the -wal and -shm files beside it): a service's user (the units'
    ``User=sn1``) and a directory made by root, the usual first start, read as nothing more."""
    try:
        if path.is_dir():
            return f"; {path} is a directory: name a file in it ({path / 'api.db'})"
    except OSError:  # a directory on the way this user cannot enter: its PermissionError, said below
        pass
    cause = error.__cause__ if isinstance(error, StoreUnavailable) and error.__cause__ else error
    code = getattr(cause, "sqlite_errorcode", None)
    if not isinstance(cause, PermissionError) and (code is None or code & 0xFF not in _UNWRITABLE):
        return ""
    return (f"; the file and its directory, {path.resolve().parent}, must be writable by this process's user "
            f"({_user()}): SQLite writes {path.name}-wal and {path.name}-shm beside the file")


_UNWRITABLE = frozenset({sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM})


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid with no name (a container's)
        return f"uid {os.geteuid()}"


def reclaim(db: sqlite3.Connection) -> int:
    """Give back at most ``RECLAIM_PAGES`` of the file's free pages to the file system, above a slack of
    ``RECLAIM_PAGES`` kept for reuse; how many free pages are still above that slack (0: done). Expired rows
    were deleted but the file kept its largest size for good: a burst of stored responses held its disk
    until someone stopped the API for a ``VACUUM``. One bounded pass, in its own write transaction (out
    of any other: call it after the purge commits), so it holds the write lock about 10 ms (measured: moving
    256 pages) however large the burst was; the file shrinks at the next checkpoint. A file made without auto_vacuum (before
    2026-12-06) has nothing done here: 0."""
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:
        return 0
    extra = db.execute("PRAGMA freelist_count").fetchone()[0] - RECLAIM_PAGES
    if extra <= 0:  # incremental_vacuum(0) would free them all, in one long transaction
        return 0
    # executescript steps the pragma to its end (execute frees one page per step: one, in Python)
    db.executescript(f"PRAGMA incremental_vacuum({min(extra, RECLAIM_PAGES)});")
    return max(0, extra - RECLAIM_PAGES)


def unreclaimed(path: Path) -> int | None:
    """None if the file gives back what its purges free (made with auto_vacuum=INCREMENTAL, or ``compact``ed);
    else the bytes it holds free now, for good (a file made before 2026-12-06)."""
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)  # reads two pragmas: writes nothing
    try:
        # an empty file (made ahead for the store, see ``_made_ahead``) is a new database: ``open_db`` gives it
        # auto_vacuum; read here first, it was "made before 2026-12-06: run sn1 vacuum"
        if path.stat().st_size == 0 or db.execute("PRAGMA auto_vacuum").fetchone()[0] == INCREMENTAL:
            return None
        return db.execute("PRAGMA freelist_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()


def compact(path: Path) -> tuple[int, int]:
    """Rewrite a store file smallest, and so that it gives back freed pages from now on (``reclaim``); its size
    before and after (bytes, the -wal file included). For a file made before 2026-12-06, with the API stopped:
    ``VACUUM`` holds the write lock until it has copied the whole file (seconds per GB, and as much free disk
    again), so every worker's store call fails meanwhile; which is why the API never does it at start."""
    before = _size_on_disk(path)
    db = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        _alone(db, path)
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return before, _size_on_disk(path)


class FileInUse(sqlite3.OperationalError):
    """Another process has the store file open (an API worker, a validator, a backup): ``compact`` would hold the
    write lock of every one of them until it is done."""


def _alone(db: sqlite3.Connection, path: Path) -> None:
    """Take the file for ``db`` alone, kept to its close (``locking_mode=EXCLUSIVE``), or raise ``FileInUse``: any
    other process's connection, idle ones too (a WAL connection holds the file's shared lock while it is open), is
    a refusal, where ``VACUUM`` went ahead under a running API and made every worker's store call wait on it."""
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    try:
        db.execute("BEGIN EXCLUSIVE")
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise FileInUse(f"{path} is open in another process") from None
        raise
    db.execute("COMMIT")


def _size_on_disk(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def create_private(path: Path, *, made_ahead: bool = True) -> bool:
    """Create the database file readable by its owner alone, if it is not there (an empty file is an empty
    database), and say whether it did: it holds users' prompts and answers (stored responses, conversations, the
    scoring outbox), and SQLite gives its -wal and -shm files the database's mode. One already there that others
    may read (made by a release before 2026-12-06, as 0644) is made private by ``open_db``, with a WARNING, once
    SQLite has read it as a database: a setting naming some other file of the operator's (a notes file, an env
    file) is refused with that file's mode left as it was.

    The file is never opened here to look at it: closing any descriptor of a file drops every POSIX lock this
    process holds on it, so peeking at the header while another store of this process had the database open
    let a second process take the lock that says "nobody else is here", checkpoint and delete the WAL under
    this one, and lose its writes (a stored response, written by one API process, not found by the next turn on
    another). ``made_ahead`` off: only a file made here is new (``sn1 backup``'s copy: an empty file already
    there may be anyone's, a link to anywhere)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return made_ahead and _made_ahead(path)
    return True


def _made_ahead(path: Path) -> bool:
    """An empty file is one made ahead for the store (``touch``, ``install -m 644 /dev/null``, by a deploy script
    or a unit's ``ExecStartPre``): SQLite makes it a new database, so it is as new as one made here. Made private
    before SQLite opens it, with nothing said (it holds nothing yet; warned, it read as an old release's file,
    its -wal and -shm, which SQLite makes with its mode, each a WARNING of their own). Found by its size, never
    opened (see ``create_private``). Another user's, which cannot be changed, is left to ``_make_private``."""
    try:
        if path.stat().st_size:
            return False
        path.chmod(0o600)
    except PermissionError:
        return False
    return True


def _make_private(path: Path) -> None:
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = file.stat().st_mode & 0o777
            if mode & 0o077:
                file.chmod(mode & 0o700)
                logger.warning("{} was readable by others ({:o}): made readable by its owner alone ({:o})", file,
                               mode, mode & 0o700)
        except FileNotFoundError:
            continue
        except PermissionError as e:  # another user's file: say so, and serve on
            logger.warning("{} is readable by others and could not be made private: {}", file, e)


def expiring_table(name: str, *, index: str, on: str) -> str:
    """The schema of a table of JSON records by id, each an API key's and each expiring (sessions, stored
    responses), with one index (named ``index``, on column ``on``) for the lookups it serves."""
    return f"""
CREATE TABLE IF NOT EXISTS {name} (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {index} ON {name} ({on});
"""


def add_columns(db: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Bring a table made by an earlier release up to date: ``columns`` (name: type) it lacks are added (the
    workers of one API may race to do it: the loser finds the column there)."""
    have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have:
            try:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as e:
                if "duplicate column" not in str(e):
                    raise


@contextlib.contextmanager
def sqlite_errors(label: str = "sqlite") -> Iterator[None]:
    """Every SQLite failure becomes StoreUnavailable: callers answer 503, never let a request through."""
    try:
        yield
    except sqlite3.Error as e:
        raise StoreUnavailable(f"{label}: {e}") from e


def write_tx(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], label: str = "sqlite") -> T:
    """``fn`` in one write transaction (``BEGIN IMMEDIATE``: workers on the file serialise on its write lock). A
    file that cannot grow (a full disk, ``max_page_count``) makes SQLite roll the transaction back itself: a
    ROLLBACK then raised "cannot rollback - no transaction is active", which hid "database or disk is full" from
    the 503's log line. A COMMIT that fails leaves no transaction open either: the connection's next call would
    refuse to begin one, for good."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return out
    except sqlite3.Error as e:
        raise StoreUnavailable(f"{label}: {e}") from e


class SQLiteTables:
    label = "sqlite"

    def __init__(self, path: str | Path, schema: str, *, synchronous: str = "NORMAL",
                 migrate: Callable[[sqlite3.Connection], None] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = open_db(self.path, synchronous=synchronous, schema=schema, migrate=migrate)
        self._next_reclaim = 0.0  # per instance (per worker): when a delete next gives free pages back

    def _tx(self, fn: Callable[[sqlite3.Connection], T], db: sqlite3.Connection | None = None) -> T:
        """``fn`` in one write transaction (``write_tx``) on this store's connection, or on ``db``: another
        connection to this file, with its own ``synchronous``."""
        return write_tx(self._db if db is None else db, fn, self.label)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.label}: {e}") from e

    def _reclaim(self) -> int:
        """``reclaim`` on this store's connection; a refusal (another worker's write lock held past the busy
        timeout) is left to the next pass (0): the write that called it succeeded, and must not fail."""
        try:
            return reclaim(self._db)
        except sqlite3.Error as e:
            logger.debug("{}: free pages not given back this time: {}", self.label, e)
            return 0

    def _reclaim_now_and_then(self) -> None:
        """After deletes: a backlog worked off (up to thousands of payloads, each a whole prompt and answer)
        left its pages free in the file for good. A bounded part is given back, at most once a
        ``RECLAIM_AGAIN_S`` (two pragma reads when there is nothing to give)."""
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + RECLAIM_AGAIN_S
            self._reclaim()

    def _close_db(self) -> None:
        self._db.close()
