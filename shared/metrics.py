"""Prometheus metrics for the API and the validator (``GET /metrics``, text exposition format).

Each app owns its metrics in its own ``CollectorRegistry`` (no module-level
state, so tests can build many apps in one process). Values that live
elsewhere (outbox depth, metagraph age, scoring queue) are sampled into gauges
right before each scrape by the app's ``sample`` callback.

Several API workers: when ``PROMETHEUS_MULTIPROC_DIR`` is set (``sn1 api`` sets
it itself when ``WORKERS > 1``), prometheus_client keeps every worker's values
in files there and a scrape, answered by any worker, reports the whole fleet:
counters and histograms are summed (a dead worker's counts too), per-worker
levels such as background responses use ``livesum`` gauges, shared values
(outbox depth) ``max``. A count that only grows is a counter, never a
``livesum`` gauge: a worker replaced took its count out of the sum, and
``increase()`` read the fall as a rise (``Tally``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from shared.errors import API_ERROR_CODES
from shared.http import BODY_CODE, CLIENT_GONE, observed
from shared.metrics_dir import multiprocess_dir

if TYPE_CHECKING:
    from shared.readiness import ReadyOut

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
UNMATCHED = "unmatched"
UNPARSED = "?"  # the route of a request the HTTP parser refused (``count_refusals``), as its access line says it

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Sampler = Callable[[], Awaitable[None]]


class Children:
    """A labelled metric's children by label values, looked up once: ``labels()`` costs microseconds
    (validation, locking) on every call, and the API calls it several times per request."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class Tally:
    """A counter fed from a running total kept elsewhere (the scoring forwarder's since-start counts), caught up
    at each sample. A counter, not a gauge set to the total: summed across workers (``livesum``) such a gauge
    fell by a worker's count when it was replaced, which ``increase()`` and ``rate()`` read as a counter's reset
    followed by a rise of the whole sum. A counter's dead workers stay in the sum (prometheus_client keeps their
    files)."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self._seen = 0  # the total at the last catch-up

    def catch_up(self, total: int) -> None:
        """Count what ``total`` grew by since the last call (a total that went back, a new forwarder's, counts
        from 0 again)."""
        grown = total - self._seen if total >= self._seen else total
        if grown:
            self.counter.inc(grown)
        self._seen = total


# The method label's values: a request's method is whatever its client wrote where aiohttp parses requests in
# Python (no C extension on the platform, or AIOHTTP_NO_EXTENSIONS set), so a label per method was a new series
# per made-up method, kept for good, for any caller without a key (a memory leak and a /metrics that grew).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def readiness_gauges(prefix: str, registry: CollectorRegistry, **mode: str) -> tuple[Gauge, Gauge]:
    """``<prefix>_ready`` and ``<prefix>_check_ok{check}``, what a process's ``GET /ready`` says (``show_readiness``),
    for the API and the validator alike; ``mode``: the API's ``multiprocess_mode``."""
    ready = Gauge(f"{prefix}_ready", "1 when GET /ready would answer 200 (every required check passes), else 0",
                  registry=registry, **mode)
    checks = Gauge(f"{prefix}_check_ok", "1 while the /ready check passes, else 0 (a required check or a warning: "
                   "/ready's checks.<name>.required)", ["check"], registry=registry, **mode)
    return ready, checks


def show_readiness(ready: Gauge, check_ok: Children, out: ReadyOut) -> None:
    """Set ``readiness_gauges``' values from a ``/ready`` answer."""
    ready.set(1 if out.ready else 0)
    for name, check in out.checks.items():
        check_ok(name).set(1 if check.ok else 0)


class HttpMetrics:
    """Requests by route pattern, method and status, and their latency."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.requests = Counter(f"{prefix}_http_requests", "HTTP requests by route pattern, method and status",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram(f"{prefix}_http_request_duration_seconds",
                                 "Time to the end of the response (streams included)", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.rate_limited = Counter(f"{prefix}_rate_limited", "Requests refused with 429", ["route"],
                                    registry=registry)
        self._requests, self._latency = Children(self.requests), Children(self.latency)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else OTHER_METHOD
        self.count(route, method, status)
        self._latency(route, method).observe(seconds)

    def count(self, route: str, method: str, status: int) -> None:
        """One request answered ``status`` (``observe`` without its latency: a request no handler took)."""
        self._requests(route, method, str(status)).inc()
        if status == 429:
            self.rate_limited.labels(route).inc()


class ErrorCodes:
    """Answered errors (status >= 400; not a client that left) by route pattern and their body's ``code``: a 503
    ``no_miners_available`` told from a 503 ``store_unavailable``, a 429 ``rate_limit_exceeded`` from a 429
    ``token_limit_exceeded``, which the status alone cannot. A null code is ``none``; one outside ``codes`` is
    ``other`` (bounded label values)."""

    def __init__(self, registry: CollectorRegistry, name: str, codes: frozenset[str]) -> None:
        self.counter = Counter(name, "Errors answered, by route pattern and the error body's code (none: null; "
                               "other: a code not in README's Error codes)", ["route", "code"], registry=registry)
        self.codes = codes
        self._counter = Children(self.counter)

    def observe(self, route: str, status: int, code: str | None) -> None:
        if status < 400 or status == CLIENT_GONE:
            return
        self._counter(route, "none" if code is None else code if code in self.codes else "other").inc()


def route_label(request: web.Request) -> str:
    """The matched route's pattern (``/v1/models/{model}``), never the raw path: bounded label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def count_refusals(http: HttpMetrics, errors: ErrorCodes | None = None) -> Callable[[web.BaseRequest,
                                                                                    web.StreamResponse], None]:
    """A refusal hook (``shared.connections.on_refusal``) counting each request the HTTP parser refused, which no
    middleware sees, as ``metrics_middleware`` counts the others: under ``route="?"``, ``method="other"`` (nothing
    was routed, nor read: as its access line's ``route=?``), its latency not observed (there was no handler)."""

    def count(request: web.BaseRequest, response: web.StreamResponse) -> None:
        http.count(UNPARSED, OTHER_METHOD, response.status)
        if errors is not None:
            errors.observe(UNPARSED, response.status, request.get(BODY_CODE))

    return count


def metrics_middleware(http: HttpMetrics, errors: ErrorCodes | None = None) -> Any:
    """Outermost middleware: counts every request once with the status the client saw, and each error with its
    body's code (``errors``; the code ``error_middleware`` noted, the body never parsed)."""

    def on_end(request: web.Request, status: int, seconds: float) -> None:
        route = route_label(request)
        http.observe(route, request.method, status, seconds)
        if errors is not None and status >= 400:  # the code asked of an error only: most requests set none
            errors.observe(route, status, request.get(BODY_CODE))

    return observed(on_end)


class ApiMetrics:
    """The API's metrics: HTTP, per-miner answers and wins, outbox, metagraph and availability."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http = HttpMetrics(r, "sn1_api")
        self.errors = ErrorCodes(r, "sn1_api_errors", API_ERROR_CODES)
        self.miner_answer = Histogram("sn1_api_miner_answer_seconds", "Time for a miner's whole answer, by uid",
                                      ["uid"], buckets=LATENCY_BUCKETS, registry=r)
        self.miner_first_chunk = Histogram("sn1_api_miner_first_chunk_seconds", "Time to a miner's first chunk",
                                           ["uid"], buckets=LATENCY_BUCKETS, registry=r)
        self.miner_wins = Counter("sn1_api_miner_wins", "Races won, by uid", ["uid"], registry=r)
        self.miner_errors = Counter("sn1_api_miner_errors", "Miner requests that failed, by uid and the failure's "
                                    "kind (timeout, unreachable, http_5xx, signature, bad_response, ...)",
                                    ["uid", "kind"], registry=r)
        self.fanouts = Counter("sn1_api_fanouts", "Settled fan-outs by kind", ["kind"], registry=r)
        self.tokens = Counter("sn1_api_tokens", "Tokens charged to API keys, as their usage counts them (the "
                              "miner's count bounded by the answer, else an estimate), by kind: prompt or completion",
                              ["kind"], registry=r)
        self._prompt_tokens, self._completion_tokens = self.tokens.labels("prompt"), self.tokens.labels("completion")
        self.outbox_depth = Gauge("sn1_api_outbox_depth", "Scoring payloads waiting for delivery",
                                  registry=r, multiprocess_mode="max")
        self.outbox_dropped = Gauge("sn1_api_outbox_dropped", "Payloads dropped because the outbox was full",
                                    registry=r, multiprocess_mode="max")
        # Counters, caught up from the forwarder's running totals at each sample (``Tally``): as ``livesum`` gauges
        # a worker's restart dropped the fleet's sum by its count, and the alerts' increase() took the drop for a
        # counter's reset and counted the rest again (SN1ScoringPayloadsRejected fired with nothing rejected).
        self.outbox_delivered = Tally(Counter("sn1_api_outbox_delivered", "Payloads the validator took (not those "
                                              "it rejected: sn1_api_outbox_rejected)",
                                              registry=r))
        self.outbox_failures = Tally(Counter("sn1_api_outbox_delivery_failures", "Failed deliveries to the validator",
                                             registry=r))
        self.outbox_rejected = Tally(Counter(
            "sn1_api_outbox_rejected", "Payloads dropped unscored as the validator would not take them: rejected as "
            "malformed, or failed on (HTTP 500, or a post timing out) again and again while it took the others",
            registry=r))
        self.outbox_lost = Tally(Counter("sn1_api_outbox_lost", "Payloads lost before the outbox stored them: the "
                                         "store refused their commits so long that more waited in memory than its "
                                         "bound (10,000 and 64 MiB), the oldest dropped", registry=r))
        # The oldest of the live workers' (livemax): with livemin a worker an hour behind hid behind a fresh one.
        self.metagraph_age = Gauge("sn1_api_metagraph_age_seconds", "Age of the metagraph snapshot",
                                   registry=r, multiprocess_mode="livemax")
        self.availability_age = Gauge("sn1_api_availability_age_seconds",
                                      "Age of the availability data from the validator",
                                      registry=r, multiprocess_mode="livemax")
        self.serving_miners = Gauge("sn1_api_serving_miners", "Miners in the metagraph with an axon",
                                    registry=r, multiprocess_mode="livemax")
        # Each worker judges from its own traffic; the worst worker's count (livemax) is the host's.
        self.miners_set_aside = Gauge("sn1_api_miners_set_aside", "Serving miners set aside for failing their last "
                                      "requests (no organic traffic until a probe finds them answering), by the "
                                      "last failure's kind", ["reason"], registry=r, multiprocess_mode="livemax")
        self.background_responses = Gauge("sn1_api_background_responses",
                                          "Background responses (background: true) being answered",
                                          registry=r, multiprocess_mode="livesum")
        # Any worker's 1 is the fleet's (livemax): every worker reads the same store.
        self.store_lost = Gauge("sn1_api_store_lost", "1 while the key store is judged lost (a Redis that came "
                                "back empty: /ready's store check fails until a key is created or imported), "
                                "else 0", registry=r, multiprocess_mode="livemax")
        # The fleet's worst worker (livemin): a load balancer sends a host's traffic to whichever worker answers.
        self.ready, self.checks = readiness_gauges("sn1_api", r, multiprocess_mode="livemin")
        self.check_ok = Children(self.checks)
        self._fanouts, self._errors = Children(self.fanouts), Children(self.miner_errors)
        self._first, self._answer, self._wins = (Children(self.miner_first_chunk), Children(self.miner_answer),
                                                 Children(self.miner_wins))

    def count_tokens(self, prompt: int, completion: int) -> None:
        """A ``UsageRecorder`` token sink: one request's tokens, as charged to its key."""
        if prompt:
            self._prompt_tokens.inc(prompt)
        if completion:
            self._completion_tokens.inc(completion)

    def payload_sink(self, payload: dict[str, Any]) -> None:
        """A payload sink: every settled fan-out's per-uid timings, errors and winner become metrics."""
        self._fanouts(str(payload.get("kind", "chat"))).inc()
        errors = payload.get("errors") or {}
        kinds = payload.get("error_kinds") or {}
        for uid, timings in (payload.get("timings") or {}).items():
            if uid in errors:
                self._errors(uid, kinds.get(uid) or "error").inc()
            elif timings:
                self._first(uid).observe(timings[0])
                self._answer(uid).observe(timings[-1])
        if payload.get("winner") is not None:
            self._wins(str(payload["winner"])).inc()


class ValidatorMetrics:
    """The validator's metrics: HTTP, loop timings and failures, scoring queue, availability, per-uid scores and
    weights."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http = HttpMetrics(r, "sn1_validator")
        self.loop_seconds = Histogram("sn1_validator_loop_seconds", "Duration of one loop cycle", ["loop"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.loop_failures = Counter("sn1_validator_loop_failures", "Loop cycles that raised", ["loop"], registry=r)
        self.rechecks = Counter("sn1_validator_rechecks", "Tries of a failing required check (its /ready name) made by "
                                "the validator itself while no traffic tried it, by outcome (ok ends its run)",
                                ["check", "outcome"], registry=r)
        self.scoring_queue_depth = Gauge("sn1_validator_scoring_queue_depth", "Organic jobs waiting to be scored",
                                         registry=r)
        self.scoring_queue_max = Gauge("sn1_validator_scoring_queue_max", "Bound of the organic scoring lane", registry=r)
        self.synthetic_queue_depth = Gauge("sn1_validator_synthetic_queue_depth",
                                           "Synthetic jobs waiting to be scored", registry=r)
        self.scoring_inbox_waiting = Gauge("sn1_validator_scoring_inbox_waiting", "Organic payloads from before a "
                                           "restart waiting on disk for room in the scoring lane", registry=r)
        # Counts that only grow, caught up from the validator's running totals at each scrape (``Tally``): as
        # gauges, ``increase()`` in the alerts read a gauge, which Prometheus flags ("might not be a counter").
        self.organic_stale_dropped = Tally(Counter("sn1_validator_organic_stale_dropped", "Organic payloads "
                                                   "dropped unscored as older than ORGANIC_MAX_AGE_SECONDS",
                                                   registry=r))
        self.reference_failures = Tally(Counter("sn1_validator_reference_failures", "Reference model calls that "
                                                "failed (each skipped a job)", registry=r))
        self.last_weights_set = Gauge("sn1_validator_last_weights_set_timestamp_seconds", "Unix time weights were "
                                      "last set (0: never, by this state dir)", registry=r)
        self.metagraph_age = Gauge("sn1_validator_metagraph_age_seconds", "Age of the metagraph last read "
                                   "(grows while the chain or METAGRAPH_FILE cannot be read)", registry=r)
        self.miners_available = Gauge("sn1_validator_miners_available", "Miners that answered the last poll",
                                      registry=r)
        self.availability_age = Gauge("sn1_validator_availability_age_seconds", "Age of the last availability poll",
                                      registry=r)
        self.ready, self.checks = readiness_gauges("sn1_validator", r)
        self.check_ok = Children(self.checks)
        self.miner_score = Gauge("sn1_validator_miner_score", "Each miner's moving score, the one weights are "
                                 "computed from (GET /scores' score), by uid; uids in the metagraph only",
                                 ["uid"], registry=r)
        self.miner_weight = Gauge("sn1_validator_miner_weight", "Each miner's normalized weight from the last "
                                  "weights cycle that set weights (on chain, or the local ledger; computed only, "
                                  "with NEURON_DISABLE_SET_WEIGHTS), by uid; uids in the metagraph only",
                                  ["uid"], registry=r)
        self._miner_uids: set[str] = set()  # the uids exported now: one that leaves loses its series

    def set_miners(self, per_uid: dict[int, tuple[float, float]]) -> None:
        """Each uid's score and weight (``ScoreBook.per_uid``); a uid no longer given loses both series, so a
        subnet's churn of uids never grows ``/metrics``."""
        uids = {str(uid) for uid in per_uid}
        for gone in self._miner_uids - uids:
            self.miner_score.remove(gone)
            self.miner_weight.remove(gone)
        for uid, (score, weight) in per_uid.items():
            self.miner_score.labels(str(uid)).set(score)
            self.miner_weight.labels(str(uid)).set(weight)
        self._miner_uids = uids

    def observe_loop(self, name: str, seconds: float, ok: bool) -> None:
        """One cycle of loop ``name``. Its failure count is made at its first cycle, at 0: a series that appeared
        with the first failure hid that failure from ``increase()`` (SN1ValidatorLoopFailing)."""
        self.loop_seconds.labels(name).observe(seconds)
        failures = self.loop_failures.labels(name)
        if not ok:
            failures.inc()

    def observe_recheck(self, check: str, ok: bool) -> None:
        self.rechecks.labels(check, "ok" if ok else "failed").inc()


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in text format; in multiprocess mode, every worker's values instead."""
    path = multiprocess_dir()
    if path:
        fleet = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(fleet, path=path)
        return generate_latest(fleet)
    return generate_latest(registry)


def metrics_handler(registry: CollectorRegistry, sample: Sampler | None = None) -> Handler:
    """``GET /metrics``: sample the live gauges, then render (no auth: scrape from a private network)."""

    async def handler(request: web.Request) -> web.Response:
        if sample is not None:
            await sample()
        return web.Response(body=exposition(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler
