"""The API application factory and its routes table."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from aiohttp import web

from api import (
    completions,
    conversations,
    keys,
    miner_availabilities,
    ops,
    responses,
    responses_background,
    sessions,
    usage,
    web_retrieval,
)
from api.access_log import access_log_middleware
from api.auth import INVALID_KEY_LIMIT, STORE_OUTAGE, add_rate_limit_headers, store_outage_log
from api.chat import CTX, chat_completions
from api.concurrency import LIMITER, ConcurrencyLimiter, holder_name, renewing
from api.context import ApiContext
from api.cors import install_cors
from api.fanout import ping
from api.miner_health import MinerHealth, probe_forever
from api.request_shape import NO_BODY_POSTS, request_shape_middleware
from api.storage_budget import StorageBudget
from shared.client_address import PEERS_TOLD, TRUSTED_PROXIES, parse_networks
from shared.connections import cut_now
from shared.http import NOT_SERVED_HERE, error_middleware, json_response
from shared.ids import random_hex
from shared.metagraph import Neuron
from shared.protocol import DEFAULT_TASK
from shared.store.usage import UsageRecorder

# OpenAI's endpoints on paths this API serves otherwise: its token counting and compaction of responses, and its
# stored chat completions (a chat completion is not kept here: a stored response, ``/v1/responses``, is)
OPENAI_ONLY = frozenset({"POST /v1/responses/input_tokens", "POST /v1/responses/compact", "GET /v1/chat/completions"})
# The POST routes that take no parameters: a body holding anything is refused as unread (``api.request_shape``),
# as on every GET and DELETE. The OpenAI SDKs send none on ``responses.cancel``.
NO_BODY_ROUTES = frozenset({"POST /v1/responses/{response_id}/cancel", "POST /v1/sessions/{session_id}/ping",
                            "POST /api_management/rotate-api-key/{api_key}"})


def create_api_app(ctx: ApiContext, *, run_background: bool = True) -> web.Application:
    """The API over ``ctx``, in steps whose order counts: what its handlers read from the app, its routes, the parts
    of ``ctx`` a caller may leave out (a test's), the keys' concurrency limiter, then its hooks and background work
    (CORS after every route and every hook that adds a header). ``run_background``: the metagraph, availability,
    outbox and probe loops (a test's app runs without)."""
    app = web.Application(middlewares=[access_log_middleware, error_middleware, request_shape_middleware],
                          client_max_size=ctx.settings.max_body_bytes)
    _share(app, ctx)
    _add_routes(app, ctx)
    _fill_in(ctx)
    ctx.usage.token_sinks.append(app[ops.METRICS].count_tokens)  # sn1_api_tokens_total: the tokens as charged
    app[LIMITER] = ConcurrencyLimiter(ctx.store.inflight(), ctx.settings.max_concurrent_requests_per_key,
                                      lease_s=ctx.settings.concurrency_lease_seconds, holder=holder_name())
    _add_hooks(app, ctx, run_background=run_background)
    return app


def _share(app: web.Application, ctx: ApiContext) -> None:
    """What the handlers and middlewares read from the app: the context, and the settings they go by."""
    app[CTX] = ctx
    app[INVALID_KEY_LIMIT] = ctx.settings.invalid_keys_per_minute
    app[STORE_OUTAGE] = store_outage_log()
    app[NOT_SERVED_HERE] = OPENAI_ONLY
    app[NO_BODY_POSTS] = NO_BODY_ROUTES
    app[TRUSTED_PROXIES] = parse_networks(ctx.settings.trusted_proxies)
    app[PEERS_TOLD] = set()


def _add_routes(app: web.Application, ctx: ApiContext) -> None:
    """The routes table: OpenAI's endpoints, the subnet's original API's, the admin API, operations (``ops``) and
    sessions."""
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions.completions)
    app.router.add_post("/v1/responses", responses.create_response)
    app.router.add_get("/v1/responses/{response_id}", responses.get_response)
    app.router.add_delete("/v1/responses/{response_id}", responses.delete_response)
    app.router.add_post("/v1/responses/{response_id}/cancel", responses.cancel_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", responses.list_input_items)
    conversations.install(app)
    # no HEAD: its GET asks miners (a search, scored), whose work a HEAD would throw away (a 405 naming GET, POST)
    app.router.add_get("/web_retrieval", web_retrieval.web_retrieval, allow_head=False)
    app.router.add_post("/web_retrieval", web_retrieval.web_retrieval)
    app.router.add_post("/miner_availabilities/miner_availabilities", miner_availabilities.miner_availabilities)
    app.router.add_get("/miner_availabilities/get_available_miners", miner_availabilities.get_available_miners)
    app.router.add_post("/api_management/create-api-key/", keys.create_api_key)
    app.router.add_post("/api_management/create-api-key", keys.create_api_key)
    app.router.add_put("/api_management/modify-api-key/{api_key}", keys.modify_api_key)
    app.router.add_post("/api_management/rotate-api-key/{api_key}", keys.rotate_api_key)
    app.router.add_post("/api_management/import-api-keys", keys.import_api_keys)
    app.router.add_delete("/api_management/delete-api-key/{api_key}", keys.delete_api_key)
    app.router.add_get("/api_management/api-keys", keys.list_api_keys)
    app.router.add_get("/api_management/api-keys/{api_key}/usage", keys.api_key_usage)
    app.router.add_get("/v1/usage", usage.get_usage)
    ops.install(app, ctx)  # /v1/models, /v1/tasks, /ready, /metrics, /openapi.json, /docs; request metrics
    app.router.add_post("/v1/sessions", sessions.open_session)
    app.router.add_get("/v1/sessions", sessions.get_session)
    app.router.add_delete("/v1/sessions/{session_id}", sessions.delete_session)
    app.router.add_post("/v1/sessions/{session_id}/ping", sessions.ping_session)


def _fill_in(ctx: ApiContext) -> None:
    """The parts of ``ctx`` its maker may leave None (a test's): each made from the settings and the store."""
    if ctx.miner_health is None:
        settings = ctx.settings
        ctx.miner_health = MinerHealth(settings.miner_failures_to_set_aside, settings.miner_cooldown_seconds,
                                       settings.miner_max_cooldown_seconds)
    if ctx.usage is None:
        ctx.usage = UsageRecorder(ctx.store)
    if ctx.storage_budget is None:
        ctx.storage_budget = StorageBudget(ctx.store, ctx.settings.stored_bytes_per_key_per_day, ctx.usage.clock)


def _add_hooks(app: web.Application, ctx: ApiContext, *, run_background: bool) -> None:
    """What runs around the requests: the headers added to each response, CORS, and the work at start and at
    shutdown, in the order it must run."""
    app.on_response_prepare.append(add_rate_limit_headers)  # x-ratelimit-* on every charged response
    app.on_response_prepare.append(usage.count_response)
    install_cors(app, ctx.settings.cors_origins)  # after every route, and after the hooks that add headers
    app.on_shutdown.append(_stopping)
    app.cleanup_ctx.append(usage.usage_flusher)  # always: the last flush at shutdown must happen
    app.cleanup_ctx.append(renewing)  # always: a stream longer than a lease keeps its slot
    if run_background:
        app.cleanup_ctx.append(_background)
    # last in, first out: the final lines go out once the background responses are settled (their turns' lines are
    # written then: flushed before, they were lost), and before the rest of the cleanup
    app.cleanup_ctx.append(_flush_request_log)
    app.cleanup_ctx.append(_settle_in_flight)  # exits before _background: payloads in before the outbox closes


async def _background(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    tasks = [asyncio.create_task(ctx.metagraph.run())]
    if ctx.availability is not None:
        tasks.append(asyncio.create_task(ctx.availability.run()))
    if ctx.forwarder is not None:
        tasks.append(asyncio.create_task(ctx.forwarder.run()))
    if ctx.sessions is not None:
        tasks.append(asyncio.create_task(sessions.sweep_loop(ctx, ctx.settings.availability_refresh_seconds)))
    tasks.append(asyncio.create_task(ops.sample_forever(ctx, app[ops.METRICS])))
    tasks.append(asyncio.create_task(probe_set_aside(ctx)))
    yield
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


PROBE_SECONDS = 10.0  # a probe's deadline: one token (a session's ping has as long)


async def probe_set_aside(ctx: ApiContext) -> None:
    """Probe each miner set aside once its cooldown is over: a one-token completion, not scored, whose answer
    puts it back in rotation (``MinerHealth``). Runs whether or not callers come: a load balancer that took this
    host out of rotation on ``/ready`` sends none, and the host must find its miners answering by itself."""
    def probe(neuron: Neuron) -> asyncio.Future[object]:
        return ctx.spawn(ping(ctx, neuron, PROBE_SECONDS, f"probe-{random_hex()}", task=DEFAULT_TASK))

    assert ctx.miner_health is not None, "create_api_app sets it"
    await probe_forever(ctx.miner_health, lambda uid: ctx.metagraph.snapshot.by_uid(uid), probe)


async def _stopping(app: web.Application) -> None:
    """``on_shutdown``: the stop signal came, the port is closed, and the requests in flight have 5 s before aiohttp
    cuts them; a request cut from now on is logged ``status=shut_down`` (``logged_outcome``). The callers following
    a background response are cut now, each told where to resume (``responses_background.stopped_following``): the
    response goes on without them, and they waited out the 5 s for nothing, then were told the same."""
    ctx = app[CTX]
    ctx.stopping, ctx.stopped_at = True, time.monotonic()
    for request in list(ctx.followers.values()):
        cut_now(request)


async def _flush_request_log(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the access log's queued lines are written at shutdown."""
    yield
    app[CTX].request_log.flush()


async def _settle_in_flight(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``, after the last handler ended (aiohttp runs ``on_shutdown`` before in-flight
    requests finish, so their settle tasks started after it): stop the miners still answering answered
    requests and let each race store its payload (``fanout._deliver_when_finished``) before the
    forwarder's last commit."""
    yield
    ctx = app[CTX]
    if ctx.running_responses:  # background responses get what a request in flight gets to finish, from the signal
        left = responses_background.SHUTDOWN_GRACE_S - (time.monotonic() - ctx.stopped_at)
        await asyncio.wait(list(ctx.running_responses.values()), timeout=max(left, 0.0))
    for t in list(ctx.background):
        t.cancel()
    await asyncio.gather(*ctx.background, return_exceptions=True)


async def health(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    snap = ctx.metagraph.snapshot
    return json_response({"status": "ok", "hotkey": ctx.client.signer.hotkey, "neurons": len(snap.neurons),
                          "serving": len(snap.serving(exclude_hotkey=ctx.client.signer.hotkey))})
