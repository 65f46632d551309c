"""``sn1 api``: build the context once per worker process and serve.

With ``WORKERS > 1`` the parent forks that many workers which share the port
through SO_REUSEPORT; each runs its own uvloop and connection pool, and all of
them share keys and limits through the store.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from loguru import logger
from prometheus_client import multiprocess as prom_multiprocess

from api.app import create_api_app
from api.availability import AvailabilityCache
from api.context import ApiContext
from api.ops import permit_check
from api.scoring_outbox import OutboxForwarder
from api.supervisor import Supervisor
from shared.aio import within
from shared.client_address import parse_networks
from shared.connections import connection_limits
from shared.http import bound_socket, run, serve_until_signal
from shared.logging import setup_logging
from shared.metagraph import MetagraphView
from shared.metrics import MULTIPROC_ENV
from shared.miner_client import MinerClient, make_session
from shared.process import stop_with_parent
from shared.request_log import RequestLog
from shared.settings import ApiSettings, SettingsError, mask_credentials, problem_lines
from shared.signing import Signer
from shared.store import open_store
from shared.store.base import Store, StoreUnavailable
from shared.store.conversations import open_conversations
from shared.store.eviction import UNKNOWN, eviction_detail, eviction_risk
from shared.store.outbox import open_outbox
from shared.store.responses import open_responses
from shared.store.sessions import open_sessions
from shared.store.sqlite import sqlite_path
from shared.store.sqlite_tables import unreclaimed
from shared.wallet import load_hotkey

LISTEN = "API_HOST/API_PORT"  # the settings a "cannot listen" start error names
STORE_START_SECONDS = 5.0  # a Redis this slow to answer one PING at start is as good as down

METRICS_DIR_PREFIX = "sn1-api-metrics-"  # a supervisor's own metrics directory: sn1-api-metrics-<its pid>-<random>


async def build_context(settings: ApiSettings, *, role: str = "api") -> ApiContext:
    hotkey = load_hotkey(settings.wallet_name, settings.wallet_hotkey, settings.wallet_path)
    signer = Signer(hotkey)
    metagraph = MetagraphView.from_settings(settings)
    await metagraph.first_refresh()
    client = MinerClient(make_session(), signer, max_response_bytes=settings.miner_max_response_bytes)
    availability = AvailabilityCache(
        client, settings.validator_api, hotkey.ss58_address,
        refresh_seconds=settings.availability_refresh_seconds, stale_seconds=settings.availability_stale_seconds,
    )
    await availability.refresh()
    new_file = settings.store_url.startswith("sqlite:///") and not sqlite_path(settings.store_url).exists()
    try:  # a SQLite path that cannot be opened: STORE_URL's one line at start, not a traceback
        store = open_store(settings.store_url, namespace=settings.store_namespace)
        sessions = open_sessions(settings.store_url, namespace=settings.store_namespace)
        outbox = open_outbox(settings.store_url, namespace=settings.store_namespace,
                             max_items=settings.outbox_max_items)
        keeping = settings.responses_retention_seconds > 0
        responses = open_responses(settings.store_url, namespace=settings.store_namespace) if keeping else None
        conversations = (open_conversations(settings.store_url, namespace=settings.store_namespace)
                         if keeping else None)
    except (OSError, sqlite3.Error, StoreUnavailable) as e:  # a directory, a file that is not a database
        await client.session.close()
        raise SettingsError(f"STORE_URL: cannot open {mask_credentials(settings.store_url)}: {e}") from None
    if new_file:  # a first start, or a mistyped path: every existing key would answer 401, said once here
        where = sqlite_path(settings.store_url)
        logger.warning("STORE_URL: {} did not exist; a new, empty key store was created there{}", where.resolve(),
                       "" if where.is_absolute() else " (sqlite:/// takes a path from the working directory; an "
                                                      "absolute one takes four slashes: sqlite:////var/lib/...)")
    ctx = ApiContext(settings=settings, store=store, metagraph=metagraph, client=client, availability=availability,
                     sessions=sessions, responses=responses, conversations=conversations,
                     request_log=RequestLog(role, level=settings.log_level))
    await first_marker(ctx)
    if not (permit := permit_check(ctx)).ok:  # the operator's first sign would be its users' 502s
        logger.warning("{} (GET /ready warns of it too)", permit.detail)
    ctx.attach_forwarder(OutboxForwarder(outbox, client, settings.validator_api,
                                         settings.validator_hotkey or hotkey.ss58_address,
                                         lease_seconds=settings.outbox_lease_seconds))
    return ctx


async def first_marker(ctx: ApiContext) -> None:
    """Read the store's marker at start (one holding an earlier release's keys is marked here): a Redis that came
    back empty says so before the first request. One that does not answer is read later, by the periodic work
    (``reach_store`` warned)."""
    with contextlib.suppress(StoreUnavailable, TimeoutError, OSError):
        await within(ctx.store_marker.check(ctx.store), STORE_START_SECONDS)


async def reach_store(url: str, namespace: str) -> None:
    """A Redis ``STORE_URL`` is asked for a PING at start (opening it does no I/O). One that refuses us
    (a wrong password, a database index out of range) is a setting to fix: the start stops with one line.
    One that does not answer (down, or not up yet after a reboot) is a WARNING, and the API starts: it
    answers 503 until Redis does, and ``/ready`` says why, then recovers by itself (stopping instead made
    pm2 give up after ``max_restarts`` and left the API down once Redis was back). One that answers but refuses
    writes (out of memory, a read-only replica) is the WARNING too. A SQLite file is opened, hence checked, where it
    is built; here it is only read for whether it gives freed space back."""
    if url.startswith("sqlite:///"):
        _warn_unreclaimed(sqlite_path(url))
    if not url.startswith(("redis://", "rediss://")):
        return
    from redis.exceptions import (  # here: a SQLite API never loads redis (9 MB)
        AuthenticationError,
        OutOfMemoryError,
        ReadOnlyError,
        ResponseError,
    )

    store = open_store(url, namespace=namespace)
    try:
        await within(store.ping(), STORE_START_SECONDS)
    except (StoreUnavailable, TimeoutError, OSError) as e:
        reason = str(e) or f"no answer within {STORE_START_SECONDS:g} s"
        # Out of memory or a read-only replica (the ping writes) pass with time, as an outage does: not a setting.
        refused = isinstance(e.__cause__, AuthenticationError | ResponseError)
        if refused and not isinstance(e.__cause__, OutOfMemoryError | ReadOnlyError):
            raise SettingsError(f"STORE_URL: {mask_credentials(url)} refused us: {reason}") from None
        logger.warning("STORE_URL: cannot reach {}: {}; starting anyway, requests answer 503 until it answers",
                       mask_credentials(url), reason)
    else:
        await _warn_eviction(store)
    finally:
        await store.close()


async def _warn_eviction(store: Store) -> None:
    """A Redis whose ``maxmemory-policy`` can evict keys this node needs: one WARNING at start (``/ready`` warns
    of it too); a Redis that refuses CONFIG GET, one INFO line saying the policy could not be checked."""
    with contextlib.suppress(StoreUnavailable, TimeoutError, OSError):  # it answered the ping: a blip, no more
        policy = await within(store.eviction_policy(), STORE_START_SECONDS)
        if policy is not None and eviction_risk(policy) is not None:
            logger.warning("STORE_URL: {} (GET /ready warns of it too)", eviction_detail(policy))
        elif policy == UNKNOWN:
            logger.info("STORE_URL: {}", eviction_detail(policy))


def _warn_unreclaimed(path: Path) -> None:
    """A SQLite file made before 2026-12-06 keeps its largest size for good (no auto_vacuum): a WARNING at start
    saying so and how to convert it once (``sn1 vacuum``, with the API stopped: the API never rewrites a whole
    file itself, as that holds the write lock of every worker for as long as it takes)."""
    try:
        free = unreclaimed(path) if path.is_file() else None
    except sqlite3.Error:  # not a database: build_context says so, in STORE_URL's words
        return
    if free is not None:
        logger.warning("STORE_URL: {} was made before 2026-12-06: it never gives back the space of expired or "
                       "deleted rows ({:.1f} MiB free inside it now, reused but kept on disk). Stop the API and "
                       "run `sn1 vacuum {}` once to shrink it and have it give freed space back from then on",
                       path, free / (1 << 20), path)


async def serve_worker(settings: ApiSettings, *, reuse_port: bool) -> None:
    role = f"api[{os.getpid()}]"
    setup_logging(settings.log_level, role=role)
    sock = bound_socket(settings.api_host, settings.api_port, reuse_port=reuse_port, settings=LISTEN)  # a port in use: stop now
    if not reuse_port:  # one worker checks its store here; a fleet's supervisor checked it once for all
        await reach_store(settings.store_url, settings.store_namespace)
    ctx = await build_context(settings, role=role)
    app = create_api_app(ctx)

    async def close(_app) -> None:
        await ctx.client.session.close()
        await ctx.store.close()
        if ctx.forwarder is not None:
            await ctx.forwarder.outbox.close()
        if ctx.sessions is not None:
            await ctx.sessions.aclose()
        if ctx.responses is not None:
            await ctx.responses.aclose()
        if ctx.conversations is not None:
            await ctx.conversations.aclose()

    app.on_cleanup.append(close)
    logger.info(
        "api starting hotkey={} port={} network={} store={} admin={} cors={}",
        ctx.client.signer.hotkey, settings.api_port, settings.network_label(),
        settings.store_url.split("://")[0], "enabled" if settings.admin_key else "disabled",
        ",".join(settings.cors_origins) or "off",
    )
    limits = connection_limits(settings, parse_networks(settings.trusted_proxies))
    await serve_until_signal(app, settings.api_host, settings.api_port, sock=sock, limits=limits)


def _worker_entry(settings: ApiSettings, supervisor: int) -> None:
    stop_with_parent(supervisor)  # a supervisor killed outright must not leave its workers serving
    try:
        run(lambda: serve_worker(settings, reuse_port=True))
    except SettingsError as e:  # one line, as with one worker (a spawned process printed its traceback)
        sys.exit(problem_lines("api", e))


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


def run_api(settings: ApiSettings) -> None:
    if settings.workers == 1:
        run(lambda: serve_worker(settings, reuse_port=False))
        return
    setup_logging(settings.log_level, role="api")
    warn_workers_above_cores(settings.workers)
    load_hotkey(settings.wallet_name, settings.wallet_hotkey, settings.wallet_path)  # fail fast, before forking
    run(lambda: reach_store(settings.store_url, settings.store_namespace))  # a refusal: one line, before the workers
    # The workers share the port with SO_REUSEPORT, and so would another API's workers (a copy still
    # running, pm2 and systemd both starting it): a plain bind first tells a port in use, once.
    bound_socket(settings.api_host, settings.api_port, settings=LISTEN).close()
    metrics_dir = shared_metrics_dir()
    mp = multiprocessing.get_context("spawn")
    workers = [mp.Process(target=_worker_entry, args=(settings, os.getpid()), daemon=False)
               for _ in range(settings.workers)]
    logger.info("api supervisor starting {} workers on port {}", len(workers), settings.api_port)
    try:
        status = Supervisor(workers).run()
        for w in workers:
            prom_multiprocess.mark_process_dead(w.pid)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if status:
        sys.exit(status)


def shared_metrics_dir() -> str | None:
    """Workers record metrics in one directory so any worker's ``/metrics`` reports the fleet.

    Set in the environment before the workers are spawned (prometheus_client reads it at
    import). An operator's own ``PROMETHEUS_MULTIPROC_DIR`` is made if missing and cleared of the
    last run's files (prometheus_client's rule: wipe it between runs; left, every restart's
    workers were summed in with the live ones, and a file per dead worker piled up); else a fresh
    temporary one is made, and removed at exit (returned).
    """
    if own := os.environ.get(MULTIPROC_ENV):
        clear_metrics_dir(Path(own))
        return None
    remove_orphan_metrics_dirs(Path(tempfile.gettempdir()))
    path = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")  # its supervisor's pid: see below
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_orphan_metrics_dirs(tmp: Path) -> None:
    """Remove the temporary metrics directories of supervisors that are gone: one killed outright (SIGKILL, the
    OOM killer) never removed its own, and each restart left another in the temporary directory for good. A
    directory's name carries its supervisor's pid; one whose pid still runs (or is another user's) is left."""
    for path in tmp.glob(f"{METRICS_DIR_PREFIX}*"):
        pid = re.match(r"(\d+)-", path.name[len(METRICS_DIR_PREFIX):])
        if pid is not None and not _running(int(pid.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            logger.info("removed {}, the metrics of an API supervisor that is gone (pid {})", path, pid.group(1))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def clear_metrics_dir(path: Path) -> None:
    """Remove prometheus_client's ``*.db`` files from ``path`` (nothing else in it is touched)."""
    path.mkdir(parents=True, exist_ok=True)
    stale = list(path.glob("*.db"))
    for f in stale:
        f.unlink(missing_ok=True)
    if stale:
        logger.info("cleared {} metric files of an earlier run from {}", len(stale), path)
