"""The validator's HTTP API: availability for the API processes, organic results in, scores out.

``/health``, ``/ready``, ``/scores`` and ``/miner_availabilities/*`` answer anyone (the
same public information as the metagraph and the weights); ``/scoring`` needs a
btauth/1 signature from an allow-listed API hotkey. Handlers are thin: the
logic lives in the objects of ``ValidatorContext`` and, for ``/scoring``, in ``intake.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from loguru import logger

from neurons.validator.availability import AvailabilityBook
from neurons.validator.inbox import ScoringInbox
from neurons.validator.intake import IntakeRefused, RecentPayloads, take_batch, take_one
from neurons.validator.readiness import ReadinessConfig, readiness
from neurons.validator.reference_status import ReferenceStatus
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring_http import read_batch, read_payload, refusal
from neurons.validator.scoring_queue import ScoringQueue
from shared.availability_query import AVAILABLE_MINERS_QUERY, parse_k, parse_task, read_uid_list
from shared.http import error_middleware, json_response, read_json, refuse_query, request_lines
from shared.metagraph import MetagraphView
from shared.metrics import ValidatorMetrics, metrics_handler, metrics_middleware, show_readiness
from shared.readiness import failing, gauge_age, ready_response
from shared.signing import CALLER_KEY, UNVERIFIED_BODY_BYTES, Authorizer, RequestVerifier, verified_hotkey


def scoring_verifier(self_hotkey: str, api_hotkeys: list[str], *,
                     unverified_body_bytes: int = UNVERIFIED_BODY_BYTES) -> RequestVerifier:
    """Who may sign for this validator: its API processes' hotkeys (``API_HOTKEYS``); permits play no part."""
    return RequestVerifier(self_hotkey, Authorizer(lambda: (), api_hotkeys), unverified_body_bytes=unverified_body_bytes,
                           not_allowed="is not one of API_HOTKEYS, the API hotkeys this validator takes requests from")


# Routes asked over and over (the APIs' availability polls, each worker every few seconds; a Prometheus scrape, a
# supervisor's or balancer's probe): their lines at DEBUG while the answer's status holds.
POLLED = frozenset({"/miner_availabilities/miner_availabilities", "/miner_availabilities/get_available_miners",
                    "/metrics", "/health", "/ready"})


@dataclass
class ValidatorContext:
    book: AvailabilityBook
    scoring_queue: ScoringQueue
    verifier: RequestVerifier
    scores: ScoreBook
    metagraph: MetagraphView
    organic_timeout: float = 30.0
    seen: RecentPayloads = field(default_factory=RecentPayloads)
    # Where accepted payloads are kept until scored (the validator always has one; None: memory only, as a
    # test's context)
    inbox: ScoringInbox | None = None
    # the reference model's calls and last failure since start (``/health``, ``/metrics``)
    reference: ReferenceStatus = field(default_factory=ReferenceStatus)
    # what ``/ready`` measures against (intervals, the weight sink, the start time, the chain's limits)
    readiness: ReadinessConfig = field(default_factory=ReadinessConfig)


CTX = web.AppKey("validator_context", ValidatorContext)


def create_validator_app(
    ctx: ValidatorContext,
    *,
    background: list[Callable[[], Awaitable[Any]]] | None = None,
    max_body_bytes: int = 16 << 20,
    metrics: ValidatorMetrics | None = None,
) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=max_body_bytes)
    app[CTX] = ctx
    metrics = metrics or ValidatorMetrics()
    # a line per request, with the status the caller got; the APIs' availability polls at DEBUG while nothing changes
    app.middlewares.insert(0, request_lines("validator", verified_hotkey, POLLED))
    app.middlewares.insert(0, metrics_middleware(metrics.http))  # outermost: sees the final status
    app.router.add_get("/metrics", metrics_handler(metrics.registry, lambda: _sample(ctx, metrics)))
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/scores", scores)
    app.router.add_post("/miner_availabilities/miner_availabilities", miner_availabilities)
    app.router.add_get("/miner_availabilities/get_available_miners", get_available_miners)
    app.router.add_post("/scoring", scoring)
    if background:
        app.cleanup_ctx.append(_run_background(background))
    app.on_cleanup.append(_save_scores)  # after the loops stop (cleanup contexts run first)
    app.on_cleanup.append(_close_inbox)
    return app


async def _close_inbox(app: web.Application) -> None:
    """Shutdown, once the loops stopped: what the queue still held stays in the file for the next start."""
    inbox = app[CTX].inbox
    if inbox is not None:
        await inbox.close()


async def _save_scores(app: web.Application) -> None:
    """Shutdown: the scores as the stopped loops left them reach the disk (``ScoreBook.flush``)."""
    scores = app[CTX].scores
    if scores.path is None:
        return
    try:
        await scores.flush()
    except OSError as e:  # logged, not raised: the cleanups after this one (chain client, sessions) must run
        logger.error("scores not saved at shutdown to {}: {}", scores.path, e)
        return
    logger.info("scores saved for {} uids to {}", len(scores.miners), scores.path)


def _run_background(factories: list[Callable[[], Awaitable[Any]]]):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.ensure_future(f()) for f in factories]
        for t in tasks:
            if isinstance(t, asyncio.Task):  # named after its function (``scoring_worker``); ``every`` names its loop
                t.set_name(getattr(t.get_coro(), "__name__", t.get_name()))
            t.add_done_callback(say_stopped)
        yield
        for t in tasks:
            t.remove_done_callback(say_stopped)  # stopped by the shutdown: nothing to say
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return ctx


def say_stopped(task: asyncio.Future[Any]) -> None:
    """An ERROR, with its traceback, for a loop that ended by itself while the validator serves. Each loop catches
    its cycles' failures, so one that ends is a validator bug; its exception was read only at shutdown, by a
    ``gather`` that discarded it, and the validator served on without that loop (no weights set, no availability
    polled) with nothing in the log."""
    if task.cancelled():
        return
    error = task.exception()
    name = task.get_name() if isinstance(task, asyncio.Task) else "a background"
    why = f"{type(error).__name__}: {error}" if error is not None else "it returned"
    logger.opt(exception=error).error("validator: the {} loop stopped ({}): it does not run again until the "
                                      "validator restarts; a validator bug: report it with this traceback", name, why)


async def _sample(ctx: ValidatorContext, metrics: ValidatorMetrics) -> None:
    metrics.scoring_queue_depth.set(ctx.scoring_queue.qsize())
    metrics.scoring_queue_max.set(ctx.scoring_queue.maxsize)
    metrics.synthetic_queue_depth.set(ctx.scoring_queue.synthetic_qsize())
    metrics.scoring_inbox_waiting.set(ctx.inbox.waiting if ctx.inbox is not None else 0)
    metrics.organic_stale_dropped.catch_up(ctx.scoring_queue.stale_dropped)
    metrics.reference_failures.catch_up(ctx.reference.failures)
    metrics.last_weights_set.set(ctx.scores.last_weights_set_at or 0.0)
    metrics.set_miners(ctx.scores.per_uid(ctx.metagraph.snapshot))
    metrics.metagraph_age.set(ctx.metagraph.age_seconds)
    metrics.miners_available.set(sum(1 for e in ctx.book.entries.values() if e))
    metrics.availability_age.set(gauge_age(ctx.book.age()))  # +Inf before the first poll
    out = readiness(ctx)
    show_readiness(metrics.ready, metrics.check_ok, out)


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 when every required check passes, 503 with a reason per failing one (``readiness.py``)."""
    return ready_response(readiness(request.app[CTX]))


async def health(request: web.Request) -> web.Response:
    """Liveness, always a 200: ``status`` is "ok" when ``/ready`` would be a 200, else "degraded", with the
    failing required checks named in ``failing_checks`` (``/ready`` says why)."""
    return json_response(health_body(request.app[CTX]))


def health_body(ctx: ValidatorContext) -> dict[str, Any]:
    """``/health``'s answer, from memory alone: each part's state (``README`` "HTTP API")."""
    not_ready = failing(readiness(ctx))
    return {"status": "degraded" if not_ready else "ok", "failing_checks": not_ready,
            "availability_updated_at": ctx.book.updated_at or None,
            "scoring_queue": ctx.scoring_queue.qsize(),
            "scoring_queue_max": ctx.scoring_queue.maxsize,
            "scoring_queue_bytes": ctx.scoring_queue.organic_bytes,
            "scoring_queue_max_bytes": ctx.scoring_queue.max_bytes,
            "synthetic_queue": ctx.scoring_queue.synthetic_qsize(),
            "synthetic_queue_max": ctx.scoring_queue.synthetic_maxsize,
            "organic_stale_dropped": ctx.scoring_queue.stale_dropped,
            "scoring_inbox_waiting": ctx.inbox.waiting if ctx.inbox is not None else 0,
            "scores_updated_at": ctx.scores.updated_at or None,
            "scores_save_error": ctx.scores.save_error,
            "last_weights_set_at": ctx.scores.last_weights_set_at,
            "weights_not_set": ctx.scores.weights_not_set,
            "metagraph_block": ctx.metagraph.snapshot.block,
            "metagraph_age_seconds": round(ctx.metagraph.age_seconds, 1),
            "reference": ctx.reference.report()}


async def scores(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return json_response(ctx.scores.report(ctx.metagraph.snapshot))


async def miner_availabilities(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return json_response(ctx.book.get(await read_uid_list(request), ctx.metagraph.snapshot))


async def get_available_miners(request: web.Request) -> web.Response:
    q = request.query
    refuse_query(request, AVAILABLE_MINERS_QUERY)
    k = parse_k(q.get("k"))
    ctx = request.app[CTX]
    task = parse_task(q.get("task"), ctx.book.tasks())
    uids = ctx.book.available(task, q.get("model") or None, ctx.metagraph.snapshot)
    return json_response(uids[:k])


async def scoring(request: web.Request) -> web.Response:
    """Organic results: signature first (its headers before the body is read: 400/401/403, 503 when too many
    bodies are being read unverified), then the payload (400), then the queue (503): ``intake.py``, whose refusals
    are answered here alone (``scoring_http.refusal``)."""
    ctx = request.app[CTX]
    request[CALLER_KEY] = await ctx.verifier.read_verified(request)
    data = await read_json(request)
    signer = request[CALLER_KEY].hotkey_ss58
    tasks = ctx.scores.probabilities
    try:
        if isinstance(data, list):
            payloads, rejected = read_batch(data, tasks)
            outcome = await take_batch(ctx, data, payloads, rejected, signer)
            return json_response({"status": "accepted", **dataclasses.asdict(outcome)}, status=202)
        uids = await take_one(ctx, read_payload(data, tasks), signer)
    except IntakeRefused as e:
        raise refusal(e) from None
    return json_response({"status": "accepted", "uids": uids}, status=202)
