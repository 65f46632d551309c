"""``sn1 backup``: a running API's SQLite key store copied whole, and put back by the README's restore steps."""

from __future__ import annotations

import re
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from shared.cli import main
from shared.store.base import hash_key
from shared.store.sqlite import SQLiteStore


def _sn1(*argv: str) -> str | int | None:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return done.value.code


async def test_a_running_apis_store_is_backed_up_whole_and_restored(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The keys of a store an API has open live in its -wal file: ``cp api.db`` copied none of them (the copy had
    no table at all), ``sn1 backup`` copies them all, says how many, and the copy put in the store's place (the
    old file and its -wal and -shm removed) serves the same secrets."""
    live = tmp_path / "state" / "api.db"
    store = SQLiteStore(live)  # the API, running: nothing checkpointed into api.db yet
    try:
        secrets = [(await store.create_key(60, name=f"team-{i}"))[0] for i in range(3)]
        shutil.copyfile(live, tmp_path / "cp.db")
        cp = sqlite3.connect(tmp_path / "cp.db")
        assert cp.execute("SELECT count(*) FROM sqlite_master WHERE name = 'api_keys'").fetchone() == (0,)
        cp.close()

        backups = tmp_path / "backups"
        backups.mkdir()
        assert _sn1("backup", f"sqlite:///{live}", str(backups)) is None  # the STORE_URL, into a directory
        said = capsys.readouterr().out.strip()
        assert re.fullmatch(rf"{live} -> {backups / 'api.db'}: \d+ KiB, 3 API key\(s\)", said), said
        await store.create_key(60, name="after the backup")
    finally:
        await store.close()

    _restore(backups / "api.db", live)
    restored = SQLiteStore(live)
    try:
        assert [(await restored.get_key(hash_key(s))).name for s in secrets] == ["team-0", "team-1", "team-2"]
        assert len(await restored.list_keys()) == 3
    finally:
        await restored.close()


def _restore(copy: Path, live: Path) -> None:
    """The README's restore, the API stopped: the store file and its -wal and -shm removed, the copy put there."""
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600  # users' prompts and answers: its owner's alone
    assert not Path(f"{copy}-wal").exists()  # one file, nothing to carry beside it
    for name in ("api.db", "api.db-wal", "api.db-shm"):
        (live.parent / name).unlink(missing_ok=True)
    shutil.copyfile(copy, live)


def test_what_sn1_backup_refuses_it_says_in_one_line(tmp_path: Path) -> None:
    """Never a traceback, never an overwritten file, never a Redis password; a failed copy leaves no file."""
    source = tmp_path / "api.db"
    sqlite3.connect(source).execute("CREATE TABLE api_keys (id TEXT)").connection.close()
    (tmp_path / "old.db").write_text("last week's backup")
    assert _sn1("backup", str(source), str(tmp_path / "old.db")) == (
        f"sn1 backup: {tmp_path / 'old.db'} exists: a backup never overwrites a file, name a new one")
    assert (tmp_path / "old.db").read_text() == "last week's backup"
    assert _sn1("backup", str(tmp_path / "missing.db"), str(tmp_path / "b.db")) == (
        f"sn1 backup: {tmp_path / 'missing.db'}: no such file")
    assert _sn1("backup", str(source), str(tmp_path / "no" / "b.db")) == (
        f"sn1 backup: {tmp_path / 'no' / 'b.db'}: No such file or directory")
    (tmp_path / ".env.api").write_text("ADMIN_KEY=x\n" * 200)
    assert _sn1("backup", str(tmp_path / ".env.api"), str(tmp_path / "b.db")) == (
        f"sn1 backup: {tmp_path / '.env.api'}: file is not a database")
    assert not (tmp_path / "b.db").exists()
    assert _sn1("backup", "sqlite://state/api.db", str(tmp_path / "b.db")) == (
        "sn1 backup: sqlite://state/api.db: not a SQLite URL: write sqlite:///state/api.db (from the working "
        "directory) or sqlite:////state/api.db (from /)")
    said = _sn1("backup", "redis://:hunter2@127.0.0.1:6379/0", str(tmp_path / "b.db"))
    assert isinstance(said, str) and "redis://***@127.0.0.1:6379/0: not a SQLite store" in said
    assert "BGSAVE" in said and "hunter2" not in said


def test_a_backup_never_writes_into_a_file_already_there_even_an_empty_one(tmp_path: Path) -> None:
    """An empty file (or a link to one) at the destination is refused as any file there is, and left as it was:
    taken as a store's file made ahead, it was made 0600 and the copy of every key and stored prompt written into
    it, a file whoever made it owns (root's ``sn1 backup api.db /tmp/api.db`` into another user's empty
    ``/tmp/api.db``: that user could read the copy); a failed copy then removed it."""
    source = tmp_path / "api.db"
    sqlite3.connect(source).execute("CREATE TABLE api_keys (id TEXT)").connection.close()
    empty = tmp_path / "empty.db"
    empty.touch(mode=0o644)
    empty.chmod(0o644)
    (tmp_path / "link.db").symlink_to(empty)
    for dest in (empty, tmp_path / "link.db"):
        assert _sn1("backup", str(source), str(dest)) == (
            f"sn1 backup: {dest} exists: a backup never overwrites a file, name a new one")
        assert empty.stat().st_size == 0 and stat.S_IMODE(empty.stat().st_mode) == 0o644
    (tmp_path / ".env.api").write_text("ADMIN_KEY=x\n" * 200)
    assert _sn1("backup", str(tmp_path / ".env.api"), str(empty)) == (
        f"sn1 backup: {empty} exists: a backup never overwrites a file, name a new one")
    assert empty.exists(), "a failed copy removes only a file it made"


def test_a_store_this_user_cannot_reach_is_said_in_one_line(tmp_path: Path) -> None:
    """An operator running ``sn1 backup`` (or ``sn1 vacuum``) as themselves on a store under a directory only the
    service's user (or root) may enter: the check that the file is there raised its PermissionError, a traceback."""
    # The commands import these when run: here first, where the checkout can be read (the child runs as nobody,
    # who may not read a clone under a 0700 directory, as CI's and mktemp's are).
    import shared.store.sqlite_backup
    import shared.store.sqlite_tables  # noqa: F401
    from tests.helpers import without_access

    state = tmp_path / "state"
    state.mkdir()
    sqlite3.connect(state / "api.db").execute("CREATE TABLE api_keys (id TEXT)").connection.close()
    for command, dest in (("backup", [str(tmp_path / "b.db")]), ("vacuum", [])):
        said = without_access(state, lambda c=command, d=dest: main([c, str(state / "api.db"), *d]))
        assert said == f"SystemExit: sn1 {command}: {state / 'api.db'}: Permission denied", said
