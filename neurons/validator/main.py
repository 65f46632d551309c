"""``sn1 validator``: metagraph sync, availability polling and the validator API."""

from __future__ import annotations

import asyncio

from loguru import logger

from neurons.validator.app import create_validator_app
from neurons.validator.availability import AvailabilityBook, poll_all
from shared.http import serve_until_signal
from shared.logging import setup_logging
from shared.metagraph import MetagraphView, make_source
from shared.miner_client import MinerClient, make_session
from shared.settings import ValidatorSettings
from shared.signing import Authorizer, RequestVerifier, Signer
from shared.wallet import load_hotkey


async def run_validator(settings: ValidatorSettings) -> None:
    setup_logging(settings.log_level, role="validator")
    hotkey = load_hotkey(settings.wallet_name, settings.wallet_hotkey, settings.wallet_path)
    metagraph = MetagraphView(
        make_source(settings.metagraph_file, settings.subtensor_network, settings.netuid),
        refresh_seconds=settings.metagraph_refresh_seconds,
    )
    await metagraph.refresh()
    signer = Signer(hotkey)
    api_hotkeys = settings.api_hotkeys or [hotkey.ss58_address]
    verifier = RequestVerifier(hotkey.ss58_address, Authorizer(lambda: (), api_hotkeys))
    session = make_session()
    client = MinerClient(session, signer)
    book = AvailabilityBook()
    scoring_queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)

    async def availability_loop() -> None:
        while True:
            try:
                await poll_all(client, metagraph, book, timeout=settings.availability_timeout,
                               concurrency=settings.availability_concurrency)
            except Exception as e:  # noqa: BLE001 - one bad cycle must not stop the loop
                logger.warning("availability cycle failed: {}", e)
            await asyncio.sleep(settings.availability_interval)

    async def scoring_drain() -> None:
        # Organic payloads are accepted now; the scoring pipeline consumes them.
        while True:
            payload = await scoring_queue.get()
            logger.debug("organic payload for uids {}", payload.get("uids"))

    app = create_validator_app(
        book, scoring_queue, verifier, background=[metagraph.run, availability_loop, scoring_drain]
    )

    async def close_session(_app) -> None:
        await session.close()

    app.on_cleanup.append(close_session)
    logger.info(
        "validator starting hotkey={} port={} network={}",
        hotkey.ss58_address, settings.scoring_api_port, settings.network_label(),
    )
    await serve_until_signal(app, settings.scoring_api_host, settings.scoring_api_port)
