"""``sn1 validator``: build every part once from settings, run the loops and serve the API."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from loguru import logger

from neurons.miner.media_urls import fetcher_for
from neurons.validator.app import ValidatorContext, create_validator_app, scoring_verifier
from neurons.validator.availability import AvailabilityBook
from neurons.validator.datasets import build_datasets
from neurons.validator.inbox import ScoringInbox, open_inbox
from neurons.validator.intake import SEEN_SIZE, RecentPayloads
from neurons.validator.loops import (
    availability_cycle,
    every,
    first_weights_delay,
    fresh_weights_cycle,
    log_own_standing,
    metagraph_cycle,
    synthetic_cycle,
)
from neurons.validator.readiness import ReadinessConfig, start_checks
from neurons.validator.recheck import RECHECK_SECONDS, recheck_cycle
from neurons.validator.reference import (
    CachedReference,
    DeterministicReference,
    OpenAIReference,
)
from neurons.validator.reference_status import ReferenceStatus
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring import Scorer, job_failures, scoring_worker
from neurons.validator.scoring_queue import ScoringQueue
from neurons.validator.synthetic import SyntheticConfig
from neurons.validator.tasks import default_registry, warn_if_normalised
from neurons.validator.tasks.base import RewardContext, TaskRegistry
from neurons.validator.weights import ChainWeightSink, DisabledSink, LedgerWeightSink, WeightRules, WeightSink
from shared.connections import connection_limits
from shared.corpus import Corpus, load_corpus
from shared.http import serve_until_signal
from shared.listen import bound_socket
from shared.logging import setup_logging
from shared.metagraph import MetagraphView
from shared.metrics import ValidatorMetrics
from shared.miner_client import MinerClient, make_session
from shared.settings import ValidatorSettings, mask_credentials, setting_file
from shared.signing import Signer
from shared.unchanged import Unchanged
from shared.wallet import load_hotkey


def build_reference(settings: ValidatorSettings, session: aiohttp.ClientSession) -> CachedReference:
    if settings.reference_llm_url:
        key = settings.reference_llm_api_key.get_secret_value() if settings.reference_llm_api_key else None
        return CachedReference(OpenAIReference(
            settings.reference_llm_url, session=session, api_key=key, model=settings.reference_llm_model,
            timeout=settings.synthetic_timeout * 4, reproducible=settings.reference_llm_reproducible,
            media=fetcher_for(settings, owner="validator")),
            status=ReferenceStatus(kind="llm"))
    return CachedReference(DeterministicReference())


def build_sink(settings: ValidatorSettings, hotkey_ss58: str) -> WeightSink:
    local_rules = WeightRules(max_weight=settings.max_weight_limit, min_allowed=settings.min_allowed_weights)
    if settings.neuron_disable_set_weights:
        return DisabledSink(local_rules)
    if settings.weights_ledger_file:
        return LedgerWeightSink(settings.weights_ledger_file, settings.metagraph_file,
                                validator_hotkey=hotkey_ss58, rules=local_rules)
    if settings.metagraph_file:
        logger.warning("metagraph file without WEIGHTS_LEDGER_FILE: weights are computed but not set")
        return DisabledSink(local_rules)
    import bittensor as bt

    wallet = bt.Wallet(name=settings.wallet_name, hotkey=settings.wallet_hotkey,
                       path=str(Path(settings.wallet_path).expanduser()))
    return ChainWeightSink(lambda: bt.Client(settings.subtensor_network), wallet, settings.netuid)


@dataclass
class Parts:
    """What the loops and the HTTP API share, each built once from settings (``build_parts``): one place to
    read what a running validator is made of, and what ``close_parts`` must close."""

    settings: ValidatorSettings
    hotkey: str  # this validator's hotkey (ss58)
    metagraph: MetagraphView
    registry: TaskRegistry
    scores: ScoreBook
    inbox: ScoringInbox
    corpus: Corpus
    datasets: dict[str, Any]
    session: aiohttp.ClientSession
    client: MinerClient
    reference: CachedReference
    sink: WeightSink
    book: AvailabilityBook
    queue: ScoringQueue
    scorer: Scorer
    # the metagraph's line, read by its loop and the weights loop: INFO when what it says changed (``Unchanged``)
    metagraph_told: Unchanged = field(default_factory=Unchanged)


def open_scores(settings: ValidatorSettings, registry: TaskRegistry) -> ScoreBook:
    """The scores as the last run saved them (``STATE_DIR/scores.json``): a file it can neither read nor set
    aside stops the start, as weeks of scores must not be replaced by an empty book."""
    # Without synthetic jobs, organic answers are all there is to score.
    scores = ScoreBook(registry.probabilities, alpha=settings.score_alpha,
                       path=Path(settings.state_dir) / "scores.json",
                       organic_share=settings.organic_share if settings.synthetic_enabled else 1.0)
    with setting_file("STATE_DIR"):
        scores.load()
    return scores


async def first_metagraph(metagraph: MetagraphView, scores: ScoreBook, hotkey: str) -> None:
    """The start's read of the chain: the scores of uids that changed hands while the validator was down are
    dropped before anything is scored or weighted, and this validator's own standing is said once."""
    await metagraph.first_refresh()
    log_own_standing(metagraph.snapshot, metagraph.snapshot, hotkey)  # not a refresh later
    scores.sync(metagraph.snapshot)


def load_material(settings: ValidatorSettings) -> tuple[Corpus, dict[str, Any]]:
    """The corpus (web retrieval's pages) and the synthetic tasks' datasets; a file that cannot be read stops
    the start, naming its setting."""
    with setting_file("CORPUS_FILE"):
        corpus = load_corpus(settings.corpus_file)
    with setting_file("DATASET_FILE"):
        datasets = build_datasets(corpus, settings.dataset_file)
    return corpus, datasets


async def build_parts(settings: ValidatorSettings, hotkey: Any) -> Parts:
    """Every part, in the order a start must fail in: the files first (before any session is opened), then the
    chain, then the reference model (checked now, so a wrong URL, key or model is said at start)."""
    metagraph = MetagraphView.from_settings(settings)
    registry = default_registry(settings.task_probabilities)
    warn_if_normalised(settings.task_probabilities, registry)
    scores = open_scores(settings, registry)
    inbox = open_inbox(settings.scoring_inbox_path())  # before any session: a file it cannot use stops the start
    await first_metagraph(metagraph, scores, hotkey.ss58_address)
    corpus, datasets = load_material(settings)
    session = make_session()
    client = MinerClient(session, Signer(hotkey))
    reference = build_reference(settings, session)
    await reference.check()  # a URL, key or model that cannot work: said now, not at the first job
    sink = build_sink(settings, hotkey.ss58_address)
    # a synthetic job per synthetic loop may wait; more would be answers growing stale
    queue = ScoringQueue(settings.scoring_queue_size, synthetic_maxsize=settings.synthetic_concurrency,
                         max_age=settings.organic_max_age_seconds, max_bytes=settings.scoring_queue_bytes,
                         settle=inbox.settle)
    inbox.restore(queue)  # what was accepted before a restart (or a crash) and not scored yet
    scorer = Scorer(registry, RewardContext(reference=reference, corpus=corpus), scores,
                    grace=settings.latency_grace, owner=metagraph.hotkey_of, settle=inbox.settle,
                    reference=reference.status)
    return Parts(settings=settings, hotkey=hotkey.ss58_address, metagraph=metagraph, registry=registry,
                 scores=scores, inbox=inbox, corpus=corpus, datasets=datasets, session=session, client=client,
                 reference=reference, sink=sink, book=AvailabilityBook(), queue=queue, scorer=scorer)


Loop = Callable[[], Awaitable[Any]]


def periodic_loops(parts: Parts, timed: Callable[..., Awaitable[None]]) -> list[Loop]:
    """The loops that run a cycle every interval (``loops.every``, ``timed`` with the metrics): the metagraph,
    availability, weights, the synthetic loops and the recheck."""
    p, s = parts, parts.settings
    loops: list[Loop] = [
        lambda: timed("metagraph", s.metagraph_refresh_seconds, lambda: metagraph_cycle(p.metagraph, p.scores, p.hotkey,
                                                                                        p.metagraph_told),
                      first_delay=s.metagraph_refresh_seconds),
        lambda: timed("availability", s.availability_interval, lambda: availability_cycle(
            p.client, p.metagraph, p.book, timeout=s.availability_timeout,
            concurrency=s.availability_concurrency)),
        lambda: timed("weights", s.weights_interval,
                      lambda: fresh_weights_cycle(p.metagraph, p.scores, p.sink, power=s.weights_power,
                                                  hotkey=p.hotkey, told=p.metagraph_told),
                      first_delay=first_weights_delay(p.scores.last_weights_set_at, s.weights_interval, time.time())),
    ]
    synthetic = SyntheticConfig(sample_size=s.synthetic_sample_size, timeout=s.synthetic_timeout)
    rng = random.Random()
    loops += [
        (lambda: timed("synthetic", s.synthetic_interval, lambda: synthetic_cycle(
            p.client, p.metagraph, p.book, p.registry, p.datasets, synthetic, rng, p.queue, p.scores),
            first_delay=min(s.availability_timeout, s.synthetic_interval)))
        for _ in range(s.synthetic_concurrency if s.synthetic_enabled else 0)
    ]
    return loops


def background_loops(parts: Parts, metrics: ValidatorMetrics) -> list[Loop]:
    """Every loop the validator runs while it serves: the periodic ones, the scoring workers, and the recheck."""
    observe = metrics.observe_loop
    timed = functools.partial(every, observe=observe)
    loops = periodic_loops(parts, timed)
    failures = job_failures()  # one run for all the workers: a job per worker failing alike is one line
    loops += [lambda: scoring_worker(parts.queue, parts.scorer, parts.metagraph, failures, observe=observe)
              for _ in range(parts.settings.scoring_workers)]
    # the inbox, the reference model and the scores' file tried again while they fail and no traffic does (``recheck.py``)
    recheck = functools.partial(recheck_cycle, parts.inbox, parts.reference, parts.scores,
                                observe=metrics.observe_recheck)
    loops.append(lambda: timed("recheck", RECHECK_SECONDS, recheck, first_delay=RECHECK_SECONDS))
    return loops


def validator_context(parts: Parts, started_at: float) -> ValidatorContext:
    """What the HTTP handlers read: the shared parts, who may post ``/scoring``, the payloads seen before a
    restart, and what ``/ready`` measures against."""
    s, sink = parts.settings, parts.sink
    verifier = scoring_verifier(parts.hotkey, s.api_hotkeys or [parts.hotkey],
                                unverified_body_bytes=s.max_unverified_body_bytes)
    return ValidatorContext(book=parts.book, scoring_queue=parts.queue, verifier=verifier, scores=parts.scores,
                            metagraph=parts.metagraph, organic_timeout=s.organic_timeout,
                            seen=RecentPayloads(SEEN_SIZE, restored=parts.inbox.seen(SEEN_SIZE)), inbox=parts.inbox,
                            reference=parts.reference.status,
                            readiness=ReadinessConfig(
                                hotkey=parts.hotkey, sink=sink.name,
                                availability_interval=s.availability_interval,
                                availability_timeout=s.availability_timeout,
                                weights_interval=s.weights_interval, started_at=started_at,
                                chain=sink.limits if isinstance(sink, ChainWeightSink) else None))


async def close_parts(parts: Parts) -> None:
    """Shutdown, after the loops stopped: the clients the parts hold (the chain's, the reference model's pool,
    the miners' session, the metagraph's source). One that fails to close is said, and the others are still
    closed: the first failure (a chain connection already gone) left the rest open, and nothing said why."""
    closes = {"the weight sink": parts.sink.close, "the reference model": parts.reference.close,
              "the miners' session": parts.session.close, "the metagraph source": parts.metagraph.source.close}
    for what, close in closes.items():
        try:
            await close()
        except Exception as e:  # noqa: BLE001 - said, and the next part is still closed
            logger.warning("shutdown: {} was not closed cleanly: {}: {}", what, type(e).__name__, e)


def log_start(parts: Parts) -> None:
    s = parts.settings
    logger.info(
        "validator starting hotkey={} port={} network={} sink={} reference={} tasks={}",
        parts.hotkey, s.scoring_api_port, s.network_label(), parts.sink.name,
        mask_credentials(s.reference_llm_url) if s.reference_llm_url else "deterministic",
        parts.registry.probabilities,
    )


async def run_validator(settings: ValidatorSettings, hotkey: Any | None = None) -> None:
    """``hotkey``: the keypair ``sn1`` read at start (``check_hotkey``), so the key file is read once."""
    started_at = time.monotonic()
    setup_logging(settings.log_level, role="validator")
    settings.check_state_dir()
    settings.check_weights_ledger()
    sock = bound_socket(settings.scoring_api_host, settings.scoring_api_port,
                        settings="SCORING_API_HOST/SCORING_API_PORT")  # a port in use: stop now
    hotkey = load_hotkey(settings.wallet_name, settings.wallet_hotkey, settings.wallet_path, read=hotkey)
    parts = await build_parts(settings, hotkey)
    metrics = ValidatorMetrics()
    loops = background_loops(parts, metrics)
    ctx = validator_context(parts, started_at)
    # the chain's weights rate limit and minimum stake, read now (bounded) and said if they stop weights
    await start_checks(ctx, parts.sink.read_limits if isinstance(parts.sink, ChainWeightSink) else None)
    app = create_validator_app(ctx, background=loops, metrics=metrics)
    app.on_cleanup.append(lambda _app: close_parts(parts))
    log_start(parts)
    await serve_until_signal(app, settings.scoring_api_host, settings.scoring_api_port, sock=sock,
                             limits=connection_limits(settings))
