"""What ``sn1 localnet`` refuses before it starts anything: a folder another local network runs in, and a
``--store`` nobody answers at. Each is one line on the terminal, with nothing left running."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import IO


class StartCancelled(Exception):
    """Ctrl-C (or SIGTERM) while the network was starting: stop what started, say nothing more."""


def lock_directory(directory: Path) -> IO[str]:
    """Hold ``<directory>/localnet.lock`` for as long as the returned file is open (the kernel lets it go
    with the process, however it ends). A second network in the same folder rewrote the first's metagraph,
    env files and ``localnet.json`` with its own miners' ports: once it stopped, the first answered every
    request ``503 no_miners_available``, for good, and said nothing."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "localnet.lock"
    lock = path.open("a+")  # not inherited by the children (close-on-exec): only this process holds it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise RuntimeError(f"another sn1 localnet is running in {directory}{pid}: stop it, or pick another "
                           "--dir") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def check_store(url: str | None) -> None:
    """A Redis ``--store`` must answer before anything starts. The API starts without it (a fleet's store
    comes back), so the network said "Local subnet is up" and every request, the printed curl line's too,
    answered ``503 store_unavailable``; or, on a new folder, the start ended in "HTTP Error 503"."""
    from shared.store.base import is_redis

    if url and is_redis(url):
        asyncio.run(_ping(url))


async def _ping(url: str) -> None:
    from shared.aio import within
    from shared.settings import mask_credentials
    from shared.store import open_store
    from shared.store.base import STORE_START_SECONDS, StoreUnavailable

    store = open_store(url, name="sn1-localnet-check")
    try:
        await within(store.ping(), STORE_START_SECONDS)
    except (StoreUnavailable, TimeoutError, OSError) as e:
        reason = str(e) or f"no answer within {STORE_START_SECONDS:g} s"
        raise RuntimeError(f"--store {mask_credentials(url)} does not answer ({reason}): start it, or leave "
                           "--store out (a SQLite file in --dir)") from None
    finally:
        await store.close()
