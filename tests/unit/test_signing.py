"""btauth/1 accept and reject cases, through the real SDK."""

from __future__ import annotations

import time

import pytest
from bittensor import http_auth

from shared.errors import ApiError
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import keypair

VALIDATOR = keypair("//Validator")
MINER = keypair("//Miner1")
STRANGER = keypair("//Stranger")
URL = "http://127.0.0.1:9/v1/chat/completions?x=1"
BODY = b'{"messages":[{"role":"user","content":"hi"}]}'


def verifier(allow: tuple[str, ...] = (), *, up: float = 0.0) -> RequestVerifier:
    """A miner's verifier; ``up``: the seconds it reports having run since it started (its monotonic clock)."""
    readings = iter([0.0])
    return RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}, allow),
                           monotonic=lambda: next(readings, up))


def verify(v: RequestVerifier, headers: dict[str, str], body: bytes = BODY, path: str = "/v1/chat/completions?x=1"):
    return v.verify(headers, body, method="POST", path=path)


def signed(signer=VALIDATOR, receiver=MINER.ss58_address, body=BODY) -> dict[str, str]:
    return Signer(signer).headers("POST", URL, body, receiver)


def test_valid_request_is_accepted() -> None:
    caller = verify(verifier(), signed())
    assert caller.hotkey_ss58 == VALIDATOR.ss58_address


def test_tampered_body_is_401() -> None:
    with pytest.raises(ApiError) as e:
        verify(verifier(), signed(), body=BODY.replace(b"hi", b"HI"))
    assert e.value.status == 401 and e.value.code == "BadSignature"


def test_tampered_query_is_401() -> None:
    with pytest.raises(ApiError) as e:
        verify(verifier(), signed(), path="/v1/chat/completions?x=2")
    assert e.value.status == 401


def test_replay_is_401() -> None:
    v, h = verifier(), signed()
    verify(v, h)
    with pytest.raises(ApiError) as e:
        verify(v, h)
    assert e.value.status == 401 and e.value.code == "ReplayedRequest"


def test_stale_request_is_401() -> None:
    old = time.time_ns() - 60 * 10**9
    h = http_auth.sign(VALIDATOR, method="POST", path="/v1/chat/completions?x=1", body=BODY,
                       receiver_ss58=MINER.ss58_address, nonce_ns=old)
    with pytest.raises(ApiError) as e:
        verify(verifier(), h)
    assert e.value.status == 401 and e.value.code == "StaleRequest"


@pytest.mark.parametrize(("offset_s", "says"), [
    (-30, "nonce is 30.0s old, past the 10s freshness window: the sender's clock is behind the receiver's"),
    (-300, "nonce is 300.0s old"),
    (30, "nonce is 30.0s in the future, past the 2s allowed skew: the sender's clock is ahead of the receiver's"),
    (300, "nonce is 300.0s in the future"),
])
def test_a_sender_whose_clock_is_off_is_told_by_how_much(offset_s: int, says: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A validator 30 s or 5 min off was refused with "older than the 10s freshness window" whatever the
    offset, and "in the future" named no number: neither operator could tell how far off, or whose clock."""
    behind = Signer(VALIDATOR, clock=lambda: time.time_ns() - 9 * 10**9).headers("POST", URL, BODY, MINER.ss58_address)
    assert verify(verifier(up=60), behind).hotkey_ss58 == VALIDATOR.ss58_address, "9 s behind is still fresh"
    fixed = 1_800_000_000 * 10**9
    skewed = Signer(VALIDATOR, clock=lambda: fixed + offset_s * 10**9).headers("POST", URL, BODY, MINER.ss58_address)
    monkeypatch.setattr(time, "time_ns", lambda: fixed + 40_000)  # the receiver's clock, right
    with pytest.raises(ApiError) as e:
        verify(verifier(), skewed)
    assert e.value.status == 401 and e.value.code == "StaleRequest"
    assert says in e.value.message and "NTP" in e.value.message


def test_wrong_receiver_is_403() -> None:
    with pytest.raises(ApiError) as e:
        verify(verifier(), signed(receiver=STRANGER.ss58_address))
    assert e.value.status == 403 and e.value.code == "WrongReceiver"


def test_non_validator_caller_is_403() -> None:
    with pytest.raises(ApiError) as e:
        verify(verifier(), signed(signer=STRANGER))
    assert e.value.status == 403 and e.value.code == "NotAValidator"


def test_allow_listed_caller_is_accepted() -> None:
    caller = verify(verifier(allow=(STRANGER.ss58_address,)), signed(signer=STRANGER))
    assert caller.hotkey_ss58 == STRANGER.ss58_address


def test_unsigned_request_is_400() -> None:
    with pytest.raises(ApiError) as e:
        verify(verifier(), {})
    assert e.value.status == 400 and e.value.code == "MalformedAuth"


def test_permit_lost_after_metagraph_refresh_is_403() -> None:
    permitted = {VALIDATOR.ss58_address}
    v = RequestVerifier(MINER.ss58_address, Authorizer(lambda: permitted))
    verify(v, signed())
    permitted.clear()
    with pytest.raises(ApiError) as e:
        verify(v, signed())
    assert e.value.status == 403


def test_the_validators_refusal_names_api_hotkeys_not_a_permit() -> None:
    """``/scoring`` takes only its API processes' hotkeys: its 403 says so (it spoke of validator permits,
    which play no part there)."""
    from neurons.validator.app import scoring_verifier

    api = scoring_verifier(MINER.ss58_address, [VALIDATOR.ss58_address])
    assert verify(api, signed()).hotkey_ss58 == VALIDATOR.ss58_address
    with pytest.raises(ApiError) as e:
        verify(api, signed(signer=STRANGER))
    assert e.value.status == 403 and "is not one of API_HOTKEYS" in e.value.message and "permit" not in e.value.message


def test_a_request_signed_before_the_receiver_started_is_refused_saying_why() -> None:
    """Its nonce store starts empty: a request the previous process took, replayed to the new one within the
    freshness window, was accepted again. Refused (401, OpenAI-shaped) while it could still be fresh."""
    h = Signer(VALIDATOR, clock=lambda: time.time_ns() - 3 * 10**9).headers("POST", URL, BODY, MINER.ss58_address)
    with pytest.raises(ApiError) as e:
        verify(verifier(up=1), h)
    assert e.value.status == 401 and e.value.code == "SignedBeforeStart"
    assert "older than this receiver's start" in e.value.message and "sign the request again" in e.value.message
    assert e.value.body()["error"]["code"] == "SignedBeforeStart"
    assert verify(verifier(up=1), signed()).hotkey_ss58 == VALIDATOR.ss58_address, "signed after the start"
    assert verify(verifier(up=12.5), h).hotkey_ss58 == VALIDATOR.ss58_address, "past the window: a lagging clock"


def test_the_start_window_is_on_the_monotonic_clock() -> None:
    """A wall clock stepped back after the start (its start now "in the future") refuses no one past 12 s."""
    base = time.time_ns()
    wall, up = iter([base + 300 * 10**9]), iter([0.0])  # started on a clock 5 min ahead, then NTP stepped it back
    v = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}),
                        wall=lambda: next(wall, time.time_ns()), monotonic=lambda: next(up, 13.0))
    assert verify(v, signed()).hotkey_ss58 == VALIDATOR.ss58_address
