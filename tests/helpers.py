"""Test helpers: real servers on 127.0.0.1 (free ports), keypairs, a metagraph."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from bittensor.sp_core import Keypair

from shared.metagraph import MetagraphSnapshot, Neuron


def keypair(uri: str) -> Keypair:
    """A deterministic sr25519 keypair (``//Validator``, ``//Miner1``, ...)."""
    return Keypair.create_from_uri(uri)


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve ``app`` on a free port; yield its base URL; always clean up."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, shutdown_timeout=1.0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def snapshot(validator_hotkey: str, miners: dict[int, tuple[str, str | None]], *, incentives: dict[int, float] | None = None) -> MetagraphSnapshot:
    """uid 0 is the validator (permit); ``miners`` maps uid -> (hotkey, "ip:port" or None)."""
    neurons = [Neuron(uid=0, hotkey=validator_hotkey, axon=None, stake=1000.0, validator_permit=True)]
    for uid, (hk, axon) in sorted(miners.items()):
        neurons.append(Neuron(uid=uid, hotkey=hk, axon=axon, incentive=(incentives or {}).get(uid, 0.0)))
    return MetagraphSnapshot(netuid=1, block=1, neurons=tuple(neurons))


class StaticSource:
    """A MetagraphSource over a fixed snapshot (swap ``.snapshot`` to simulate a refresh)."""

    def __init__(self, snap: MetagraphSnapshot) -> None:
        self.snapshot = snap

    async def fetch(self) -> MetagraphSnapshot:
        return self.snapshot

    async def close(self) -> None:
        return None
