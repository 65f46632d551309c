"""One API worker: build its context (wallet, metagraph, store, miner client) and serve until a stop signal.

``WORKERS`` = 1 runs this in the one process; above, each worker the supervisor (``api.main``) spawns does, and
only they import the app (~1 s of CPU with the SDK): the supervisor forks them sooner without it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from dataclasses import dataclass
from typing import Any

from loguru import logger

from api.app import create_api_app
from api.availability import AvailabilityCache
from api.context import ApiContext
from api.fleet import Fleet
from api.main import LISTEN, STORE_START_SECONDS, cannot_open, reach_store, warn_new_sqlite
from api.ops import permit_check
from api.scoring_outbox import OutboxForwarder
from shared.aio import within
from shared.client_address import parse_networks
from shared.connections import connection_limits
from shared.http import serve_until_signal
from shared.listen import bound_socket
from shared.logging import setup_logging
from shared.metagraph import MetagraphView
from shared.miner_client import MinerClient, make_session
from shared.process import run, stop_with_parent
from shared.request_log import RequestLog
from shared.settings import ApiSettings, SettingsError, problem_lines
from shared.signing import Signer
from shared.store import open_store
from shared.store.base import RedisLinks, Store, StoreUnavailable, is_redis
from shared.store.conversations import ConversationStore, open_conversations
from shared.store.marker import MarkerWatch, Said
from shared.store.outbox import Outbox, open_outbox
from shared.store.responses import ResponseStore, open_responses
from shared.store.sessions import SessionStore, open_sessions
from shared.store.sqlite import sqlite_path
from shared.wallet import load_hotkey


def redis_links(settings: ApiSettings) -> RedisLinks | None:
    """The worker's two Redis clients for every store on a Redis ``STORE_URL`` (``RedisLinks``: each store had its
    own, five pools a worker), named ``sn1-api-<pid>-keys`` and ``-data`` in Redis's ``CLIENT LIST``; None on
    SQLite."""
    return RedisLinks.open(settings.store_url, name=f"sn1-api-{os.getpid()}") if is_redis(settings.store_url) else None


@dataclass(frozen=True)
class Stores:
    """A worker's five uses of ``STORE_URL``."""

    store: Store
    sessions: SessionStore
    outbox: Outbox
    responses: ResponseStore | None  # None when RESPONSES_RETENTION_SECONDS is 0 (nothing is kept)
    conversations: ConversationStore | None

    async def aclose(self) -> None:
        """Close every store (a worker's at its stop, the soak's at its end: one sequence for both). A Redis link
        they share (``RedisLinks``) is left open: its owner closes it once, after them."""
        await self.store.close()
        await self.outbox.close()
        await self.sessions.aclose()
        for kept in (self.responses, self.conversations):
            if kept is not None:
                await kept.aclose()


def open_stores(settings: ApiSettings, links: RedisLinks | None) -> Stores:
    """Every store of a worker, on its Redis ``links`` (``redis_links``; None on SQLite): no I/O on Redis until the
    first command. One place for it, so that the soak (``scripts/soak.py``) runs the stores a served API runs."""
    url, namespace = settings.store_url, settings.store_namespace
    keeping = settings.responses_retention_seconds > 0
    return Stores(store=open_store(url, namespace=namespace, links=links),
                  sessions=open_sessions(url, namespace=namespace, links=links),
                  outbox=open_outbox(url, namespace=namespace, max_items=settings.outbox_max_items,
                                    max_bytes=settings.outbox_max_bytes, links=links),
                  responses=open_responses(url, namespace=namespace, links=links) if keeping else None,
                  conversations=open_conversations(url, namespace=namespace, links=links) if keeping else None)


async def build_context(settings: ApiSettings, *, role: str = "api", links: RedisLinks | None = None,
                        hotkey: Any | None = None, said: Said | None = None,
                        fleet: Fleet | None = None) -> tuple[ApiContext, Stores]:
    """A worker's context, and the stores it runs on (``Stores.aclose`` at its stop). ``hotkey``: the keypair
    already read (``check_hotkey``), else the worker reads it. ``said``: what a fleet's start said of the store
    (``reach_store``, ``worker_said``): "a new, empty key store", a loss; this worker does not say it again.
    ``fleet``: this worker's place among ``WORKERS`` (``api.fleet``: who tells the runs of failures all meet)."""
    fleet = fleet or Fleet()
    hotkey = load_hotkey(settings.wallet_name, settings.wallet_hotkey, settings.wallet_path, read=hotkey)
    signer = Signer(hotkey)
    metagraph = MetagraphView.from_settings(settings, voice=fleet.voice())
    await metagraph.first_refresh()
    client = MinerClient(make_session(), signer, max_response_bytes=settings.miner_max_response_bytes)
    availability = AvailabilityCache(
        client, settings.validator_api, hotkey.ss58_address,
        refresh_seconds=settings.availability_refresh_seconds, stale_seconds=settings.availability_stale_seconds,
        voice=fleet.voice(),
    )
    await availability.refresh()
    new_file = (settings.store_url.startswith("sqlite:///") and not (said is not None and said.new)
                and not sqlite_path(settings.store_url).exists())
    try:  # a SQLite path that cannot be opened: STORE_URL's one line at start, not a traceback
        stores = open_stores(settings, links)
    except (OSError, sqlite3.Error, StoreUnavailable) as e:  # a directory, a file that is not a database
        await client.session.close()
        raise cannot_open(settings.store_url, e) from None
    if new_file:
        warn_new_sqlite(sqlite_path(settings.store_url))
    ctx = ApiContext(settings=settings, store=stores.store, metagraph=metagraph, client=client,
                     availability=availability, sessions=stores.sessions, responses=stores.responses,
                     conversations=stores.conversations, request_log=RequestLog(role, level=settings.log_level),
                     fleet=fleet)
    ctx.store_marker = MarkerWatch(said, voice=fleet.voice())
    await first_marker(ctx)
    if not (permit := permit_check(ctx)).ok:  # the operator's first sign would be its users' 502s
        logger.warning("{} (GET /ready warns of it too)", permit.detail)
    ctx.attach_forwarder(OutboxForwarder(stores.outbox, client, settings.validator_api,
                                         settings.validator_hotkey or hotkey.ss58_address,
                                         lease_seconds=settings.outbox_lease_seconds,
                                         max_delay=settings.outbox_retry_max_seconds, voice=fleet.voice()))
    return ctx, stores


async def first_marker(ctx: ApiContext) -> None:
    """Read the store's marker at start (one holding an earlier release's keys is marked here): a Redis that came
    back empty says so before the first request. One that does not answer is read later, by the periodic work
    (``reach_store`` warned)."""
    with contextlib.suppress(StoreUnavailable, TimeoutError, OSError):
        await within(ctx.store_marker.check(ctx.store), STORE_START_SECONDS)


async def serve_worker(settings: ApiSettings, *, reuse_port: bool, hotkey: Any | None = None,
                       said: Said | None = None, fleet: Fleet | None = None) -> None:
    role = f"api[{os.getpid()}]"
    setup_logging(settings.log_level, role=role)
    sock = bound_socket(settings.api_host, settings.api_port, reuse_port=reuse_port, settings=LISTEN)  # a port in use: stop now
    links = redis_links(settings)
    try:
        if not reuse_port:  # one worker checks its store here, on its own clients; a fleet's supervisor checked it
            await reach_store(settings.store_url, settings.store_namespace, links=links)
        ctx, stores = await build_context(settings, role=role, links=links, hotkey=hotkey,
                                          said=said, fleet=fleet)
    except BaseException:
        if links is not None:
            await links.aclose()
        raise
    app = create_api_app(ctx)

    async def close(_app) -> None:
        await ctx.client.session.close()
        await stores.aclose()
        if links is not None:  # the stores' clients: theirs to use, the worker's to close
            await links.aclose()

    app.on_cleanup.append(close)
    logger.info(
        "api starting hotkey={} port={} network={} store={} admin={} cors={}",
        ctx.client.signer.hotkey, settings.api_port, settings.network_label(),
        settings.store_url.split("://")[0], "enabled" if settings.admin_key else "disabled",
        ",".join(settings.cors_origins) or "off",
    )
    limits = connection_limits(settings, parse_networks(settings.trusted_proxies))
    await serve_until_signal(app, settings.api_host, settings.api_port, sock=sock, limits=limits)


def worker_main(settings: ApiSettings, supervisor: int, said: Said | None = None, worker: int = 0) -> None:
    """One of a ``WORKERS`` > 1 fleet, spawned by the supervisor (``api.main``): number ``worker`` (0 the first)."""
    stop_with_parent(supervisor)  # a supervisor killed outright must not leave its workers serving
    try:
        run(lambda: serve_worker(settings, reuse_port=True, said=said, fleet=Fleet(worker, settings.workers)))
    except SettingsError as e:  # one line, as with one worker (a spawned process printed its traceback)
        sys.exit(problem_lines("api", e))
