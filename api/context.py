"""Everything the API's handlers share, built once per process in ``create_api_app``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from api.availability import AvailabilityCache
from api.fleet import Fleet
from api.miner_health import MinerHealth
from api.scoring_outbox import OutboxForwarder
from api.storage_budget import StorageBudget
from shared.connections import ended_by_stop
from shared.metagraph import MetagraphView
from shared.miner_client import MinerClient
from shared.request_log import RequestLog
from shared.settings import ApiSettings
from shared.store.base import Store
from shared.store.conversations import ConversationStore
from shared.store.marker import MarkerWatch
from shared.store.outage import OutageLog
from shared.store.responses import ResponseStore
from shared.store.sessions import SessionStore
from shared.store.usage import UsageRecorder

NO_ANSWER_SETTLE_S = 10.0  # answers for this long after the last request no miner answered: that run is over

PayloadSink = Callable[[dict[str, Any]], None]
"""Takes a settled fan-out's payload; must not block (the outbox sink only queues it for its group commit)."""


@dataclass
class ApiContext:
    settings: ApiSettings
    store: Store
    metagraph: MetagraphView
    client: MinerClient
    availability: AvailabilityCache | None
    rng: random.Random = field(default_factory=random.Random)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    running_responses: dict[str, asyncio.Task[Any]] = field(default_factory=dict)  # background responses, by id
    response_logs: dict[str, Any] = field(default_factory=dict)  # the events of those streamed (EventLog), by id
    background_owners: dict[str, str] = field(default_factory=dict)  # the API key of each, by id
    payload_sinks: list[PayloadSink] = field(default_factory=list)
    forwarder: OutboxForwarder | None = None
    # the miners failing this process's requests, set aside until a probe finds them answering (create_api_app)
    miner_health: MinerHealth | None = None
    usage: UsageRecorder | None = None  # filled in by create_api_app when not given
    storage_budget: StorageBudget | None = None  # filled in by create_api_app (STORED_BYTES_PER_KEY_PER_DAY)
    sessions: SessionStore | None = None
    responses: ResponseStore | None = None  # None: RESPONSES_RETENTION_SECONDS is 0, nothing is stored
    conversations: ConversationStore | None = None  # None as ``responses``
    request_log: RequestLog = field(default_factory=lambda: RequestLog("api"))  # one INFO line per request
    fleet: Fleet = field(default_factory=Fleet)  # this worker's place among ``WORKERS``: who tells the runs all meet
    stopping: bool = False  # a stop signal came (``on_shutdown``): a request cut from here on is logged ``shut_down``
    stopped_at: float = 0.0  # when it came (``time.monotonic``): background responses get their grace from then
    # the requests relaying a background response's events (``responses_background.stream_log``): a stop cuts them
    # at once, telling each where to resume, as nothing of the response waits on them
    followers: dict[int, web.Request] = field(default_factory=dict)  # by ``id`` (a request is not hashable)
    store_marker: MarkerWatch = field(default_factory=MarkerWatch)  # a Redis that came back empty: /ready, an ERROR
    # answers the store did not take (a full disk refuses them while smaller writes pass): a few lines, not one each
    responses_outage: OutageLog = field(default_factory=lambda: OutageLog("stored responses"))
    # requests that no miner answered validly (every miner down, unreachable or failing): a WARNING with the
    # first one's reasons, a line a minute while they go on, an INFO line once answers come back
    no_answer: OutageLog = field(default_factory=lambda: OutageLog(
        "requests failing, no miner gave a valid answer", back="miners answer again", settle=NO_ANSWER_SETTLE_S))

    def ended_by_stop(self, request: web.Request) -> bool:
        """Whether this process's stop, not its caller, ended ``request`` (cancelled): logged ``shut_down``, not
        ``client_closed``. A caller that leaves during the stop's grace is still one (``ended_by_stop``)."""
        return self.stopping and ended_by_stop(request)

    def attach_forwarder(self, forwarder: OutboxForwarder) -> None:
        """Every settled fan-out's payload goes to the durable outbox; the forwarder delivers it."""
        self.forwarder = forwarder
        self.payload_sinks.append(forwarder.enqueue)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run work that outlives the response (losers' answers, scoring payload, background responses),
        tracked for shutdown."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task


CTX = web.AppKey("api_context", ApiContext)
