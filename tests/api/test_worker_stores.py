"""A worker's stores (``api.worker.Stores``), opened as a served worker opens them and closed by ``Stores.aclose``,
the one close sequence the worker's stop and the soak share: every store lets go of the SQLite file; on Redis the
clients the stores share are left to the worker to close, after them."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest

from api.worker import open_stores, redis_links
from shared.settings import ApiSettings
from tests.store.conftest import redis_url


def handles_on(path: Path) -> int:
    """This process's open file descriptors on the SQLite file ``path`` (its ``-wal`` and ``-shm`` too)."""
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) in names)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd: runs on Linux (CI)")
async def test_a_workers_stores_all_let_go_of_the_sqlite_file(tmp_path: Path) -> None:
    path = (tmp_path / "api.db").resolve()
    settings = ApiSettings(_env_file=None, store_url=f"sqlite:///{path}", responses_retention_seconds=60)
    stores = open_stores(settings, None)
    assert stores.responses is not None and stores.conversations is not None
    await stores.store.create_key(10)
    assert handles_on(path) >= 6  # the key store's two connections, then one per other store
    await stores.aclose()
    assert handles_on(path) == 0


@pytest.mark.redis
async def test_a_workers_stores_close_and_leave_the_shared_redis_clients_open() -> None:
    settings = ApiSettings(_env_file=None, store_url=redis_url(), store_namespace=f"sn1-t-{secrets.token_hex(4)}",
                           responses_retention_seconds=0)
    links = redis_links(settings)
    assert links is not None
    try:
        stores = open_stores(settings, links)
        assert stores.responses is None and stores.conversations is None  # nothing kept: none to close
        await stores.sessions.active()
        await stores.aclose()
        assert await links.data.client.ping() and await links.keys.client.ping()  # the worker's, closed after
    finally:
        await links.aclose()


def test_a_store_in_a_directory_its_user_cannot_enter_is_left_to_the_line_that_says_so(tmp_path: Path) -> None:
    """An API run as a service's user, its STORE_URL file under a directory root made 0700: the start's look at
    whether the file gives freed space back (``reach_store``) raised the PermissionError of its ``is_file``, a
    traceback before the line that says what to fix (``build_context``: the file and its directory must be this
    user's to write). It lets the file be, as it does a file that is no database."""
    import asyncio

    from api.main import reach_store
    from tests.helpers import without_access

    state = tmp_path / "state"
    state.mkdir()
    said = without_access(state, lambda: asyncio.run(reach_store(f"sqlite:///{state / 'api.db'}", "sn1")))
    assert said == "returned", said
