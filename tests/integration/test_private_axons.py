"""A miner's axon at a private address is never called by the API (nor by the validator, through the same view).

A hotkey publishes any IP it likes on chain: ``10.0.0.7``, ``127.0.0.2``, the cloud metadata address. Called as
published, a stranger's registration had the API and the validator POST their callers' prompts, signed, into their
own network: a validator's reference model server on ``127.0.0.1:8000`` answered them, and its answers were scored
as that miner's. The metagraph read from the chain now takes such a neuron as serving no axon (``PRIVATE_AXONS``
calls them, for a chain whose nodes share a private network); a metagraph file (the local network) is taken as
written.

Nothing here leaves the machine: the "public" address is 127.0.0.1 and the "private" one 127.0.0.2, as in the
media URL tests.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from loguru import logger

from api.app import create_api_app
from shared.metagraph import MetagraphView
from shared.settings import ApiSettings
from tests.helpers import (
    VALIDATOR_KP,
    Script,
    StaticSource,
    build_api_context,
    chunk,
    keypair,
    log_lines,
    post,
    scripted_miner_app,
    serve_app,
    snapshot,
    sse,
)


def loopback_only(address: str) -> bool:
    return address == "127.0.0.1"


def answering(text: str) -> Script:
    return Script(steps=[(0, s) for s in sse(chunk(text), chunk(finish="stop"))])


async def test_a_miner_whose_axon_is_a_private_address_is_never_called(tmp_path: Path) -> None:
    inside, outside = answering("secret"), answering("hello")
    lines, handler = log_lines("WARNING")
    try:
        async with contextlib.AsyncExitStack() as stack:
            private = await stack.enter_async_context(serve_app(scripted_miner_app(inside), host="127.0.0.2"))
            public = await stack.enter_async_context(serve_app(scripted_miner_app(outside)))
            snap = snapshot(VALIDATOR_KP.ss58_address, {1: (keypair("//Miner1").ss58_address, private[7:]),
                                                         2: (keypair("//Miner2").ss58_address, public[7:])})
            ctx = await build_api_context(tmp_path, snap, VALIDATOR_KP)
            stack.push_async_callback(ctx.client.session.close)
            ctx.metagraph = MetagraphView(StaticSource(snap), axons=loopback_only)  # as read from the chain
            await ctx.metagraph.refresh()
            secret, _ = await ctx.store.create_key(1000)
            url = await stack.enter_async_context(serve_app(create_api_app(ctx, run_background=False)))
            api = type("Api", (), {"url": url, "key": secret})()
            for _ in range(4):
                status, _, text = await post(api, {"model": "default", "messages": [{"role": "user", "content": "hi"}]})
                assert status == 200, text
                assert "hello" in text and "secret" not in text
    finally:
        logger.remove(handler)
    assert inside.calls == 0, "the API called an axon at a private address"
    assert outside.calls == 4
    said = [line for line in lines if "private address" in line]
    assert len(said) == 1 and f"uid 1 at {private[7:]}" in said[0] and "PRIVATE_AXONS" in said[0], lines


def test_private_axons_are_called_from_a_metagraph_file_or_when_the_operator_says_so(tmp_path: Path) -> None:
    """From the chain, an API or validator calls public axons only; a metagraph file (the local network, whose
    miners are on 127.0.0.1), ``PRIVATE_AXONS=true``, or a miner (which calls no miner) takes every axon."""
    chain = ApiSettings(_env_file=None)
    assert MetagraphView.from_settings(chain)._axons is not None
    assert MetagraphView.from_settings(ApiSettings(_env_file=None, private_axons=True))._axons is None
    assert MetagraphView.from_settings(ApiSettings(_env_file=None, metagraph_file=str(tmp_path / "m.json")))._axons \
        is None
    assert MetagraphView.from_settings(chain, calls_miners=False)._axons is None
