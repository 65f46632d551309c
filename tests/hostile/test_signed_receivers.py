"""Every btauth/1 receiver rejects what it must: replay, stale or future nonce, wrong receiver,
tampered body or path, malformed or duplicated headers, unregistered or non-permit hotkeys.

Receivers: the reference miner (chat, availability), a fault miner (same gate in
front of its misbehaviour) and the validator's ``/scoring``. Real sr25519
signatures, real aiohttp servers; a rejected request must leave no trace
(the scoring queue stays empty).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from bittensor import http_auth
from multidict import CIMultiDict

from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.miner.faults import create_fault_app
from neurons.validator.app import ValidatorContext, create_validator_app
from neurons.validator.availability import AvailabilityBook
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring_queue import ScoringQueue
from neurons.validator.tasks import default_registry
from shared.metagraph import MetagraphView
from shared.signing import Authorizer, RequestVerifier
from tests.helpers import StaticSource, keypair, serve_app, snapshot

VALIDATOR, MINER, OTHER_MINER, STRANGER = (keypair(u) for u in ("//Validator", "//RxMiner", "//RxMiner2",
                                                                  "//Stranger"))
CHAT = {"messages": [{"role": "user", "content": "hi"}], "seed": 1, "task": "InferenceTask"}
SNAP = snapshot(VALIDATOR.ss58_address, {1: (MINER.ss58_address, None), 2: (OTHER_MINER.ss58_address, None)})


@dataclass
class Receiver:
    name: str
    path: str
    body: bytes
    hotkey: str
    ok_status: int


def _view() -> MetagraphView:
    view = MetagraphView(StaticSource(SNAP))
    view.snapshot = SNAP
    return view


def miner_verifier() -> RequestVerifier:
    # Authorised: validator-permit holders of the metagraph (uid 0 only), as ``sn1 miner`` does.
    return RequestVerifier(MINER.ss58_address, Authorizer(_view().permitted_hotkeys))


@contextlib.asynccontextmanager
async def served(name: str) -> AsyncIterator[tuple[str, Receiver, ScoringQueue | None]]:
    queue: ScoringQueue | None = None
    if name == "validator-scoring":
        queue = ScoringQueue(10)
        ctx = ValidatorContext(book=AvailabilityBook(), scoring_queue=queue,
                               verifier=RequestVerifier(VALIDATOR.ss58_address,
                                                        Authorizer(lambda: (), [VALIDATOR.ss58_address])),
                               scores=ScoreBook(default_registry().probabilities), metagraph=_view())
        app = create_validator_app(ctx)
        payload = {"body": CHAT, "uids": [1], "chunks": {"1": []}, "timings": {"1": []}, "created_at": time.time()}
        rx = Receiver(name, "/scoring", json.dumps(payload).encode(), VALIDATOR.ss58_address, 202)
    elif name == "fault-miner-chat":
        app = create_fault_app("http500", DeterministicBackend(), miner_verifier())
        rx = Receiver(name, "/v1/chat/completions", json.dumps(CHAT).encode(), MINER.ss58_address, 500)
    else:
        app = create_miner_app(DeterministicBackend(), miner_verifier())
        path = "/availability" if name == "miner-availability" else "/v1/chat/completions"
        rx = Receiver(name, path, b"{}" if path == "/availability" else json.dumps(CHAT).encode(),
                      MINER.ss58_address, 200)
    async with serve_app(app) as url:
        yield url, rx, queue


def sign(rx: Receiver, *, signer=VALIDATOR, receiver: str | None = None, body: bytes | None = None,
         path: str | None = None, nonce_ns: int | None = None) -> dict[str, str]:
    return http_auth.sign(signer, method="POST", path=path or rx.path, body=rx.body if body is None else body,
                          receiver_ss58=receiver or rx.hotkey, nonce_ns=nonce_ns)


Attack = Callable[[Receiver], tuple[CIMultiDict, bytes, str | None]]  # headers, body, path override
NOW = time.time_ns

ATTACKS: dict[str, tuple[Attack, int, str]] = {
    "stale nonce": (lambda rx: (CIMultiDict(sign(rx, nonce_ns=NOW() - 60 * 10**9)), rx.body, None),
                    401, "StaleRequest"),
    "future nonce": (lambda rx: (CIMultiDict(sign(rx, nonce_ns=NOW() + 60 * 10**9)), rx.body, None),
                     401, "StaleRequest"),
    "wrong receiver": (lambda rx: (CIMultiDict(sign(rx, receiver=STRANGER.ss58_address)), rx.body, None),
                       403, "WrongReceiver"),
    "tampered body": (lambda rx: (CIMultiDict(sign(rx)), rx.body.replace(b"hi", b"ho").replace(b"{}", b"[]"), None),
                      401, "BadSignature"),
    "tampered path": (lambda rx: (CIMultiDict(sign(rx, path=rx.path + "?x=1")), rx.body, None), 401, "BadSignature"),
    "unregistered hotkey": (lambda rx: (CIMultiDict(sign(rx, signer=STRANGER)), rx.body, None), 403, "NotAValidator"),
    "registered, no permit": (lambda rx: (CIMultiDict(sign(rx, signer=OTHER_MINER)), rx.body, None),
                              403, "NotAValidator"),
    "missing signature": (lambda rx: (CIMultiDict({k: v for k, v in sign(rx).items()
                                                   if k.lower() != "x-bittensor-signature"}), rx.body, None),
                          400, "MalformedAuth"),
    "garbage signature": (lambda rx: (CIMultiDict({**sign(rx), "X-Bittensor-Signature": "0x" + "ab" * 64}),
                                      rx.body, None), 401, "BadSignature"),
    "non-hex signature": (lambda rx: (CIMultiDict({**sign(rx), "X-Bittensor-Signature": "zz\u00e9"}),
                                      rx.body, None), 400, "MalformedAuth"),
    "nonce overflow": (lambda rx: (CIMultiDict({**sign(rx), "X-Bittensor-Nonce": "9" * 400}), rx.body, None),
                       401, "StaleRequest"),
    "negative nonce": (lambda rx: (CIMultiDict({**sign(rx), "X-Bittensor-Nonce": "-5"}), rx.body, None),
                       401, "StaleRequest"),
}


def _duplicated(rx: Receiver) -> tuple[CIMultiDict, bytes, str | None]:
    """Two signature headers: a valid one and a forged one; never accepted, whichever is read."""
    headers = CIMultiDict(sign(rx))
    headers.add("X-Bittensor-Hotkey", STRANGER.ss58_address)
    return headers, rx.body, None


RECEIVERS = ["miner-chat", "miner-availability", "fault-miner-chat", "validator-scoring"]


async def _post(url: str, path: str, headers: CIMultiDict, body: bytes) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(url + path, data=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize("receiver", RECEIVERS)
async def test_receiver_rejects_every_forgery_and_accepts_only_the_real_thing(receiver: str) -> None:
    async with served(receiver) as (url, rx, queue):
        for name, (attack, status, code) in ATTACKS.items():
            headers, body, _ = attack(rx)
            got, err = await _post(url, rx.path, headers, body)
            expected_code = "WrongReceiver" if name == "wrong receiver" else code
            assert (got, err["error"]["code"]) == (status, expected_code), (receiver, name, err)
            assert set(err["error"]) == {"message", "type", "code", "param"}
        headers, body, _ = _duplicated(rx)
        got, err = await _post(url, rx.path, headers, body)
        assert 400 <= got < 500, (receiver, "duplicated hotkey header", got, err)
        if queue is not None:
            assert queue.empty(), "a rejected request must not reach the scoring queue"
        # The genuine request passes; replaying it byte for byte does not.
        genuine = CIMultiDict(sign(rx))
        got, _ = await _post(url, rx.path, genuine, rx.body)
        assert got == rx.ok_status, (receiver, got)
        got, err = await _post(url, rx.path, genuine, rx.body)
        assert (got, err["error"]["code"]) == (401, "ReplayedRequest"), (receiver, err)
        if queue is not None:
            assert queue.qsize() == 1, "only the genuine request is queued, the replay is not"
