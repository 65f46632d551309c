"""``sn1 api``: one worker (``api.worker``) in this process, or, with ``WORKERS > 1``, a supervisor that checks
the settings every worker needs (the hotkey, the store, the port) and then spawns that many workers, which
share the port through SO_REUSEPORT; each runs its own uvloop and connection pool, and all of them share keys and
limits through the store.

The supervisor never imports the app nor the SDK (``bittensor``): both cost ~1 s of CPU, which each worker pays
again, and a supervisor that paid it first delayed every start and restart by as much. Its imports here are the
few its checks need; the app is imported where a worker runs (``_worker_entry``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from api.supervisor import Supervisor
from shared.aio import within
from shared.listen import bound_socket
from shared.logging import setup_logging
from shared.metrics_dir import shared_metrics_dir
from shared.process import run
from shared.settings import SettingsError, mask_credentials
from shared.store import open_store
from shared.store.base import STORE_START_SECONDS, RedisLinks, Store, StoreUnavailable, is_redis
from shared.store.eviction import UNKNOWN, eviction_detail, eviction_risk
from shared.store.marker import MarkerWatch, Said
from shared.store.persistence import persistence_risk
from shared.store.sqlite import sqlite_path
from shared.store.sqlite_tables import unreclaimed, why_not_opened

if TYPE_CHECKING:
    from shared.settings import ApiSettings

LISTEN = "API_HOST/API_PORT"  # the settings a "cannot listen" start error names


async def reach_store(url: str, namespace: str, *, links: RedisLinks | None = None,
                      fleet: bool = False) -> Said | None:
    """A Redis ``STORE_URL`` is asked for a PING at start (opening it does no I/O), on ``links``: one worker's own,
    which it then serves with; without them (the ``WORKERS`` > 1 supervisor's check), on a client of its own named
    ``sn1-api-<pid>-check``, closed after (unnamed, it stood out in Redis's ``CLIENT LIST``). One that refuses us
    (a wrong password, a database index out of range) is a setting to fix: the start stops with one line; so is a
    server there that is no Redis (an HTTP port: it was "cannot reach", and the API answered 503 for good).
    One that does not answer (down, or not up yet after a reboot) is a WARNING, and the API starts: it
    answers 503 until Redis does, and ``/ready`` says why, then recovers by itself (stopping instead made
    pm2 give up after ``max_restarts`` and left the API down once Redis was back). One that answers but refuses
    writes (out of memory, a read-only replica) is the WARNING too. A SQLite file is opened, hence checked, where it
    is built; here it is only read for whether it gives freed space back.

    ``fleet``: the ``WORKERS`` > 1 supervisor's check, which also says "a new, empty key store", or that the store
    lost its data, once for all its workers (each said it); what it said (``Said``), for the workers to say none of
    it again, or None when the store did not answer (``worker_said``)."""
    if url.startswith("sqlite:///"):
        _warn_unreclaimed(sqlite_path(url))
        if fleet and not sqlite_path(url).exists():  # made here: one that cannot be is its error alone, once
            await _create_sqlite(url)
            warn_new_sqlite(sqlite_path(url))
    if not is_redis(url):
        return Said(new=True)
    store = open_store(url, namespace=namespace, links=links, name=f"sn1-api-{os.getpid()}-check")
    try:
        await within(store.ping(), STORE_START_SECONDS)
    except (StoreUnavailable, TimeoutError, OSError) as e:
        reason = str(e) or f"no answer within {STORE_START_SECONDS:g} s"
        if (wrong := await _wrong_setting(url, e, reason)) is not None:
            raise wrong from None
        logger.warning("STORE_URL: cannot reach {}: {}; starting anyway, requests answer 503 until it answers",
                       mask_credentials(url), reason)
        return None
    else:
        await _warn_eviction(store)
        await _warn_persistence(store)
        if fleet:  # a store that stops answering here is read by the workers' periodic work, as any outage
            watch = MarkerWatch()
            with contextlib.suppress(StoreUnavailable, TimeoutError, OSError):
                await within(watch.check(store), STORE_START_SECONDS)
            return Said(new=True, lost_since=watch.lost.since if watch.lost is not None else None)
        return Said(new=True)
    finally:
        await store.close()


async def _wrong_setting(url: str, failed: BaseException, reason: str) -> SettingsError | None:
    """What a Redis ``STORE_URL`` whose PING ``failed`` (``reason``: why, in words) says is a setting to fix, for the
    start to stop on; None for an outage, which passes by itself (the start goes on, and the API answers 503)."""
    from redis.exceptions import (  # here: a SQLite API never loads redis (9 MB)
        AuthenticationError,
        InvalidResponse,
        OutOfMemoryError,
        ReadOnlyError,
        ResponseError,
    )

    # Out of memory or a read-only replica (the ping writes) pass with time, as an outage does: not a setting.
    refused = isinstance(failed.__cause__, AuthenticationError | ResponseError)
    if refused and not isinstance(failed.__cause__, OutOfMemoryError | ReadOnlyError):
        return SettingsError(f"STORE_URL: {mask_credentials(url)} refused us: {reason}")
    if isinstance(failed.__cause__, InvalidResponse):  # something answers there, and it is no Redis: it never will be
        return SettingsError(f"STORE_URL: {mask_credentials(url)} answers, but not as a Redis server does ({reason}): "
                             "is that the Redis's host and port (6379 by default), not another server's (the "
                             "validator's 8094, an HTTP proxy)? rediss:// for a Redis that takes TLS only")
    if url.startswith("rediss://") and await _plain_redis_at(url):
        return SettingsError(f"STORE_URL: {mask_credentials(url)} asks for TLS, and the Redis there answers "
                             "without it: write redis://, or turn TLS on in that Redis")
    return None


async def _create_sqlite(url: str) -> None:
    """A fleet's new SQLite file, made by its supervisor before the workers start: they each made it, and the
    supervisor's "was created there" came before their "cannot open" for a directory that could not be made."""
    try:
        await open_store(url).close()
    except (OSError, sqlite3.Error, StoreUnavailable) as e:
        raise cannot_open(url, e) from None


def cannot_open(url: str, e: BaseException) -> SettingsError:
    """STORE_URL's one line for a store a start could not open, with what to fix in a SQLite file's case."""
    hint = why_not_opened(sqlite_path(url), e) if not is_redis(url) else ""
    return SettingsError(f"STORE_URL: cannot open {mask_credentials(url)}: {e}{hint}")


def worker_said(said: Said | None, worker: int) -> Said:
    """What a fleet's worker number ``worker`` leaves unsaid: what the supervisor said, or, when the store did not
    answer it, "a new, empty key store" for every worker but the first (each said it once Redis answered)."""
    return said if said is not None else Said(new=worker > 0)


def warn_new_sqlite(path: Path) -> None:
    """A first start, or a mistyped path: every existing key would answer 401, said once (by the process about to
    create the file, or by a fleet's supervisor before its workers do)."""
    logger.warning("STORE_URL: {} did not exist; a new, empty key store was created there{}", path.resolve(),
                   "" if path.is_absolute() else " (sqlite:/// takes a path from the working directory; an "
                                                 "absolute one takes four slashes: sqlite:////var/lib/...)")


async def _plain_redis_at(url: str) -> bool:
    """Whether a Redis without TLS answers at ``url``'s host and port: a TLS handshake with one hangs (it waits for
    a command's end of line) until the connect timeout, which looked like an outage to wait out (a 503 for good)."""
    from yarl import URL

    where = URL(url)
    try:
        reader, writer = await within(asyncio.open_connection(where.host or "127.0.0.1", where.port or 6379), 2.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"PING\r\n")
        first = await within(reader.read(16), 2.0)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    return first.startswith((b"+PONG", b"-NOAUTH", b"-ERR", b"-WRONGPASS"))


async def _warn_eviction(store: Store) -> None:
    """A Redis whose ``maxmemory-policy`` can evict keys this node needs: one WARNING at start (``/ready`` warns
    of it too); a Redis that refuses CONFIG GET, one INFO line saying the policy could not be checked."""
    with contextlib.suppress(StoreUnavailable, TimeoutError, OSError):  # it answered the ping: a blip, no more
        policy = await within(store.eviction_policy(), STORE_START_SECONDS)
        if policy is not None and eviction_risk(policy) is not None:
            logger.warning("STORE_URL: {} (GET /ready warns of it too)", eviction_detail(policy))
        elif policy == UNKNOWN:
            logger.info("STORE_URL: {}", eviction_detail(policy))


async def _warn_persistence(store: Store) -> None:
    """A Redis that keeps its data in memory only, or in snapshots alone: a restart of it loses API keys (every one,
    or those made since its last snapshot), and their callers told the operator, by 401s. One WARNING at start; a
    Redis that refuses CONFIG GET (a managed one, which persists as its console says) is not told."""
    with contextlib.suppress(StoreUnavailable, TimeoutError, OSError):  # it answered the ping: a blip, no more
        got = await within(store.persistence(), STORE_START_SECONDS)
        if got is not None and (risk := persistence_risk(got)) is not None:
            logger.warning("STORE_URL: this Redis {}", risk)


def _warn_unreclaimed(path: Path) -> None:
    """A SQLite file made before 2026-12-06 keeps its largest size for good (no auto_vacuum): a WARNING at start
    saying so and how to convert it once (``sn1 vacuum``, with the API stopped: the API never rewrites a whole
    file itself, as that holds the write lock of every worker for as long as it takes)."""
    try:
        free = unreclaimed(path) if path.is_file() else None
    except (sqlite3.Error, OSError):  # not a database, or not this user's to reach: build_context says so, in
        return  # STORE_URL's words (what to fix: ``why_not_opened``)
    if free is not None:
        logger.warning("STORE_URL: {} was made before 2026-12-06: it never gives back the space of expired or "
                       "deleted rows ({:.1f} MiB free inside it now, reused but kept on disk). Stop the API and "
                       "run `sn1 vacuum {}` once to shrink it and have it give freed space back from then on",
                       path, free / (1 << 20), path)


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or ``taskset``'s share), not the host's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def warn_workers_above_cores(workers: int) -> None:
    """More workers than cores serve nothing faster: they take turns on the cores, each with its own memory,
    connection pools and store connections. Said once at start (not refused: a host may be shared on purpose)."""
    if workers > (cores := usable_cores()):
        logger.warning("WORKERS={} is above the {} CPU core(s) this API may run on: the workers take turns on "
                       "them and serve nothing faster (each costs memory and connections); set WORKERS={} at most",
                       workers, cores, cores)


def run_api(settings: ApiSettings, hotkey: Any | None = None) -> None:
    """``hotkey``: the keypair ``sn1`` read at start (``check_hotkey``, before forking: a bad key stops the start
    once, not in every worker); one worker signs with it, a fleet's workers each read the file once."""
    if settings.workers == 1:
        from api.worker import serve_worker

        run(lambda: serve_worker(settings, reuse_port=False, hotkey=hotkey))
        return
    setup_logging(settings.log_level, role="api")
    warn_workers_above_cores(settings.workers)
    # The workers share the port with SO_REUSEPORT, and so would another API's workers (a copy still
    # running, pm2 and systemd both starting it): a plain bind first tells a port in use, once; before the
    # store's check, as one worker binds first, so that a start that cannot listen says that first and alone.
    bound_socket(settings.api_host, settings.api_port, settings=LISTEN).close()
    # a refusal: one line, before the workers
    said = run(lambda: reach_store(settings.store_url, settings.store_namespace, fleet=True))
    metrics_dir = shared_metrics_dir()
    mp = multiprocessing.get_context("spawn")
    workers = [mp.Process(target=_worker_entry, args=(settings, os.getpid(), worker_said(said, i), i), daemon=False)
               for i in range(settings.workers)]
    logger.info("api supervisor starting {} workers on port {}", len(workers), settings.api_port)
    try:
        status = Supervisor(workers).run()
        # here, once the workers are gone: only they record metrics, and a supervisor need not load it to start
        from prometheus_client import multiprocess

        for w in workers:
            multiprocess.mark_process_dead(w.pid)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if status:
        sys.exit(status)


def _worker_entry(settings: ApiSettings, supervisor: int, said: Said, worker: int) -> None:
    """A spawned worker's target (number ``worker``, 0 the first): it, not the supervisor, imports the app."""
    from api.worker import worker_main

    worker_main(settings, supervisor, said, worker)
