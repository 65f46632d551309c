"""The replay window when the receiver's wall clock steps back (NTP correcting a host that ran ahead)."""

from __future__ import annotations

import time

import pytest

from shared.errors import ApiError
from shared.nonce_store import NonceStore
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import keypair

VALIDATOR, MINER = keypair("//Validator"), keypair("//Miner1")
URL = "http://127.0.0.1:9/v1/chat/completions"
BODY = b'{"messages":[{"role":"user","content":"hi"}]}'
S = 10**9  # ns a second


class Clocks:
    """The receiver's wall clock (ns) and monotonic clock (s), moved by the test."""

    def __init__(self) -> None:
        self.wall, self.mono = 1_800_000_000 * S, 1000.0

    def wait(self, seconds: float) -> None:
        self.wall += int(seconds * S)
        self.mono += seconds


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> Clocks:
    """``time.time_ns`` and ``time.monotonic`` as the receiver reads them (the SDK's and ours)."""
    c = Clocks()
    monkeypatch.setattr(time, "time_ns", lambda: c.wall)
    monkeypatch.setattr(time, "monotonic", lambda: c.mono)
    return c


def verify(v: RequestVerifier, headers: dict[str, str]) -> str:
    return v.verify(headers, BODY, method="POST", path="/v1/chat/completions").hotkey_ss58


def test_a_request_taken_before_the_clock_stepped_back_is_not_taken_again(clocks: Clocks) -> None:
    """The SDK's store forgot a nonce 60 s after storing it (monotonic), while freshness is on the wall clock:
    stepped back 2 minutes, the wall clock made a captured request fresh again 2 minutes later, and it was
    accepted a second time. Nor is everything refused after the step: a sender whose clock agrees is served."""
    v = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
    clocks.wait(60)  # long past its start
    captured = Signer(VALIDATOR, clock=lambda: clocks.wall).headers("POST", URL, BODY, MINER.ss58_address)
    assert verify(v, captured) == VALIDATOR.ss58_address
    clocks.wall -= 120 * S  # NTP steps the receiver's clock back 2 minutes
    clocks.wait(1)
    now_signed = Signer(VALIDATOR, clock=lambda: clocks.wall).headers("POST", URL, BODY, MINER.ss58_address)
    assert verify(v, now_signed) == VALIDATOR.ss58_address, "senders on the corrected clock are served"
    clocks.wait(120)  # the wall clock is back where the captured request was signed, 1 s later
    with pytest.raises(ApiError) as e:
        verify(v, captured)
    assert e.value.status == 401 and e.value.code == "ReplayedRequest"


def test_a_nonce_held_past_its_retention_is_dropped_once_the_wall_clock_passes_it() -> None:
    """What a step back makes it hold is bounded: each is dropped once the wall clock is past it."""
    c = Clocks()
    store = NonceStore(60.0, wall=lambda: c.wall, monotonic=lambda: c.mono)
    assert store.check_and_store("a", c.wall) and not store.check_and_store("a", c.wall)
    signed = c.wall
    c.wall -= 300 * S
    c.wait(61)
    assert not store.check_and_store("a", signed), "held: the wall clock could take it again"
    c.wait(250)
    assert store.check_and_store("b", c.wall) and len(store) == 2, "still within 60 s of the wall clock"
    c.wait(50)  # the wall clock 61 s past it
    assert store.check_and_store("c", c.wall)
    assert ("a", signed) not in store._seen and len(store) == 2


def test_a_clock_stepped_forward_and_back_forgets_nothing_early() -> None:
    c = Clocks()
    store = NonceStore(60.0, wall=lambda: c.wall, monotonic=lambda: c.mono)
    signed = c.wall
    assert store.check_and_store("a", signed)
    c.wall += 3600 * S  # an hour ahead, then corrected within the minute
    c.wait(1)
    assert store.check_and_store("b", c.wall)
    c.wall -= 3600 * S
    c.wait(1)
    assert not store.check_and_store("a", signed)
