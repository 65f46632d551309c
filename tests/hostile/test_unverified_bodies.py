"""Signed receivers (miner chat, validator ``/scoring``) decide on the headers before reading a body.

What the headers alone decide (receiver, freshness, a caller we take) is answered while the body is still
unsent, and the connection closed; bodies with headers that pass are read within a per-process budget of
unverified bytes (``ByteBudget``), past which a 503; an unauthorised hotkey's valid signature leaves no
nonce behind. Real servers on 127.0.0.1, raw sockets, real sr25519 signatures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import pytest
from bittensor import http_auth
from loguru import logger

from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.validator.app import ValidatorContext, create_validator_app, scoring_verifier
from neurons.validator.availability import AvailabilityBook
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring_queue import ScoringQueue
from neurons.validator.tasks import default_registry
from shared.byte_budget import ByteBudget
from shared.metagraph import MetagraphView
from shared.signing import Authorizer, RequestVerifier
from tests.helpers import StaticSource, keypair, serve_app, snapshot

VALIDATOR, MINER, OTHER_MINER, STRANGER = (keypair(u) for u in ("//Validator", "//BodyMiner", "//BodyMiner2",
                                                                  "//BodyStranger"))
SNAP = snapshot(VALIDATOR.ss58_address, {1: (MINER.ss58_address, None), 2: (OTHER_MINER.ss58_address, None)})
BODY_CAP = 1 << 20
BUDGET = 3 * BODY_CAP
PATHS = {"miner": "/v1/chat/completions", "validator": "/scoring"}


def _view() -> MetagraphView:
    view = MetagraphView(StaticSource(SNAP))
    view.snapshot = SNAP
    return view

WAIT = 0.3


@contextlib.asynccontextmanager
async def receiver(name: str) -> AsyncIterator[tuple[int, RequestVerifier, str]]:
    """The receiver ``name`` with a 1 MiB body cap and a 3 MiB unverified-bytes budget: port, verifier, hotkey."""
    if name == "miner":
        verifier = RequestVerifier(MINER.ss58_address, Authorizer(_view().permitted_hotkeys),
                                   unverified_body_bytes=BUDGET)
        app, hotkey = create_miner_app(DeterministicBackend(), verifier, max_body_bytes=BODY_CAP), MINER.ss58_address
    else:
        verifier = scoring_verifier(VALIDATOR.ss58_address, [VALIDATOR.ss58_address], unverified_body_bytes=BUDGET)
        ctx = ValidatorContext(book=AvailabilityBook(), scoring_queue=ScoringQueue(10), verifier=verifier,
                               scores=ScoreBook(default_registry().probabilities), metagraph=_view())
        app, hotkey = create_validator_app(ctx, max_body_bytes=BODY_CAP), VALIDATOR.ss58_address
    verifier.budget.wait = WAIT  # how long a request past the budget waits for room (5 s in a server)
    async with serve_app(app) as url:
        yield int(url.rsplit(":", 1)[1]), verifier, hotkey


def head(path: str, headers: dict[str, str], length: int) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{lines}\r\n").encode()


def signed(path: str, body: bytes, receiver: str, *, signer=VALIDATOR, nonce_ns: int | None = None) -> dict[str, str]:
    return http_auth.sign(signer, method="POST", path=path, body=body, receiver_ss58=receiver, nonce_ns=nonce_ns)


async def answer_with_body_unsent(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send the headers of a 1 MiB body and 1 KiB of it; the status and body of the answer, and that the
    connection then closes (the rest of the body, sent after, is dropped)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head(path, headers, BODY_CAP) + b"x" * 1024)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 2)
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        length = int(next(line.split(b":")[1] for line in rest.split(b"\r\n") if line.lower().startswith(b"content-length")))
        body = await asyncio.wait_for(reader.readexactly(length), 2)
        with contextlib.suppress(ConnectionError):
            writer.write(b"y" * 65536)  # more of the body, after the answer: never parsed
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 2) == b"", "the connection closes after the answer"
        return int(status.split()[1]), body
    finally:
        writer.close()


REFUSALS = {
    "wrong receiver": (lambda path, rx: signed(path, b"{}", STRANGER.ss58_address), 403, "WrongReceiver"),
    "stale": (lambda path, rx: signed(path, b"{}", rx, nonce_ns=time.time_ns() - 60 * 10**9), 401, "StaleRequest"),
    "unknown hotkey": (lambda path, rx: signed(path, b"{}", rx, signer=STRANGER), 403, "NotAValidator"),
    "registered, no permit": (lambda path, rx: signed(path, b"{}", rx, signer=OTHER_MINER), 403, "NotAValidator"),
}


@pytest.mark.parametrize("refusal", REFUSALS, ids=REFUSALS.keys())
@pytest.mark.parametrize("name", PATHS)
async def test_what_the_headers_decide_is_answered_before_the_body_is_read(name: str, refusal: str) -> None:
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(str(m)), level="ERROR")
    try:
        async with receiver(name) as (port, verifier, hotkey):
            make, status, code = REFUSALS[refusal]
            got, body = await answer_with_body_unsent(port, PATHS[name], make(PATHS[name], hotkey))
            assert (got, json.loads(body)["error"]["code"]) == (status, code)
            assert verifier.budget.peak == 0, "no byte of its body was taken to be read"
    finally:
        logger.remove(sink)
    assert not errors, errors  # the dropped rest of the body is no "feed_data after feed_eof" traceback


async def fill_the_budget(port: int, name: str, hotkey: str) -> tuple[dict[str, str], list]:
    """Headers that pass the checks (a forged signature) and three 1 MiB bodies held unsent: the whole budget."""
    forged = {**signed(PATHS[name], b"{}", hotkey), "X-Bittensor-Signature": "0x" + "ab" * 64}
    held = []
    for _ in range(3):  # 3 x 1 MiB: the budget
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head(PATHS[name], forged, BODY_CAP) + b"x" * 4096)
        held.append((reader, writer))
    await asyncio.sleep(0.2)
    return forged, held


@pytest.mark.parametrize("name", PATHS)
async def test_unverified_bytes_in_flight_stay_within_the_budget(name: str) -> None:
    """Headers anyone can forge (a validator's hotkey, ours, a fresh nonce, a garbage signature) pass the header
    checks: held bodies take the budget, and past it the next waits for room, then is a 503, its body unread."""
    async with receiver(name) as (port, verifier, hotkey):
        forged, held = await fill_the_budget(port, name, hotkey)
        assert verifier.budget.in_flight == BUDGET
        got, body = await answer_with_body_unsent(port, PATHS[name], forged)
        assert (got, json.loads(body)["error"]["code"]) == (503, "server_busy")
        assert verifier.budget.peak == BUDGET
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.2)
        assert verifier.budget.in_flight == 0
        # the budget back, a forged body read whole is the signature's 401
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head(PATHS[name], forged, 2) + b"{}")
        status = await asyncio.wait_for(reader.readline(), 2)
        writer.close()
        assert status.split()[1] == b"401", status


@pytest.mark.parametrize("name", PATHS)
async def test_an_unauthorised_hotkeys_valid_signature_stores_no_nonce(name: str) -> None:
    """A stranger's request, valid but for who sent it, sent twice: 403 both times (not 401 ReplayedRequest the
    second), and its nonce is not in the store."""
    async with receiver(name) as (port, verifier, hotkey):
        headers = signed(PATHS[name], b"{}", hotkey, signer=STRANGER)
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head(PATHS[name], headers, 2) + b"{}")
            status = await asyncio.wait_for(reader.readline(), 2)
            writer.close()
            assert status.split()[1] == b"403", status
        nonce = int(headers["X-Bittensor-Nonce"])
        assert verifier.nonce_store.check_and_store(STRANGER.ss58_address, nonce), "its nonce was stored"


@pytest.mark.parametrize("name", PATHS)
async def test_a_request_past_the_budget_waits_for_room_before_it_is_refused(name: str) -> None:
    """A burst of the API's own large requests (3 MiB images, one to each miner) was refused at once past the
    budget (503s the caller saw as 502s) while the room came back within milliseconds: it waits for it."""
    async with receiver(name) as (port, verifier, hotkey):
        verifier.budget.wait = 2.0
        forged, held = await fill_the_budget(port, name, hotkey)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head(PATHS[name], forged, 2) + b"{}")
        await asyncio.sleep(0.3)
        held[0][1].close()  # room comes back while it waits
        status = await asyncio.wait_for(reader.readline(), 3)
        writer.close()
        for _, w in held[1:]:
            w.close()
        assert status.split()[1] == b"401", status  # read and verified (a forged signature), not a 503


async def test_a_request_cancelled_as_room_frees_is_cancelled_and_takes_no_room() -> None:
    """A request waiting for room and cancelled (its caller gone) in the loop turn the room came: with
    ``asyncio.wait_for`` (3.11) the cancel was swallowed, the request took the room and went on as if never
    cancelled. Whatever the moment of the cancel, it must end cancelled, or done before it came."""
    for turns in range(8):
        budget = ByteBudget(100, wait=5.0)
        assert await budget.take(100)
        waiting = asyncio.create_task(budget.take(100))
        await asyncio.sleep(0.01)  # it waits for room
        budget.give(100)
        for _ in range(turns):
            await asyncio.sleep(0)
        if waiting.done():
            assert waiting.result() is True and budget.in_flight == 100
            continue
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert budget.in_flight == 0, f"a cancelled request took room ({turns} turns)"


BODIES = {"miner": {"messages": [{"role": "user", "content": "hi"}], "seed": 1},
          "validator": {"body": {"messages": [{"role": "user", "content": "hi"}], "seed": 1}, "uids": [1, 2],
                        "request_id": "slow-body", "created_at": time.time()}}


@pytest.mark.parametrize("name", PATHS)
async def test_a_body_that_arrives_slowly_is_judged_fresh_as_its_headers_came(name: str) -> None:
    """Signed 9 s ago (the window is 10 s), its body taking 1.5 s more to arrive: a payload of a few MB on a thin
    link. Freshness was judged again once the body was in: refused as StaleRequest every time it was sent (the
    sender told to check its clock), and the API's scoring outbox held it, and every payload behind it, for good."""
    async with receiver(name) as (port, verifier, hotkey):
        verifier.started_ns -= 60 * 10**9  # up for a minute: a nonce of 9 s ago is no SignedBeforeStart
        body = json.dumps(BODIES[name]).encode()
        headers = signed(PATHS[name], body, hotkey, nonce_ns=time.time_ns() - 9 * 10**9)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head(PATHS[name], headers, len(body)))
            with contextlib.suppress(ConnectionError):  # a receiver that answers early closes the connection
                for start in range(0, len(body), 16):  # over 1.5 s
                    writer.write(body[start:start + 16])
                    await writer.drain()
                    await asyncio.sleep(1.5 / (len(body) / 16))
            status = await asyncio.wait_for(reader.readline(), 5)
            rest = await asyncio.wait_for(reader.read(4096), 5)
        finally:
            writer.close()
    assert int(status.split()[1]) == {"miner": 200, "validator": 202}[name], rest.decode(errors="replace")


async def test_a_permit_lost_while_the_body_came_is_refused_after_it() -> None:
    """The caller is checked again once its body is read: a metagraph refresh that took its permit while the body
    was on its way refuses the request (403 ``NotAValidator``), and its nonce is not kept."""
    permitted = {VALIDATOR.ss58_address}
    verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: permitted), unverified_body_bytes=BUDGET)
    async with serve_app(create_miner_app(DeterministicBackend(), verifier, max_body_bytes=BODY_CAP)) as url:
        body = json.dumps({"model": "any", "messages": [{"role": "user", "content": "hi"}]}).encode()
        path = PATHS["miner"]
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        try:
            writer.write(head(path, signed(path, body, MINER.ss58_address), len(body)) + body[:10])
            await writer.drain()
            for _ in range(200):  # its headers passed: its body is being read, within the budget
                if verifier.budget.in_flight:
                    break
                await asyncio.sleep(0.01)
            assert verifier.budget.in_flight
            permitted.clear()  # the metagraph refreshed: the validator's permit is gone
            writer.write(body[10:])
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(next(line.split(b":")[1] for line in rest.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            answer = json.loads(await asyncio.wait_for(reader.readexactly(length), 5))
        finally:
            writer.close()
    assert int(status.split()[1]) == 403 and answer["error"]["code"] == "NotAValidator"
    assert len(verifier.nonce_store) == 0
