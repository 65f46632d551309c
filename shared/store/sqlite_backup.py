"""``sn1 backup``: a consistent copy of a SQLite file the node writes (the API's key store, the validator's scoring
inbox), taken while the process runs.

Copying the file with ``cp`` is not one: in WAL mode what was written since the last checkpoint lives in the
``-wal`` file beside it, so a running API's ``api.db`` copied alone held no table at all (every key was in its
WAL). SQLite's online backup reads one snapshot through the WAL, in one step: a WAL reader blocks no writer, so
the API serves on meanwhile, and the copy is not restarted by the writes it makes every second.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from shared.store.sqlite_tables import BUSY_TIMEOUT_S, create_private


@dataclass(frozen=True)
class Backup:
    """What a backup wrote: its size, and the API keys in it (None: the file is no key store)."""

    bytes: int
    api_keys: int | None


def backup(source: Path, dest: Path) -> Backup:
    """Copy ``source`` to ``dest`` (a new file, readable by its owner alone, as the store is: it holds users'
    prompts and answers), as one self-contained file (no ``-wal`` beside it) that a restore puts in place as it
    is. ``dest`` is never overwritten (``FileExistsError``), and removed again if the copy fails."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    if not create_private(dest, made_ahead=False):  # an empty file there may be another user's: never written
        raise FileExistsError(f"{dest} exists: a backup never overwrites a file, name a new one")
    try:
        _copy(source, dest)
        return Backup(dest.stat().st_size, _api_keys(dest))
    except BaseException:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise


def _copy(source: Path, dest: Path) -> None:
    src = sqlite3.connect(source, timeout=BUSY_TIMEOUT_S)
    try:
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()  # "file is not a database" before a copy
        out = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(out)  # pages=-1: one step, one snapshot of the source
            out.execute("PRAGMA journal_mode=DELETE")  # one file: no -wal to carry with it
            if (check := out.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
                raise sqlite3.DatabaseError(f"the copy fails SQLite's check: {check}")
        finally:
            out.close()
    finally:
        src.close()


def _api_keys(path: Path) -> int | None:
    db = sqlite3.connect(path)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='api_keys'").fetchone():
            return None
        return int(db.execute("SELECT count(*) FROM api_keys").fetchone()[0])
    finally:
        db.close()
