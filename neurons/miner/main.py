"""``sn1 miner``: load settings, build the backend and the app, serve until SIGTERM."""

from __future__ import annotations

from typing import Any

from loguru import logger

from neurons.miner.app import create_miner_app
from neurons.miner.backends.base import Backend
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
from neurons.miner.faults import FAULT_PROFILES, serve_fault_miner
from neurons.miner.media_urls import fetcher_for
from neurons.miner.profiles import apply_quality_profile, check_profile
from neurons.miner.search import CorpusSearch
from neurons.miner.standing import Standing
from shared.connections import connection_limits
from shared.corpus import load_corpus
from shared.http import serve_until_signal
from shared.listen import bound_socket
from shared.logging import setup_logging
from shared.metagraph import MetagraphView
from shared.settings import MinerSettings, setting_file
from shared.signing import Authorizer, RequestVerifier
from shared.wallet import load_hotkey

LISTEN = "MINER_HOST/MINER_PORT"  # the settings a "cannot listen" start error names


async def build_backend(settings: MinerSettings) -> Backend:
    if settings.miner_backend == "openai":
        assert settings.upstream_url
        backend = OpenAICompatibleBackend(
            settings.upstream_url,
            api_key=settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None,
            timeout=settings.upstream_timeout,
            serve_models=settings.upstream_models,
            extra_fields=settings.upstream_extra_fields,
            aliases=settings.upstream_model_aliases,
            media=fetcher_for(settings),
        )
        await backend.start()
        return backend
    with setting_file("CORPUS_FILE"):
        corpus = load_corpus(settings.corpus_file)
    return DeterministicBackend(settings.miner_model, search=CorpusSearch(corpus))


async def run_miner(settings: MinerSettings, hotkey: Any | None = None) -> None:
    """``hotkey``: the keypair ``sn1`` read at start (``check_hotkey``), so the key file is read once."""
    setup_logging(settings.log_level, role="miner")
    with setting_file("MINER_PROFILE"):
        check_profile(settings.miner_profile)
    hotkey = load_hotkey(settings.wallet_name, settings.wallet_hotkey, settings.wallet_path, read=hotkey)
    metagraph = MetagraphView.from_settings(settings, calls_miners=False)
    await metagraph.first_refresh()
    verifier = RequestVerifier(
        hotkey.ss58_address, Authorizer(metagraph.permitted_hotkeys, settings.allowed_hotkeys),
        unverified_body_bytes=settings.max_unverified_body_bytes, not_allowed=(
            f"holds no validator permit in this miner's metagraph (netuid {metagraph.snapshot.netuid}) and is not "
            "in its ALLOWED_HOTKEYS"),
    )
    if settings.miner_profile in FAULT_PROFILES:
        await serve_fault_miner(settings.miner_profile, await build_backend(settings), verifier,
                                settings.miner_host, settings.miner_port, max_body_bytes=settings.max_body_bytes,
                                limits=connection_limits(settings))
        return
    # a port in use: stop before the backend starts
    sock = bound_socket(settings.miner_host, settings.miner_port, settings=LISTEN)
    backend = apply_quality_profile(settings.miner_profile, await build_backend(settings), settings)
    # validators call only public axons read from the chain (``MetagraphView.from_settings``): a private one is said
    standing = Standing(hotkey.ss58_address, sock.getsockname()[1],
                        public_only=not settings.metagraph_file and not settings.private_axons)
    app = create_miner_app(backend, verifier, metagraph=metagraph, max_body_bytes=settings.max_body_bytes,
                           log_level=settings.log_level, standing=standing)
    logger.info(
        "miner starting hotkey={} port={} network={} backend={} profile={} models={}",
        hotkey.ss58_address, settings.miner_port, settings.network_label(), backend.name,
        settings.miner_profile, backend.models(),
    )
    standing.check(metagraph.snapshot)
    await serve_until_signal(app, settings.miner_host, settings.miner_port, sock=sock,
                             limits=connection_limits(settings))
