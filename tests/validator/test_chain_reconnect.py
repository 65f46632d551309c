"""The validator's chain client after the chain endpoint went away and came back.

The weight sink (and the metagraph source) build one SDK client and keep it for the run. That client's
websocket session (``bittensor._transport.rpc.RpcSession``, the one every ``bt.Client`` uses) fails a request
while no endpoint answers and dials again at the next one, so the kept client recovers with the node: no
restart of the validator. These tests hold that, over a real websocket on 127.0.0.1: the fake node answers
storage reads as JSON (the SCALE layer is the only part faked), so a stop of the node is a real refused dial.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import bittensor as bt
import pytest
from bittensor._transport.rpc import RpcSession
from bittensor.sp_core import Keypair
from websockets.asyncio.server import ServerConnection, serve

from neurons.validator.loops import metagraph_cycle, weights_cycle
from neurons.validator.scores import ScoreBook
from neurons.validator.weights import ChainWeightSink
from shared.metagraph import ChainMetagraphSource, MetagraphView
from tests.ports import free_port
from tests.validator.test_scores_weights import DevWallet, FakeSubstrate, _book, _graph, chain_storage


class WsSubstrate(FakeSubstrate):
    """``FakeSubstrate`` whose storage reads go to a node over the SDK's own websocket session."""

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.session = RpcSession(url, fallback_urls=[])

    async def connect(self) -> None:
        await self.session.connect()

    async def close(self) -> None:
        await self.session.close()

    async def query(self, module, name, params=None, block_hash=None):
        return await self.session.request("fake_query", [module, name, list(params or ())])

    async def runtime_call(self, api, method, params, block_hash=None):
        return await self.session.request("fake_query", [api, method, list(params)])


@asynccontextmanager
async def fake_node(port: int, storage: dict) -> AsyncIterator[None]:
    """A node on 127.0.0.1 answering ``fake_query`` from ``storage``; leaving the block stops it (and drops its
    connections), as a node restarted or a lost endpoint does."""
    async def answer(ws: ServerConnection) -> None:
        async for message in ws:
            frame = json.loads(message)
            value = storage.get(tuple(frame["params"][:2]) + (tuple(frame["params"][2]),))
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": frame["id"], "result": value}))

    server = await serve(answer, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


def sink_at(port: int, uri: str, substrate: type[WsSubstrate] = WsSubstrate,
            ) -> tuple[ChainWeightSink, dict, list[WsSubstrate]]:
    """A chain weight sink of ``uri``'s validator whose clients dial a node on ``port``: the sink, the storage the
    node is to answer from, and the substrates of the clients the sink built (in order)."""
    cold = Keypair.create_from_uri(uri)
    wallet = DevWallet(cold, cold, Keypair.create_from_uri(uri + "//validator"))
    storage = chain_storage(wallet.hotkey.ss58_address, last_update=850)
    clients: list[WsSubstrate] = []

    def client() -> bt.Client:
        clients.append(substrate(f"ws://127.0.0.1:{port}", storage=storage))
        return bt.Client("local", substrate=clients[-1])

    return ChainWeightSink(client, wallet, 1), storage, clients


async def test_weights_are_set_again_once_the_chain_endpoint_is_back_without_a_restart() -> None:
    port = free_port()
    sink, storage, clients = sink_at(port, "//Eve")
    book = _book(1.0, 0.5, 0.25)
    try:
        async with fake_node(port, storage):
            assert await weights_cycle(book, sink, _graph(3), power=1.0)
            first = book.last_weights_set_at
        # the endpoint is gone: the cycle fails and says why (/health weights_not_set), it does not hang
        with pytest.raises(Exception, match="could not connect"):  # the weights loop logs it, and goes on
            await weights_cycle(book, sink, _graph(3), power=1.0)
        assert book.weights_not_set is not None and "could not connect" in book.weights_not_set
        async with fake_node(port, storage):
            assert await weights_cycle(book, sink, _graph(3), power=1.0), "set again by the same client"
        assert book.weights_not_set is None and book.last_weights_set_at is not None
        assert first is not None and book.last_weights_set_at >= first
        assert len(clients) == 1 and len(clients[0].submitted) == 2, "one client for the run, two sets"
    finally:
        await sink.close()


def metagraph_storage(block: int) -> dict:
    """The subnet's metagraph as the runtime API gives it (decoded), for netuid 1 at ``block``."""
    hotkeys = [Keypair.create_from_uri(f"//Eve//miner{uid}").ss58_address for uid in range(3)]
    graph = {"hotkeys": hotkeys, "coldkeys": hotkeys, "validator_permit": [True, False, False], "block": block,
             "tempo": 360, "last_step": block, "blocks_since_last_step": 0, "owner_hotkey": hotkeys[0],
             "owner_coldkey": hotkeys[0], "network_registered_at": 1}
    return {("SubnetInfoRuntimeApi", "get_metagraph", (1,)): graph}


async def test_the_metagraph_is_read_again_once_the_chain_endpoint_is_back_without_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    clients: list[WsSubstrate] = []
    sdk_client = bt.Client

    def client(network: str) -> bt.Client:  # what ChainMetagraphSource builds: bt.Client(SUBTENSOR_NETWORK)
        clients.append(WsSubstrate(f"ws://127.0.0.1:{port}"))
        return sdk_client(network, substrate=clients[-1])

    monkeypatch.setattr(bt, "Client", client)
    view = MetagraphView(ChainMetagraphSource("local", 1))
    scores = ScoreBook({"A": 1.0})
    try:
        async with fake_node(port, metagraph_storage(100)):
            await view.first_refresh()
        with pytest.raises(Exception, match="could not connect"):  # a failed cycle: the loop goes on
            await metagraph_cycle(view, scores)
        assert view.snapshot.block == 100 and len(view.snapshot.neurons) == 3, "the last metagraph is kept"
        async with fake_node(port, metagraph_storage(101)):
            await metagraph_cycle(view, scores)
        assert view.snapshot.block == 101 and len(clients) == 1, "read again by the same client"
    finally:
        await view.source.close()


class DialedSubstrate(WsSubstrate):
    """``WsSubstrate`` as the SDK's own substrate (``RpcSubstrate``) behaves around a connect: usable only after one
    that worked. A connect that fails leaves it unconnected (``RpcSubstrate.connect`` closes the connection it
    tried), and every read then raises ``ConnectionNotReady`` ("Client connection is not open ...") until a
    connect works; ``RpcSession`` alone would dial again at the next request and hide that."""

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.open = False
        self.closed = False

    async def connect(self) -> None:
        await super().connect()
        self.open = True

    async def close(self) -> None:
        self.open, self.closed = False, True
        await super().close()

    def _ready(self) -> None:
        if not self.open:
            raise bt.ConnectionNotReady("Client connection is not open. Use `async with Client(...)` or call "
                                        "`await client.connect()` first.")

    async def query(self, module, name, params=None, block_hash=None):
        self._ready()
        return await super().query(module, name, params, block_hash)

    async def runtime_call(self, api, method, params, block_hash=None):
        self._ready()
        return await super().runtime_call(api, method, params, block_hash)


async def test_a_metagraph_source_whose_connect_failed_connects_anew_once_the_endpoint_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ChainMetagraphSource`` kept its client before the connect: one that failed (the node not up yet) stayed,
    never connected, and every later read went through it and failed (``ConnectionNotReady``) with the node back.
    The client is kept once connected; one whose connect failed is closed and the next read builds another."""
    port = free_port()
    clients: list[DialedSubstrate] = []
    sdk_client = bt.Client

    def client(network: str) -> bt.Client:
        clients.append(DialedSubstrate(f"ws://127.0.0.1:{port}"))
        return sdk_client(network, substrate=clients[-1])

    monkeypatch.setattr(bt, "Client", client)
    view = MetagraphView(ChainMetagraphSource("local", 1))
    try:
        with pytest.raises(Exception, match="could not connect"):
            await view.refresh()
        async with fake_node(port, metagraph_storage(100)):
            await view.refresh()
            await view.refresh()
        assert view.snapshot.block == 100 and len(view.snapshot.neurons) == 3
        assert len(clients) == 2 and clients[0].closed and clients[1].open, "one client per connect that worked"
    finally:
        await view.source.close()


async def test_a_weight_sink_whose_connect_failed_at_start_sets_weights_once_the_endpoint_answers() -> None:
    """The start's read of the chain's limits finds no node: said in ``limits.error``, the client that failed to
    connect closed, and the first weights cycle with the node up connects anew and sets."""
    port = free_port()
    sink, storage, clients = sink_at(port, "//Ferdie", DialedSubstrate)
    try:
        assert "could not connect" in ((await sink.read_limits()).error or "")
        async with fake_node(port, storage):
            assert await weights_cycle(_book(1.0, 0.5), sink, _graph(2), power=1.0)
        assert len(clients) == 2 and isinstance(clients[0], DialedSubstrate) and clients[0].closed
        assert len(clients[1].submitted) == 1
    finally:
        await sink.close()
