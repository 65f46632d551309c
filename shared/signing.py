"""btauth/1 request signing and verification (``bittensor.http_auth``).

Every API->miner, validator->miner and API->validator request is signed by the
validator hotkey *for the receiver's hotkey*. Receivers verify signature,
freshness, receiver binding and replay, then authorise the caller (a
validator-permit holder in their metagraph view, or an explicit allow-list).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from bittensor import http_auth
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from shared.errors import ApiError
from shared.http import http_error_code, read_raw

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

    def __init__(self, keypair: Any) -> None:
        self._keypair = keypair
        self.hotkey: str = keypair.ss58_address
        crypto_type = getattr(keypair, "crypto_type", None)
        direct = callable(getattr(keypair, "sign", None)) and not hasattr(keypair, "hotkey")
        self._scheme = http_auth.CRYPTO_TYPE_NAMES.get(crypto_type) if direct else None  # type: ignore[arg-type]

    def headers(self, method: str, url: str | URL, body: bytes, receiver: str) -> dict[str, str]:
        target = URL(url).raw_path_qs if not isinstance(url, URL) else url.raw_path_qs
        if self._scheme is None:
            return http_auth.sign(self._keypair, method=method, path=target, body=body, receiver_ss58=receiver)
        nonce = time.time_ns()
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


def _auth_headers(headers: Any) -> Any:
    """Only the btauth headers of a case-insensitive mapping: ``verify`` lowercases every header it
    is given, and a request carries a dozen it does not read."""
    if not isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return headers
    picked = {}
    for name in _AUTH_HEADERS:
        values = headers.getall(name, ())
        if len(values) > 1:  # which copy was signed is ambiguous: refuse rather than pick one
            raise ApiError(400, f"MalformedAuth: duplicate {name} header", code="MalformedAuth")
        if values:
            picked[name] = values[0]
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


class RequestVerifier:
    """Verifies a signed aiohttp request for one receiver hotkey."""

    def __init__(
        self,
        self_hotkey: str,
        authorizer: Authorizer,
        *,
        nonce_store: Any | None = None,
        max_age: float = http_auth.DEFAULT_MAX_AGE,
        not_allowed: str = "holds no validator permit here and is not allow-listed",
    ) -> None:
        self.self_hotkey = self_hotkey
        self.authorizer = authorizer
        self.not_allowed = not_allowed  # why a caller the authorizer refuses is refused, in the 403
        self.nonce_store = nonce_store or http_auth.InMemoryNonceStore(retention=nonce_retention(max_age))
        self.max_age = max_age

    def verify(self, headers: Any, body: bytes, *, method: str, path: str) -> http_auth.Caller:
        """Return the caller or raise ``ApiError`` (400 malformed, 401 bad/stale/replay, 403 not allowed)."""
        try:
            caller = http_auth.verify(
                _auth_headers(headers),
                body,
                method=method,
                path=path,
                self_hotkey_ss58=self.self_hotkey,
                max_age=self.max_age,
                nonce_store=self.nonce_store,
            )
        except http_auth.AuthError as e:
            status = _STATUS.get(type(e), 401)
            raise ApiError(status, f"{type(e).__name__}: {e}", code=type(e).__name__) from None
        if not self.authorizer.allowed(caller.hotkey_ss58):
            raise ApiError(
                403,
                f"hotkey {caller.hotkey_ss58} {self.not_allowed}",
                code="NotAValidator",
            )
        return caller


Refused = Callable[[web.Request, ApiError], None]
"""Told of each request the signature check refused (the miner logs it: ``neurons/miner/traffic.py``)."""


def btauth_middleware(
    verifier: RequestVerifier, *, public_paths: Iterable[str] = ("/health",), on_refused: Refused | None = None
) -> Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[web.StreamResponse]]:
    """aiohttp middleware: every route except ``public_paths`` must be signed for us. ``on_refused``
    hears each refusal (a receiver without a line per request would otherwise show none of them);
    a signed request pays nothing for it."""
    public = frozenset(public_paths)

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in public:
            return await handler(request)
        try:
            body = await read_raw(request)  # a body too large or too slow is refused here, unsigned
            request[CALLER_KEY] = verifier.verify(
                request.headers, body, method=request.method, path=request.raw_path
            )
        except (ApiError, web.HTTPException) as e:
            if on_refused is not None:
                on_refused(request, e if isinstance(e, ApiError) else ApiError(e.status, e.reason,
                                                                               code=http_error_code(e)))
            raise
        return await handler(request)

    return middleware
