"""``sn1 validator``: build every part once from settings, run the loops and serve the API."""

from __future__ import annotations

import functools
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
from loguru import logger

from neurons.miner.media_urls import fetcher_for
from neurons.validator.app import (
    SEEN_SIZE,
    RecentPayloads,
    ValidatorContext,
    create_validator_app,
    scoring_verifier,
)
from neurons.validator.availability import AvailabilityBook
from neurons.validator.datasets import build_datasets
from neurons.validator.inbox import open_inbox
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
from neurons.validator.scoring import Scorer, ScoringQueue, job_failures, scoring_worker
from neurons.validator.synthetic import SyntheticConfig
from neurons.validator.tasks import default_registry, warn_if_normalised
from neurons.validator.tasks.base import RewardContext
from neurons.validator.weights import ChainWeightSink, DisabledSink, LedgerWeightSink, WeightRules, WeightSink
from shared.connections import connection_limits
from shared.corpus import load_corpus
from shared.http import serve_until_signal
from shared.listen import bound_socket
from shared.logging import setup_logging
from shared.metagraph import MetagraphView
from shared.metrics import ValidatorMetrics
from shared.miner_client import MinerClient, make_session
from shared.settings import ValidatorSettings, mask_credentials, setting_file
from shared.signing import Signer
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


async def run_validator(settings: ValidatorSettings, hotkey: Any | None = None) -> None:
    """``hotkey``: the keypair ``sn1`` read at start (``check_hotkey``), so the key file is read once."""
    started_at = time.monotonic()
    setup_logging(settings.log_level, role="validator")
    settings.check_state_dir()
    settings.check_weights_ledger()
    sock = bound_socket(settings.scoring_api_host, settings.scoring_api_port,
                        settings="SCORING_API_HOST/SCORING_API_PORT")  # a port in use: stop now
    hotkey = load_hotkey(settings.wallet_name, settings.wallet_hotkey, settings.wallet_path, read=hotkey)
    metagraph = MetagraphView.from_settings(settings)
    registry = default_registry(settings.task_probabilities)
    warn_if_normalised(settings.task_probabilities, registry)
    # Without synthetic jobs, organic answers are all there is to score.
    scores = ScoreBook(registry.probabilities, alpha=settings.score_alpha,
                       path=Path(settings.state_dir) / "scores.json",
                       organic_share=settings.organic_share if settings.synthetic_enabled else 1.0)
    with setting_file("STATE_DIR"):  # a scores file it can neither read nor set aside stops the start
        scores.load()
    inbox = open_inbox(settings.scoring_inbox_path())  # before any session: a file it cannot use stops the start
    await metagraph.first_refresh()
    log_own_standing(metagraph.snapshot, metagraph.snapshot, hotkey.ss58_address)  # not a refresh later
    scores.sync(metagraph.snapshot)
    with setting_file("CORPUS_FILE"):
        corpus = load_corpus(settings.corpus_file)
    with setting_file("DATASET_FILE"):
        datasets = build_datasets(corpus, settings.dataset_file)
    signer = Signer(hotkey)
    api_hotkeys = settings.api_hotkeys or [hotkey.ss58_address]
    verifier = scoring_verifier(hotkey.ss58_address, api_hotkeys,
                                unverified_body_bytes=settings.max_unverified_body_bytes)
    session = make_session()
    client = MinerClient(session, signer)
    reference = build_reference(settings, session)
    await reference.check()  # a URL, key or model that cannot work: said now, not at the first job
    sink = build_sink(settings, hotkey.ss58_address)
    book = AvailabilityBook()
    # a synthetic job per synthetic loop may wait; more would be answers growing stale
    queue = ScoringQueue(settings.scoring_queue_size, synthetic_maxsize=settings.synthetic_concurrency,
                         max_age=settings.organic_max_age_seconds, max_bytes=settings.scoring_queue_bytes,
                         settle=inbox.settle)
    inbox.restore(queue)  # what was accepted before a restart (or a crash) and not scored yet
    seen = RecentPayloads(SEEN_SIZE, restored=inbox.seen(SEEN_SIZE))
    scorer = Scorer(registry, RewardContext(reference=reference, corpus=corpus), scores,
                    grace=settings.latency_grace, owner=metagraph.hotkey_of, settle=inbox.settle,
                    reference=reference.status)
    synthetic = SyntheticConfig(sample_size=settings.synthetic_sample_size, timeout=settings.synthetic_timeout)
    rng = random.Random()

    metrics = ValidatorMetrics()
    timed = functools.partial(every, observe=metrics.observe_loop)
    loops: list[Any] = [
        lambda: timed("metagraph", settings.metagraph_refresh_seconds, lambda: metagraph_cycle(metagraph, scores, hotkey.ss58_address),
                      first_delay=settings.metagraph_refresh_seconds),
        lambda: timed("availability", settings.availability_interval, lambda: availability_cycle(
            client, metagraph, book, timeout=settings.availability_timeout,
            concurrency=settings.availability_concurrency)),
        lambda: timed("weights", settings.weights_interval,
                      lambda: fresh_weights_cycle(metagraph, scores, sink, power=settings.weights_power,
                                                  hotkey=hotkey.ss58_address),
                      first_delay=first_weights_delay(scores.last_weights_set_at, settings.weights_interval,
                                                      time.time())),
    ]
    loops += [
        (lambda: timed("synthetic", settings.synthetic_interval, lambda: synthetic_cycle(
            client, metagraph, book, registry, datasets, synthetic, rng, queue, scores),
            first_delay=min(settings.availability_timeout, settings.synthetic_interval)))
        for _ in range(settings.synthetic_concurrency if settings.synthetic_enabled else 0)
    ]
    failures = job_failures()  # one run for all the workers: a job per worker failing alike is one line
    loops += [lambda: scoring_worker(queue, scorer, metagraph, failures, observe=metrics.observe_loop)
              for _ in range(settings.scoring_workers)]
    # the inbox, the reference model and the scores' file tried again while they fail and no traffic does (``recheck.py``)
    recheck = functools.partial(recheck_cycle, inbox, reference, scores, observe=metrics.observe_recheck)
    loops.append(lambda: timed("recheck", RECHECK_SECONDS, recheck, first_delay=RECHECK_SECONDS))

    ctx = ValidatorContext(book=book, scoring_queue=queue, verifier=verifier, scores=scores, metagraph=metagraph,
                           organic_timeout=settings.organic_timeout, seen=seen, inbox=inbox,
                           reference=reference.status,
                           readiness=ReadinessConfig(
                               hotkey=hotkey.ss58_address, sink=sink.name,
                               availability_interval=settings.availability_interval,
                               availability_timeout=settings.availability_timeout,
                               weights_interval=settings.weights_interval, started_at=started_at,
                               chain=sink.limits if isinstance(sink, ChainWeightSink) else None))
    # the chain's weights rate limit and minimum stake, read now (bounded) and said if they stop weights
    await start_checks(ctx, sink.read_limits if isinstance(sink, ChainWeightSink) else None)
    app = create_validator_app(ctx, background=loops, metrics=metrics)

    async def close(_app: Any) -> None:
        await sink.close()
        await reference.close()
        await session.close()
        await metagraph.source.close()

    app.on_cleanup.append(close)
    logger.info(
        "validator starting hotkey={} port={} network={} sink={} reference={} tasks={}",
        hotkey.ss58_address, settings.scoring_api_port, settings.network_label(), sink.name,
        mask_credentials(settings.reference_llm_url) if settings.reference_llm_url else "deterministic",
        registry.probabilities,
    )
    await serve_until_signal(app, settings.scoring_api_host, settings.scoring_api_port, sock=sock,
                             limits=connection_limits(settings))
