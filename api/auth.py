"""Caller authentication and rate limiting, and the admin check.

``authenticate`` reads the key from ``api-key``, ``Authorization: Bearer`` or
``x-api-key`` and makes one store call that finds it by its SHA-256, checks
expiry and scope and charges its per-minute limit for the whole fleet. The
decision is left on the request so ``add_rate_limit_headers`` (an
``on_response_prepare`` hook) can stamp every response, streams included.

The admin key is compared in constant time (digests of equal length), failed
admin attempts are logged without the attempted key and limited per client
address through the store, so guessing is slow on every worker at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from loguru import logger
from multidict import CIMultiDictProxy

from api.concurrency import ConcurrencyLimiter, busy
from shared.client_address import ADMIN_FAILURES_PER_MINUTE, client_address, throttle_key
from shared.errors import ApiError, retry_after
from shared.headers import one_value
from shared.http import route_path
from shared.store.base import (
    KeyRecord,
    RateDecision,
    Store,
    StoreUnavailable,
    hash_key,
    refused_write,
    until_day_ends,
)
from shared.store.forgotten import KeyForgotten
from shared.store.outage import OutageLog
from shared.store.usage import UsageRecorder

T = TypeVar("T")


@dataclass(frozen=True)
class TokenBudget:
    """A key's daily token limit as this request found it (what the x-ratelimit-*-tokens headers say)."""

    limit: int
    used: int  # today's tokens before this request (UTC day)
    reset_after: float  # seconds until the next UTC day

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


KEY_RECORD = web.RequestKey("sn1_key_record", KeyRecord)
RATE_DECISION = web.RequestKey("sn1_rate_decision", RateDecision)
TOKEN_BUDGET = web.RequestKey("sn1_token_budget", TokenBudget)
USAGE_DAY = web.RequestKey("sn1_usage_day", str)  # the UTC day the request was authorized: its usage's day
ADMIN_CALLER = web.RequestKey("sn1_admin_caller", bool)  # the request carried the admin key (check_admin)
ADMIN_LOG_NAME = "admin"  # who an admin-key request was, in its log line: never the key (ids are 16 hex digits)
TOKEN_SCOPE = "chat"  # the scope whose requests spend tokens (chat, responses, completions)
MAX_KEY_LENGTH = 256
INVALID_KEYS_PER_MINUTE = 60  # default of INVALID_KEYS_PER_MINUTE (ApiSettings.invalid_keys_per_minute)
INVALID_KEY_LIMIT = web.AppKey("sn1_invalid_key_limit", int)


def extract_api_key(headers: CIMultiDictProxy[str]) -> str | None:
    """The key from ``api-key``, else ``x-api-key``, else ``Authorization: Bearer`` (an SDK sends a Bearer token of
    its own beside a header its caller added: the header is meant)."""
    key = one_header(headers, "api-key") or one_header(headers, "x-api-key")
    if not key:
        scheme, _, token = one_header(headers, "Authorization").partition(" ")
        if scheme.lower() == "bearer":
            key = token.strip()
    return key or None


def one_header(headers: CIMultiDictProxy[str], name: str) -> str:
    """A credential header's value, or another that names one thing (``x-session-id``, ``x-request-id``) ("" when
    absent); one sent again with another value is a 400 ``duplicate_header`` whose ``param`` names it: which of
    them is meant cannot be told (the first used to win, and a wrong one beside it went unseen)."""
    value = one_value(headers, name)
    if value is None:
        raise ApiError(400, f"The {name} header was sent {len(headers.getall(name))} times with different values: "
                            "send it once.", code="duplicate_header", param=name)
    return value


STORE_OUTAGE = web.AppKey("store_outage", OutageLog)
"""The app's log of requests answered 503 because the store failed: a run of them is a few lines, not one each."""


def store_outage_log() -> OutageLog:
    return OutageLog("store unavailable, answering 503", needs_operator=refused_write)


def store_unavailable(store: str = "key store") -> ApiError:
    return ApiError(503, f"The {store} is unavailable; try again shortly.", code="store_unavailable",
                    headers=retry_after(1))


@contextlib.contextmanager
def store_errors(store: str = "key store") -> Iterator[None]:
    """Store calls on a request's path: a store that fails is the 503 to retry, never a 500 or a "not found"
    (``store``: the one the 503 names); a write refused as its key was deleted while the request ran
    (``KeyForgotten``: a conversation, a session) is the 401 of a deleted key."""
    try:
        yield
    except StoreUnavailable:
        raise store_unavailable(store) from None
    except KeyForgotten:
        raise invalid_api_key() from None


async def store_call(pending: Awaitable[T], store: str = "key store") -> T:
    """``pending`` awaited under ``store_errors`` (a conversation store that failed was told as the key store)."""
    with store_errors(store):
        return await pending


def missing_key_message(headers: CIMultiDictProxy[str]) -> str:
    """The 401 for no key. An ``Authorization`` header without ``Bearer`` (``Authorization: <key>``, a hand-written
    curl line) is said to be so: "Missing API key." to someone who sent one had them check the key, not the word
    before it. The header's value is never repeated."""
    send = "Send it as 'Authorization: Bearer <key>', 'api-key: <key>' or 'x-api-key: <key>'."
    sent = one_header(headers, "Authorization").strip()
    if sent.lower() == "bearer":  # `-H "Authorization: Bearer $KEY"` with KEY unset
        return f"Missing API key: the Authorization header is 'Bearer' with no key after it (an unset variable?). {send}"
    if sent:
        return f"Missing API key: the Authorization header has no 'Bearer ' before the key. {send}"
    return f"Missing API key. {send}"


async def authenticate(request: web.Request, store: Store, *, scope: str | None,
                       usage: UsageRecorder | None = None, slots: ConcurrencyLimiter | None = None) -> KeyRecord:
    """The caller's key, charged once; 401 unknown/expired, 403 scope, 429 over the limit (or, for a
    request that spends tokens, over the key's daily token limit: ``usage`` counts them; with ``slots``, at the
    key's limit of requests in flight, uncharged), 503 store down. With ``usage``, the request's counts are filed
    under today (``USAGE_DAY``), however late they end. With ``slots``, the request takes a slot in the same store
    call: its handler must be a ``holds_slot`` one, which gives it back."""
    key = extract_api_key(request.headers)
    if key is None:
        raise ApiError(401, missing_key_message(request.headers), code="missing_api_key")
    if len(key) > MAX_KEY_LENGTH:
        raise await invalid_key(request, store)
    outage, key_hash = request.app.get(STORE_OUTAGE), hash_key(key)
    try:
        taking = store.authorize(key_hash, scope=scope) if slots is None else slots.authorize(store, key_hash, scope)
        auth = await taking
    except StoreUnavailable as e:
        if outage is not None:
            outage.failed(e)
        raise store_unavailable() from None
    if outage is not None and auth.decision is not None:  # a charge, a write: an unknown key's lookup only reads
        outage.ok()
    if auth.status == "unknown" or auth.record is None:
        raise await invalid_key(request, store)
    if auth.status == "expired":
        raise ApiError(401, "This API key has expired.", code="expired_api_key")
    request[KEY_RECORD] = auth.record
    if usage is not None:
        request[USAGE_DAY] = usage.today()
    if auth.status == "scope":
        raise ApiError(403, f"This API key lacks the '{scope}' scope.", code="insufficient_scope")
    if auth.slot is not None and slots is not None:
        slots.holding(request, auth.record, auth.slot)
    if auth.status == "busy" and slots is not None:
        raise busy(slots.limit_of(auth.record), auth.in_flight)
    assert auth.decision is not None
    request[RATE_DECISION] = auth.decision
    if not auth.decision.allowed:
        raise ApiError(
            429,
            f"Rate limit reached: this key allows {auth.decision.limit} requests per minute. "
            f"Retry in {go_duration(auth.decision.retry_after)}.",
            code="rate_limit_exceeded",
            headers=retry_after(auth.decision.retry_after),
        )
    if scope == TOKEN_SCOPE and auth.record.daily_token_limit is not None and usage is not None:
        await check_token_budget(request, auth.record, usage)
    return auth.record


async def check_token_budget(request: web.Request, key: KeyRecord, usage: UsageRecorder) -> None:
    """429 once the key's tokens today (UTC, every API process's flushed counts and this one's) reach
    its daily limit. A request that starts under the limit runs to its end, so a day's total may pass
    the limit by the requests in flight when it was reached."""
    assert key.daily_token_limit is not None
    try:
        used = await usage.tokens_today(key.id)
    except StoreUnavailable as e:
        if (outage := request.app.get(STORE_OUTAGE)) is not None:
            outage.failed(e)
        raise store_unavailable() from None
    budget = TokenBudget(limit=key.daily_token_limit, used=used, reset_after=until_day_ends(usage.clock()))
    request[TOKEN_BUDGET] = budget
    if budget.remaining <= 0:
        raise ApiError(
            429,
            f"Daily token limit reached: this key allows {budget.limit} tokens per day (UTC) and has used "
            f"{budget.used}. Retry in {go_duration(budget.reset_after)}, when the day ends.",
            code="token_limit_exceeded",
            headers=retry_after(budget.reset_after),
        )


async def invalid_key(request: web.Request, store: Store) -> ApiError:
    """A wrong key costs its client address one attempt (fleet-wide, through the store); past
    ``INVALID_KEYS_PER_MINUTE`` the answer is 429, so guessing keys is throttled like the admin key.
    Only failures are charged: a valid key never pays for the check."""
    limit = request.app.get(INVALID_KEY_LIMIT, INVALID_KEYS_PER_MINUTE)
    try:
        gate = await store.charge(f"key-fail:{throttle_key(client_address(request))}", limit)
    except StoreUnavailable as e:
        if (outage := request.app.get(STORE_OUTAGE)) is not None:
            outage.failed(e)
        return store_unavailable()
    if (outage := request.app.get(STORE_OUTAGE)) is not None:
        outage.ok()  # a write the store took: after a restart that lost the keys, every key is unknown here
    if not gate.allowed:
        return ApiError(
            429, f"Too many invalid API keys from this address; retry in {go_duration(gate.retry_after)}.",
            code="invalid_key_rate_limited", headers=retry_after(gate.retry_after),
        )
    return invalid_api_key()


def invalid_api_key() -> ApiError:
    """The 401 of an unknown or deleted key; also of a request whose key was deleted while it ran, found when the
    store refused what it wrote (a background response, a conversation: ``KeyForgotten``), as the same request
    sent a moment later is answered. Its words say where a key comes from: the OpenAI SDK sends ``OPENAI_API_KEY``
    when the code gives it no key, and "Invalid API key." alone did not say that such a key is none here."""
    return ApiError(401, "Invalid API key. This API knows no key with this secret: an OpenAI key is none here, nor a "
                    "deleted key or a rotated key's old secret. Ask this API's operator for a key (and pass it as the "
                    "SDK's api_key, or OPENAI_API_KEY is sent).", code="invalid_api_key")


SEARCH_SCOPE = "web_retrieval"  # the scope of every request that spends the web retrieval miners


def check_search_scope(key: KeyRecord, *, param: str) -> None:
    """403 unless the key holds ``SEARCH_SCOPE``, for a part of a request (``param``) that searches the web: a chat
    request's web search (``web_search_options``, a Responses ``web_search`` tool) is a web retrieval, and a key
    without ``web_retrieval`` ran them through chat though ``/web_retrieval`` refused it."""
    if SEARCH_SCOPE not in key.scopes:
        raise ApiError(403, f"This API key lacks the '{SEARCH_SCOPE}' scope, which '{param}' needs: it searches the "
                            "web through the subnet's web retrieval miners.", code="insufficient_scope", param=param)


def check_model(key: KeyRecord, model: str | None) -> None:
    """403 unless the key may use ``model`` (keys without ``allowed_models`` may use any)."""
    if key.allowed_models is None:
        return
    if model is None or model not in key.allowed_models:
        allowed = ", ".join(key.allowed_models)
        raise ApiError(403, f"This API key may only use these models: {allowed}. Name one in 'model'.",
                       code="model_not_allowed", param="model")


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: ``"20ms"``, ``"59.4s"``, ``"1m0s"``, ``"2h5m0s"``, ``"0s"``."""
    seconds = max(0.0, seconds)
    if 0 < seconds < 1:  # as Go writes them ("20ms"), never in exponent form ("1e-05s")
        return f"{min(999, max(1, round(seconds * 1000)))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.1f}s".replace(".0s", "s")
    minutes, rest = divmod(int(math.ceil(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{rest}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{rest}s"


def rate_limit_headers(decision: RateDecision) -> dict[str, str]:
    headers = {
        "x-ratelimit-limit-requests": str(decision.limit),
        "x-ratelimit-remaining-requests": str(decision.remaining),
        "x-ratelimit-reset-requests": go_duration(decision.reset_after),
    }
    return headers


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response to a charged request reports the key's limit (and its
    daily token limit, for a key that has one, as OpenAI's ``x-ratelimit-*-tokens``)."""
    decision = request.get(RATE_DECISION)
    if decision is None:  # not charged: nor given a token budget, which only a charged request is
        return
    response.headers.update(rate_limit_headers(decision))
    # asked only of a key with a daily token limit (a KeyError inside aiohttp's ``get`` costs the others 4 K
    # instructions a request): a charged request has its key's record
    budget = request.get(TOKEN_BUDGET) if request[KEY_RECORD].daily_token_limit is not None else None
    if budget is not None:
        response.headers.update({"x-ratelimit-limit-tokens": str(budget.limit),
                                 "x-ratelimit-remaining-tokens": str(budget.remaining),
                                 "x-ratelimit-reset-tokens": go_duration(budget.reset_after)})


def admin_key_matches(given: str, admin_key: str) -> bool:
    """Constant time: both sides are hashed to 32 bytes first, so neither content nor length leaks."""
    a = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    b = hashlib.sha256(admin_key.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(a, b)


async def check_admin(request: web.Request, admin_key: str | None, store: Store) -> None:
    """403 when admin is disabled, 429 after repeated failures from this address, 401 on a wrong key."""
    if not admin_key:
        raise ApiError(403, "Admin endpoints are disabled: set ADMIN_KEY in the API's settings (.env.api, not the "
                            "validator's, where the original subnet API read it) to enable them.", code="admin_disabled")
    address = client_address(request)
    bucket = f"admin-fail:{throttle_key(address)}"  # an IPv6 client's /64: one host, one budget
    sent = one_header(request.headers, "admin-key")
    try:
        # Each attempt takes a slot before its key is compared, and a right one gives it back: guesses sent at
        # once each found the window open when only failures were counted, after the compare (68 of 300
        # concurrent ones were compared where 10 may be).
        gate = await store.charge(bucket, ADMIN_FAILURES_PER_MINUTE)
        if not gate.allowed:
            raise _admin_locked(gate)
        if admin_key_matches(sent, admin_key):
            await store.charge(bucket, ADMIN_FAILURES_PER_MINUTE, cost=-1)
            request[ADMIN_CALLER] = True
            return
    except StoreUnavailable:
        raise store_unavailable() from None
    logger.warning("admin auth failed remote={} method={} path={}", address, request.method,
                   route_path(request))
    raise ApiError(401, admin_refusal(sent), code="invalid_admin_key")


def admin_refusal(sent: str) -> str:
    """What to fix, where "Invalid or missing admin-key header." left it to guess: the header to send (an SDK's
    ``Authorization: Bearer`` is for API keys), or the key to send in it, and the lockout a guessing game ends in."""
    if not sent:
        return ("Missing admin-key header: send this API's ADMIN_KEY as 'admin-key: <key>' (Authorization, api-key "
                "and x-api-key carry API keys, not the admin key; curl leaves out a header whose value is empty: is "
                "the variable holding the key set?).")
    return (f"Wrong admin key: the admin-key header is not this API's ADMIN_KEY (its .env.api or environment). "
            f"{ADMIN_FAILURES_PER_MINUTE} failures a minute from one address lock the admin routes for it for a "
            "minute, the right key too.")


def caller_name(request: web.Request) -> str | None:
    """Who the request was, for its log line: the API key's id, ``admin`` for the admin key (never a
    secret), None before either was checked (an unauthenticated or refused request)."""
    key = request.get(KEY_RECORD)
    if key is not None:
        return key.id
    return ADMIN_LOG_NAME if request.get(ADMIN_CALLER) else None


def _admin_locked(gate: RateDecision) -> ApiError:
    return ApiError(
        429, f"Too many failed admin attempts from this address; retry in {go_duration(gate.retry_after)}.",
        code="admin_rate_limited", headers=retry_after(gate.retry_after),
    )


