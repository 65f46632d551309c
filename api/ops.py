"""Operations: ``GET /ready`` for load balancers and ``GET /metrics`` for Prometheus.

``/health`` stays a cheap liveness check (the process answers); ``/ready`` says
whether this worker can usefully serve traffic, with a reason per failing
check, and answers 503 when it cannot, so a load balancer takes it out of
rotation. ``install`` wires both, the discovery routes, the API description
and the metrics middleware into an API app (one call in ``create_api_app``).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from loguru import logger

from api import discovery, openapi
from api.availability import AvailabilityCache
from api.chat import CTX
from api.context import ApiContext
from api.miner_health import REASONS, set_aside_message
from shared.aio import within
from shared.connections import on_refusal
from shared.metagraph import Neuron
from shared.metrics import ApiMetrics, count_refusals, metrics_handler, metrics_middleware, show_readiness
from shared.readiness import CheckOut, ReadyOut, gauge_age, ready_out, ready_response
from shared.readiness import metagraph_check as shared_metagraph_check
from shared.store.base import StoreUnavailable
from shared.store.eviction import eviction_detail, eviction_risk

METRICS = web.AppKey("api_metrics", ApiMetrics)
STORE_PING_SECONDS = 2.0


def metagraph_check(ctx: ApiContext) -> CheckOut:
    return shared_metagraph_check(ctx.metagraph, ctx.settings.metagraph_refresh_seconds)


async def store_check(ctx: ApiContext) -> CheckOut:
    """Reachable and taking writes, and (Redis) still holding its data: a Redis that restarted empty answers
    every key 401, and said "reachable" here while the operator learned it from its customers."""
    try:
        await within(ctx.store.ping(), STORE_PING_SECONDS)
        lost = await within(ctx.store_marker.check(ctx.store), STORE_PING_SECONDS)
    except (StoreUnavailable, TimeoutError, OSError) as e:
        return CheckOut(ok=False, detail=f"the key store is unavailable: {store_failure(e)}")
    return CheckOut(ok=False, detail=lost) if lost else CheckOut(ok=True, detail="reachable")


def store_failure(e: BaseException) -> str:
    """What a failed store check met, in a few words: the backend's own error class (``OutOfMemoryError``,
    ``ReadOnlyError``, ``TimeoutError``, ``OperationalError``), never its message (a URL, a key name)."""
    cause = e.__cause__ if isinstance(e, StoreUnavailable) and e.__cause__ is not None else e
    code = getattr(cause, "sqlite_errorname", None)  # SQLITE_READONLY, SQLITE_FULL, SQLITE_BUSY: which one
    return f"{type(cause).__name__} ({code})" if code else type(cause).__name__


def outbox_check(ctx: ApiContext) -> CheckOut:
    """Required: an outbox that refuses commits keeps the organic payloads in memory (up to ``MAX_UNSTORED``,
    then drops the oldest, and all of them at a restart), so the validator scores none of this traffic. Known
    from the last commit the forwarder tried (no write of its own here): a full disk can take the key store's
    small writes and refuse the outbox's large ones. The error itself is the log's to quote: ``/ready`` is public,
    and a Redis connection error names the server."""
    forwarder = ctx.forwarder
    if forwarder is None:
        return CheckOut(ok=True, detail="not used (no scoring outbox configured)")
    outage = forwarder.commit_outage
    if outage.failing:
        since = outage.failing_for
        return CheckOut(ok=False, detail=f"the scoring outbox refused the last commit ({since:.0f}s into a run of "
                                         "failures, the log's 'scoring outbox: payloads not stored yet' line names "
                                         "its reason): the payloads wait in memory, unscored; is the store's disk "
                                         "full or read-only?")
    return CheckOut(ok=True, detail="takes writes")


async def eviction_check(ctx: ApiContext) -> CheckOut:
    """A warning, never required: a Redis whose ``maxmemory-policy`` can evict drops API keys, the store marker,
    rate-limit windows or queued payloads when full, and nobody is told (``eviction.py``). One unreachable is the
    store check's to say."""
    try:
        policy = await within(ctx.store.eviction_policy(), STORE_PING_SECONDS)
    except (StoreUnavailable, TimeoutError, OSError):
        return CheckOut(ok=True, required=False, detail="not read (the key store is unavailable)")
    if policy is None:
        return CheckOut(ok=True, required=False, detail="not used (the store is a SQLite file)")
    return CheckOut(ok=eviction_risk(policy) is None, required=False, detail=eviction_detail(policy))


def validator_check(ctx: ApiContext) -> CheckOut:
    """Never required (its ``required`` says so whether it passes or not): the worker still serves (every
    serving miner is a candidate while availability is unknown), and one validator restart must not take
    every API host of a fleet out of rotation."""
    cache = ctx.availability
    if cache is None:
        return CheckOut(ok=True, required=False, detail="not used (no availability cache configured)")
    if not cache.fresh():
        return CheckOut(ok=False, required=False,
                        detail=f"no fresh availability from the validator at {cache.validator_url} (stale after "
                               f"{cache.stale_seconds:.0f}s); serving every registered miner meanwhile")
    return CheckOut(ok=True, required=False, detail=f"availability {availability_age(cache):.0f}s old")


def permit_check(ctx: ApiContext) -> CheckOut:
    """Whether this API's hotkey holds a validator permit: miners answer only permit holders (and the hotkeys
    they allow-list), so without one every request may end a 502 with each miner's 403. A warning, not
    required: miners may allow-list it, and a metagraph not loaded yet is the metagraph check's to say."""
    hotkey = ctx.client.signer.hotkey
    snapshot = ctx.metagraph.snapshot
    if not snapshot.neurons or hotkey in snapshot.permitted_hotkeys:
        return CheckOut(ok=True, required=False, detail=f"{hotkey} holds a validator permit"
                        if snapshot.neurons else "the metagraph has not been loaded")
    return CheckOut(ok=False, required=False,
                    detail=f"this API's hotkey {hotkey} holds no validator permit on netuid {snapshot.netuid}: "
                           "miners refuse its requests (403 NotAValidator) unless they allow-list it "
                           "(ALLOWED_HOTKEYS); check WALLET_NAME and WALLET_HOTKEY")


def availability_age(cache: AvailabilityCache) -> float:
    """Seconds since the validator's last good answer; infinite before the first (the gauge read 0, as fresh as
    can be, on an API that never heard from its validator, where its wall-clock age had read decades)."""
    return gauge_age(cache.age())


def available_miners(ctx: ApiContext) -> list[Neuron]:
    """The serving miners (not ourselves) that fresh availability says are up and offer some task (without fresh
    data, all). Up alone was not enough: miners that answered the poll advertising nothing (their model servers
    down) passed this while every chat was a 503."""
    serving = ctx.metagraph.snapshot.serving(exclude_hotkey=ctx.client.signer.hotkey)
    cache = ctx.availability
    if cache is not None and cache.fresh():
        serving = [n for n in serving if cache.offers_a_task(n.uid)]
    return serving


def miners_check(ctx: ApiContext, available: list[Neuron]) -> CheckOut:
    if available:
        return CheckOut(ok=True, detail=f"{len(available)} serving miner(s)")
    cache = ctx.availability
    if cache is not None and cache.fresh() and any(cache.entries.values()):
        return CheckOut(ok=False, detail="no serving miner is available: those up at the validator's last poll "
                                         "advertise no task (are their model servers down?)")
    return CheckOut(ok=False, detail="no serving miner is available")


def answering_check(ctx: ApiContext, available: list[Neuron]) -> CheckOut:
    """Required: some available miner is not set aside for failing this worker's last requests (``MinerHealth``).
    Every one advertising its models and failing every request (a model server down behind each) was a 200 here
    while every chat was a 503. A miner nobody has asked yet is not known to fail: a fresh API is ready."""
    health = ctx.miner_health
    if health is None or not health.threshold:
        return CheckOut(ok=True, detail="not used (MINER_FAILURES_TO_SET_ASIDE is 0)")
    if not available:
        return CheckOut(ok=True, detail="no available miner to judge (the miners check says why)")
    answering = health.answering(available)
    if not answering:
        return CheckOut(ok=False, detail=f"{set_aside_message(health, available)}; are their model servers up? "
                                         "sn1_api_miner_errors_total{uid,kind} says how each fails")
    aside = len(available) - len(answering)
    return CheckOut(ok=True, detail=f"{len(answering)} of {len(available)} available miner(s) answering or not "
                                    f"asked yet ({aside} set aside)")


async def readiness(ctx: ApiContext) -> ReadyOut:
    available = available_miners(ctx)
    checks = {"metagraph": metagraph_check(ctx), "store": await store_check(ctx),
              "eviction": await eviction_check(ctx), "outbox": outbox_check(ctx), "validator": validator_check(ctx),
              "miners": miners_check(ctx, available), "miners_answering": answering_check(ctx, available),
              "permit": permit_check(ctx)}
    return ready_out(checks)


async def ready(request: web.Request) -> web.Response:
    return ready_response(await readiness(request.app[CTX]))


async def sample(ctx: ApiContext, metrics: ApiMetrics) -> None:
    """Copy the values that live elsewhere into the gauges, right before a scrape. ``/ready``'s checks are run
    here too (the store's ping and marker: a few small calls every few seconds, never per request), so
    ``sn1_api_ready``, ``sn1_api_check_ok`` and ``sn1_api_store_lost`` are as fresh as the scrape: an operator
    could alert on the validator's readiness and not on the API's, whose store or outbox failing was told only
    to whoever asked ``/ready``."""
    out = await readiness(ctx)  # the store check catches its store's failures itself
    show_readiness(metrics.ready, metrics.check_ok, out)
    metrics.store_lost.set(1 if ctx.store_marker.store_lost else 0)
    metrics.metagraph_age.set(ctx.metagraph.age_seconds)
    metrics.serving_miners.set(len(ctx.metagraph.snapshot.serving(exclude_hotkey=ctx.client.signer.hotkey)))
    metrics.background_responses.set(len(ctx.running_responses))
    if ctx.miner_health is not None:
        aside = ctx.miner_health.reasons(ctx.metagraph.snapshot.serving(exclude_hotkey=ctx.client.signer.hotkey))
        for reason in REASONS:  # every label each time: a reason no miner fails for any more reads 0
            metrics.miners_set_aside.labels(reason).set(aside[reason])
    if ctx.availability is not None:
        metrics.availability_age.set(availability_age(ctx.availability))
    forwarder = ctx.forwarder
    if forwarder is not None:
        metrics.outbox_delivered.catch_up(forwarder.delivered)
        metrics.outbox_failures.catch_up(forwarder.delivery_failures)
        metrics.outbox_rejected.catch_up(forwarder.rejected)
        metrics.outbox_lost.catch_up(forwarder.unstored_dropped)
        try:
            metrics.outbox_depth.set(await forwarder.outbox.depth())
            metrics.outbox_dropped.set(await forwarder.outbox.dropped())
        except StoreUnavailable:
            pass  # the gauges keep their last value; /ready reports the store


SAMPLE_SECONDS = 5.0


async def sample_forever(ctx: ApiContext, metrics: ApiMetrics, every: float = SAMPLE_SECONDS) -> None:
    """Keep this worker's gauges fresh between scrapes. With ``WORKERS`` > 1 a scrape is answered by one
    worker and merges every worker's files: the others' gauges were as old as their last scrape (an hour-old
    metagraph read as 2 s old, a drained outbox as 5,000 deep). The store's marker is read here too, so a Redis
    that came back empty is an ERROR within seconds even where nobody asks ``/ready``. The first sample is taken at
    once: a worker not sampled yet holds ``sn1_api_ready`` at 0 (its checks unset), so for the first 5 s after each
    start a scrape read the host not ready while every ``check_ok`` was 1."""
    while True:
        try:
            await sample(ctx, metrics)
        except Exception as e:  # noqa: BLE001 - a failed sample must not end the loop
            logger.debug("metrics sample failed: {}", e)
        await asyncio.sleep(every)


def install(app: web.Application, ctx: ApiContext) -> ApiMetrics:
    """Add discovery, /ready, /metrics, /openapi.json and /docs, and count every request."""
    metrics = ApiMetrics()
    app[METRICS] = metrics
    app.middlewares.insert(0, metrics_middleware(metrics.http, metrics.errors))  # outermost: sees the final status
    on_refusal(app, count_refusals(metrics.http, metrics.errors))  # and what the parser refused, before it
    ctx.payload_sinks.append(metrics.payload_sink)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_handler(metrics.registry, lambda: sample(ctx, metrics)))
    app.router.add_get("/v1/models", discovery.list_models)
    app.router.add_get("/v1/models/{model:.+}", discovery.get_model)
    app.router.add_get("/v1/tasks", discovery.list_tasks)
    openapi.add_routes(app)
    return metrics
