"""btauth/1 request signing and verification (``bittensor.http_auth``).

Every API->miner, validator->miner and API->validator request is signed by the
validator hotkey *for the receiver's hotkey*. Receivers first check what the
headers alone decide (shape, receiver binding, freshness, and that the claimed
caller is one they take: a validator-permit holder in their metagraph view, or an
explicit allow-list), then read the body, within a per-process budget of bytes
not yet verified, and verify the signature over it and the nonce against replays.
A stranger's request thus costs no body read, no sr25519 verify and no stored nonce.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from shared.byte_budget import ByteBudget
from shared.errors import ApiError
from shared.http import end_unread_body, http_error_code, read_raw
from shared.logging import printable
from shared.nonce_store import NonceStore
from shared.sdk import http_auth, parse_crypto_type
from shared.settings import UNVERIFIED_BODY_BYTES
from shared.ss58 import is_ss58

CALLER_KEY = web.RequestKey("btauth_caller", http_auth.Caller)
_SS58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]{46,48}")  # base58, the length of a substrate address


class Signer:
    """Signs outgoing requests with a cached hotkey keypair.

    Pass the keypair (``wallet.hotkey``), never the ``Wallet``: signing with a
    wallet re-reads the key file on every call (~1 ms instead of ~35 us).

    A plain keypair is signed with directly over ``http_auth.build_payload``
    (the normative btauth/1 bytes), the same headers ``http_auth.sign`` makes:
    ``sign`` first resolves its argument through runtime ``Protocol``
    ``isinstance`` checks, which cost more than the sr25519 signature itself.
    Anything else (a ``Wallet``, a custom signer) goes through ``http_auth.sign``.
    """

    def __init__(self, keypair: Any, *, clock: Callable[[], int] = time.time_ns) -> None:
        self._keypair = keypair
        self._clock = clock  # the nonce (ns since the epoch); tests give a host whose clock is off
        self.hotkey: str = keypair.ss58_address
        crypto_type = getattr(keypair, "crypto_type", None)
        direct = callable(getattr(keypair, "sign", None)) and not hasattr(keypair, "hotkey")
        self._scheme = http_auth.CRYPTO_TYPE_NAMES.get(crypto_type) if direct else None  # type: ignore[arg-type]

    def headers(self, method: str, url: str | URL, body: bytes, receiver: str) -> dict[str, str]:
        target = URL(url).raw_path_qs if not isinstance(url, URL) else url.raw_path_qs
        if self._scheme is None:
            return http_auth.sign(self._keypair, method=method, path=target, body=body, receiver_ss58=receiver,
                                  nonce_ns=self._clock())
        nonce = self._clock()
        payload = http_auth.build_payload(scheme=self._scheme, method=method, path=target, body=body,
                                          nonce_ns=nonce, sender_ss58=self.hotkey, receiver_ss58=receiver)
        headers = {
            http_auth.HEADER_VERSION: http_auth.VERSION,
            http_auth.HEADER_HOTKEY: self.hotkey,
            http_auth.HEADER_NONCE: str(nonce),
            http_auth.HEADER_SIGNATURE: "0x" + bytes(self._keypair.sign(payload)).hex(),
            http_auth.HEADER_RECEIVER: receiver,
        }
        if self._scheme != "sr25519":
            headers[http_auth.HEADER_CRYPTO] = self._scheme
        return headers


_STATUS = {http_auth.MalformedAuth: 400, http_auth.WrongReceiver: 403}
_AUTH_HEADERS = (http_auth.HEADER_VERSION, http_auth.HEADER_HOTKEY, http_auth.HEADER_NONCE, http_auth.HEADER_SIGNATURE,
                 http_auth.HEADER_RECEIVER, http_auth.HEADER_CRYPTO)
# Each as the multidict looks it up (an ``istr``: a plain name is lowercased and hashed again at each lookup), the
# header's name as an error names it, and the lowercased key ``_auth_headers`` gives its value under.
_AUTH_NAMES = tuple((istr(name), name, name.lower()) for name in _AUTH_HEADERS)
_VERSION, _HOTKEY, _NONCE, _SIGNATURE, _RECEIVER, _CRYPTO = (lower for _, _, lower in _AUTH_NAMES)


def _auth_headers(headers: Any) -> dict[str, str]:
    """The btauth headers, under lowercased names (as ``http_auth.verify`` reads them): only those of a
    case-insensitive mapping (a request carries a dozen it does not read). Taken once per request, for the header
    checks and the signature's."""
    if not isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return {key.lower(): value for key, value in headers.items()}
    picked = {}
    for key, name, lower in _AUTH_NAMES:
        values = headers.getall(key, ())
        if len(values) > 1:  # which copy was signed is ambiguous: refuse rather than pick one
            raise ApiError(400, f"MalformedAuth: duplicate {name} header", code="MalformedAuth")
        if values:
            picked[lower] = values[0]
    return picked


class Authorizer:
    """Decides which authenticated hotkeys may call this receiver.

    ``permitted`` is re-read on each call so a metagraph refresh takes effect at once.
    """

    def __init__(self, permitted: Callable[[], Iterable[str]], allow: Iterable[str] = ()) -> None:
        self._permitted = permitted
        self._allow = frozenset(allow)

    def allowed(self, hotkey: str) -> bool:
        return hotkey in self._allow or hotkey in self._permitted()


def claimed_hotkey(headers: Any) -> str:
    """The hotkey a request says it is from, fit for a log line: ``-`` when it names none, ``invalid``
    when the header is no SS58 address (whatever a stranger sent, never echoed). Only the header: a
    refused signature proves nothing about who sent it. Never the signature."""
    hotkey = headers.get(http_auth.HEADER_HOTKEY)
    if not hotkey:
        return "-"
    return hotkey if _SS58.fullmatch(hotkey) else "invalid"


def verified_hotkey(request: web.Request) -> str:
    """The hotkey whose signature the request carried, for its log line; ``-`` when none was checked or it
    was refused (its claim proves nothing)."""
    caller = request.get(CALLER_KEY)
    return caller.hotkey_ss58 if caller is not None else "-"


def nonce_retention(max_age: float = http_auth.DEFAULT_MAX_AGE) -> float:
    """How long a receiver remembers each nonce against replays: past a signature's age and skew."""
    return max(60.0, max_age + 5)


# How long a request whose headers passed waits for room in the unverified-body budget (``ByteBudget``): headers
# anyone can copy (a validator's hotkey and ours are public, and a fresh nonce is the clock) pass the header checks,
# so a request takes its declared length (the body cap when it declares none) before its body is read and gives it
# back once the signature is checked. Refused at once, a burst of the API's own large requests (3 MiB images, one
# to each miner raced) failed some of them while the budget freed within milliseconds: it waits this long, then is
# refused (``RequestVerifier.read_verified``'s 503).
BUDGET_WAIT_S = 5.0


SIGN_AGAIN_HEADER = "x-sn1-sign-again"  # on a ``SignedBeforeStart`` refusal: the same request, signed anew, is taken


class SignedBeforeStart(http_auth.AuthError):
    """A nonce from before this receiver began remembering nonces: its previous process may have accepted it,
    and nothing tells a replay of that request from a new one. The sender signs again (a new nonce)."""


def _refusal(e: http_auth.AuthError) -> ApiError:
    """The 4xx for a refused signature; one signed before our start tells the sender to sign again."""
    again = {SIGN_AGAIN_HEADER: "1"} if isinstance(e, SignedBeforeStart) else None
    return ApiError(_STATUS.get(type(e), 401), f"{type(e).__name__}: {e}", code=type(e).__name__, headers=again)


def _claimed_sender(lowered: dict[str, str], self_hotkey: str, max_age: float, now: int) -> tuple[str, int]:
    """The hotkey a request claims, and its nonce, once every check ``http_auth.verify`` makes on headers alone has
    passed, in its order and with its error classes: shape (``MalformedAuth``), receiver (``WrongReceiver``),
    freshness (``StaleRequest``, ``check_fresh``: by how much). Never stricter than ``verify``, which checks them all again with the
    signature: this only refuses early what it would refuse. ``lowered``: ``_auth_headers``'s."""
    if lowered.get(_VERSION) != http_auth.VERSION:
        raise http_auth.MalformedAuth(f"missing or unsupported {http_auth.HEADER_VERSION} "
                                      f"(expected {http_auth.VERSION!r})")
    sender = lowered.get(_HOTKEY)
    if not sender:
        raise http_auth.MalformedAuth(f"missing {http_auth.HEADER_HOTKEY}")
    raw_nonce = lowered.get(_NONCE)
    if raw_nonce is None:
        raise http_auth.MalformedAuth(f"missing {http_auth.HEADER_NONCE}")
    try:
        nonce = int(raw_nonce)
    except ValueError:
        raise http_auth.MalformedAuth(f"{http_auth.HEADER_NONCE} is not a decimal integer") from None
    try:
        parse_crypto_type(lowered.get(_CRYPTO, "sr25519"))
    except ValueError:
        raise http_auth.MalformedAuth(f"unsupported {http_auth.HEADER_CRYPTO}") from None
    signature = lowered.get(_SIGNATURE)
    if signature is None:
        raise http_auth.MalformedAuth(f"missing {http_auth.HEADER_SIGNATURE}")
    try:
        bytes.fromhex(signature.removeprefix("0x"))
    except ValueError:
        raise http_auth.MalformedAuth(f"{http_auth.HEADER_SIGNATURE} is not hex") from None
    receiver = lowered.get(_RECEIVER)
    if receiver is None:
        raise http_auth.WrongReceiver(f"missing {http_auth.HEADER_RECEIVER}: this server requires receiver-bound "
                                      "requests")
    if receiver != self_hotkey:
        # named (an address only: the header is anyone's to write), so that a receiver run with another hotkey than
        # the one its address is published under sees it: "a different receiving hotkey" did not say which
        named = receiver if is_ss58(receiver) else "an invalid address"
        raise http_auth.WrongReceiver(f"request was signed for receiving hotkey {named}, not for this receiver's "
                                      f"{self_hotkey} (the hotkey of its WALLET_NAME/WALLET_HOTKEY)")
    check_fresh(nonce, max_age, now)
    return sender, nonce


CLOCK_HINT = "check that NTP keeps both hosts' clocks right"


def check_fresh(nonce: int, max_age: float, now: int) -> None:
    """``StaleRequest`` for a nonce (the sender's clock at signing) out of ``verify``'s window, saying by how
    much and whose clock it points at: "older than the window" alone left a miner's operator unable to
    tell a validator 30 s behind from one 5 min behind, or from a request delayed on the way."""
    age = now - nonce  # ns, an int: a made-up nonce of 400 digits is past any float
    if age > max_age * 1e9:
        raise http_auth.StaleRequest(f"nonce is {_seconds(age)} old, past the {max_age:g}s freshness window: the "
                                     f"sender's clock is behind the receiver's or the request was delayed; "
                                     f"{CLOCK_HINT}")
    if -age > http_auth.DEFAULT_ALLOWED_SKEW * 1e9:
        raise http_auth.StaleRequest(f"nonce is {_seconds(-age)} in the future, past the "
                                     f"{http_auth.DEFAULT_ALLOWED_SKEW:g}s allowed skew: the sender's clock is "
                                     f"ahead of the receiver's; {CLOCK_HINT}")


def _seconds(ns: int) -> str:
    return f"{ns / 1e9:.1f}s" if ns < 10**18 else "over 30 years"


def refused_signature(status: int, body: Any) -> str | None:
    """Why a receiver refused our signed request, for the sender's log (None: it did not refuse our
    signature). A 401/403 from ``RequestVerifier`` names its reason in an OpenAI-shaped error; a stale
    one carries the clock offset and ``CLOCK_HINT``."""
    if status not in (401, 403):
        return None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return f"HTTP {status}"
    code = err.get("code") if isinstance(err.get("code"), str) else ""
    message = err.get("message") if isinstance(err.get("message"), str) else ""
    # the receiver's words, quoted in a WARNING: on one line (a line break in them forged the log's next line)
    return printable(f"HTTP {status} {code[:64]}: {message.removeprefix(f'{code}: ')}"[:300])


def startup_window(max_age: float = http_auth.DEFAULT_MAX_AGE) -> float:
    """How long after its start a receiver refuses nonces signed before it (``SignedBeforeStart``): past this, such
    a nonce is out of the freshness window anyway, unless the wall clock stepped back. On the monotonic clock, so
    a wall clock stepped back at start cannot stretch it."""
    return max_age + http_auth.DEFAULT_ALLOWED_SKEW


def _wall_now() -> int:
    """``time.time_ns()``, looked up at each call (a test that sets ``time.time_ns`` is obeyed)."""
    return time.time_ns()


def _monotonic_now() -> float:
    """``time.monotonic()``, looked up at each call, as ``_wall_now``."""
    return time.monotonic()


class RequestVerifier:
    """Verifies a signed aiohttp request for one receiver hotkey: headers, then body, then signature.

    Its nonce store is in memory and starts empty: a request its previous process accepted (a miner restarted,
    a new app) is refused as ``SignedBeforeStart`` rather than taken again, for ``startup_window`` after the
    start. ``wall`` (ns) and ``monotonic`` (s) are the clocks it reads, injectable for tests."""

    def __init__(
        self,
        self_hotkey: str,
        authorizer: Authorizer,
        *,
        nonce_store: Any | None = None,
        max_age: float = http_auth.DEFAULT_MAX_AGE,
        not_allowed: str = "holds no validator permit here and is not allow-listed",
        unverified_body_bytes: int = UNVERIFIED_BODY_BYTES,
        wall: Callable[[], int] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.self_hotkey = self_hotkey
        self.authorizer = authorizer
        self.not_allowed = not_allowed  # why a caller the authorizer refuses is refused, in the 403
        self._wall = wall or _wall_now
        self._monotonic = monotonic = monotonic or _monotonic_now
        self.nonce_store = nonce_store or NonceStore(nonce_retention(max_age), wall=self._wall, monotonic=monotonic)
        self.max_age = max_age
        self.budget = ByteBudget(unverified_body_bytes, wait=BUDGET_WAIT_S)
        # the nonce store remembers from here on; taken before the receiver listens, so any request it
        # answers was signed after this unless the sender's clock is behind ours
        self.started_ns = self._wall()
        self._started = monotonic()

    def check_headers(self, headers: Any, *, now: int | None = None) -> str:
        """The claimed hotkey, once everything the headers decide passed: 400 malformed or duplicated, 403
        wrong receiver, 401 stale (at ``now``, the headers' arrival: ns, the wall clock's) or signed before our
        start, 403 a caller we do not take. Before the body is read, and before the sr25519 verify and the nonce
        store: a stranger's valid signature leaves no nonce behind."""
        return self._checked(_auth_headers(headers), self._wall() if now is None else now)

    def _checked(self, auth: dict[str, str], now: int) -> str:
        """``check_headers`` of ``_auth_headers``'s ``auth``."""
        try:
            sender, nonce = _claimed_sender(auth, self.self_hotkey, self.max_age, now)
            self._check_after_start(nonce)
        except http_auth.AuthError as e:
            raise _refusal(e) from None
        self._authorize(sender)
        return sender

    def _authorize(self, sender: str) -> None:
        """403 for a claimed ``sender`` we do not take (400 for one that is no address)."""
        if not self.authorizer.allowed(sender):
            if not is_ss58(sender):  # what ``verify`` says of it: no address is no caller to refuse
                raise _refusal(http_auth.MalformedAuth("invalid hotkey address or signature encoding"))
            raise ApiError(403, f"hotkey {sender} {self.not_allowed}", code="NotAValidator")

    def _check_after_start(self, nonce: int) -> None:
        """``SignedBeforeStart`` for a nonce older than our start, within ``startup_window`` of it. A sender
        whose clock is behind ours by d is refused for the first d seconds (at most the window)."""
        early = self.started_ns - nonce
        if early > 0 and self._monotonic() - self._started < startup_window(self.max_age):
            raise SignedBeforeStart(
                f"nonce is {_seconds(early)} older than this receiver's start: it remembers nonces only since "
                f"then and cannot tell this request from a replay of one its previous process took; sign the "
                f"request again (a sender whose clock is behind the receiver's is refused for as long as it is "
                f"behind, in the first {startup_window(self.max_age):g}s after a start)")

    def verify(self, headers: Any, body: bytes, *, method: str, path: str,
               arrived: int | None = None) -> http_auth.Caller:
        """Return the caller or raise ``ApiError`` (400 malformed, 401 bad/stale/replay, 403 not allowed); fresh
        or stale as of ``arrived`` (ns), when its headers came (None: now)."""
        arrived = self._wall() if arrived is None else arrived
        auth = _auth_headers(headers)
        self._checked(auth, arrived)
        return self._verified(auth, body, method=method, path=path, arrived=arrived)

    def _verified(self, auth: dict[str, str], body: bytes, *, method: str, path: str,
                  arrived: int) -> http_auth.Caller:
        """The signature over ``body`` and the nonce checked (``http_auth.verify``), ``auth``'s headers having
        passed ``_checked``."""
        try:
            return http_auth.verify(
                auth,
                body,
                method=method,
                path=path,
                self_hotkey_ss58=self.self_hotkey,
                max_age=self.max_age,
                nonce_store=self.nonce_store,
                now_ns=arrived,
            )
        except http_auth.AuthError as e:
            raise _refusal(e) from None

    async def read_verified(self, request: web.Request) -> http_auth.Caller:
        """The request's caller, its body read (and kept by aiohttp for the handler) only once its headers
        passed ``check_headers``, and only within ``budget`` (else a 503 ``server_busy``). A request refused
        before its body is read is answered at once and its connection closed, the body unread.

        Fresh or stale as its headers arrived: judged again once the body was read, a body that took longer
        than the freshness window (10 s: a payload of a few MB on a thin link) was refused as ``StaleRequest``
        every time, and its sender told to check its clock. A replay must still arrive within the window, and
        the nonce store keeps each nonce a minute past its signing (``nonce_retention``)."""
        arrived = self._wall()
        try:
            auth = _auth_headers(request.headers)  # once: the checks before the body and the signature's
            sender = self._checked(auth, arrived)
        except ApiError as e:
            raise _unread(request, e) from None
        size = _expected_size(request)
        if not await self.budget.take(size):
            raise _unread(request, ApiError(
                503, "Too many request bodies are being read before their signature is checked; retry shortly.",
                code="server_busy", headers={"Retry-After": "1"}))
        try:
            body = await read_raw(request)  # a body too large or too slow is refused here, unsigned
            # what the headers decided stands (the same headers, the same arrival), but whether the caller is
            # taken: a metagraph refresh while the body came may have taken its permit
            self._authorize(sender)
            return self._verified(auth, body, method=request.method, path=request.raw_path, arrived=arrived)
        finally:
            self.budget.give(size)


def _expected_size(request: web.Request) -> int:
    """What a body will take in memory: its declared length, the body cap when it declares none (chunked)."""
    cap = request.client_max_size
    if request.content.is_eof() and not request.content.total_bytes:
        return 0
    length = request.content_length
    return cap if length is None or not cap else min(length, cap)


def _unread(request: web.Request, e: ApiError) -> ApiError:
    """``e``, ending the connection when the body was not read to its end."""
    if not request.content.is_eof():
        end_unread_body(request)
        e.close = True
    return e


Refused = Callable[[web.Request, ApiError], None]
"""Told of each request the signature check refused (the miner logs it: ``neurons/miner/traffic.py``)."""


def btauth_middleware(
    verifier: RequestVerifier, *, public_paths: Iterable[str] = ("/health",), on_refused: Refused | None = None
) -> Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[web.StreamResponse]]:
    """aiohttp middleware: every route except ``public_paths`` must be signed for us. ``on_refused``
    hears each refusal (a receiver without a line per request would otherwise show none of them);
    a signed request pays nothing for it. A path served by no route, or a method a route does not take, is its
    404 or 405 whoever asks: an operator's ``curl /metrics`` (or a GET of the chat route) was a 400
    ``MalformedAuth`` about a missing header, as if the path were served and only the signature wrong."""
    public = frozenset(public_paths)

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in public or request.match_info.http_exception is not None:
            return await handler(request)
        try:
            request[CALLER_KEY] = await verifier.read_verified(request)
        except (ApiError, web.HTTPException) as e:
            if on_refused is not None:
                on_refused(request, e if isinstance(e, ApiError) else ApiError(e.status, e.reason,
                                                                               code=http_error_code(e)))
            raise
        return await handler(request)

    return middleware
