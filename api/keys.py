"""Admin routes: API key management behind the ``admin-key`` header.

Paths follow the subnet's API doc (``create-api-key``, ``modify-api-key/{api_key}``,
``delete-api-key/{api_key}``); ``{api_key}`` may be the secret or the key's id, so
an operator who only kept the id (``sn1 keys list``) can still manage it.
Parameters come as query strings (as in the doc's curl examples) or a JSON body.
"""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web
from loguru import logger
from pydantic import BaseModel

from api.auth import check_admin, store_call, store_unavailable
from api.context import CTX, ApiContext
from api.key_list import KEY_ID, select_keys
from api.usage import usage_out
from shared.errors import ApiError, invalid_value
from shared.http import json_response, parse_model, read_json, refuse_query
from shared.keys_wire import (
    LEGACY_SECRET,
    MAX_IMPORTED_KEYS,
    DeletedKeyOut,
    ImportedKeysOut,
    KeyListOut,
    KeyListQuery,
    KeyOut,
    KeyParams,
    LegacyKey,
)
from shared.store.base import ALL_SCOPES, KEY_PREFIX, KeyRecord, Store, StoreUnavailable, hash_key

_LIST_FIELDS = ("scopes", "allowed_models")


async def _admin(request: web.Request) -> Store:
    ctx = request.app[CTX]
    secret = ctx.settings.admin_key
    await check_admin(request, secret.get_secret_value() if secret else None, ctx.store)
    return ctx.store


async def _params(request: web.Request) -> KeyParams:
    """Query parameters and a JSON body's, each named in one of them only (which of two values was meant cannot be
    told); lists may be comma-separated or repeated (any other parameter sent twice with two values was refused
    before: ``api.request_shape``)."""
    data: dict[str, Any] = {}
    for name in set(request.query):
        values = request.query.getall(name)
        if name in _LIST_FIELDS:
            data[name] = [v.strip() for value in values for v in value.split(",") if v.strip()]
        else:
            data[name] = values[-1]
    if "expires_at" in data:
        data["expires_at"] = plus_restored(data["expires_at"])
    if request.body_exists:  # read as every body is (it was read once outside read_json, with no time limit)
        body = await read_json(request, empty={})
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object.", code="invalid_request")
        if twice := sorted(set(body) & set(request.query)):  # ?rate_limit=60 -d '{"rate_limit": 600}': 600, in silence
            raise ApiError(400, f"'{twice[0]}' was given in both the query string and the JSON body: give it once.",
                           code="invalid_request", param=twice[0])
        data.update(body)
    return parse_model(KeyParams, data)


# An ISO 8601 time whose offset's "+" a query string turned into a space ("...T10:00:00 02:00").
_SPACED_OFFSET = re.compile(r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)")


def plus_restored(value: str) -> str:
    """``expires_at`` as a query string sent it: an unescaped ``+02:00`` arrives as `` 02:00`` (a query's
    ``+`` is a space), and was refused as "unexpected extra characters", so ``curl "...?expires_at=
    2030-01-01T10:00:00+02:00"`` failed where the same in a JSON body worked. Anything else is left as is."""
    spaced = _SPACED_OFFSET.fullmatch(value)
    return f"{spaced[1]}+{spaced[2]}" if spaced else value


async def _resolve(store: Store, ref: str) -> KeyRecord:
    """The key named by its secret or its id; 404 otherwise. A secret is one of ours (``sn1-...``) or one imported
    from the original API's key file (``LEGACY_SECRET``: 32 hex digits there): an imported key, which its callers
    use, was a 404 by its secret, and its id was hard to find (the list shows the first 6 characters of each)."""
    try:
        if KEY_ID.fullmatch(ref):
            record = await store.get_key_by_id(ref)
        elif (ref.startswith(KEY_PREFIX) and len(ref) <= 256) or LEGACY_SECRET.fullmatch(ref):
            record = await store.get_key(hash_key(ref))
        else:
            record = None
    except StoreUnavailable:
        raise store_unavailable() from None
    if record is None:
        raise key_not_found()
    return record


def key_not_found() -> ApiError:
    """The 404 for a key this store does not hold, saying how a key is named: the list's prefix (``sn1-AbCdEf...``)
    was tried, and read "No such API key." with no word on it."""
    return ApiError(404, "No such API key: name a key by its id (the key list's first column) or its whole secret, "
                         "not its prefix.", code="api_key_not_found", param="api_key")


def _dump(model: BaseModel, status: int = 200) -> web.Response:
    return json_response(model.model_dump(mode="json"), status=status)


async def create_api_key(request: web.Request) -> web.Response:
    store = await _admin(request)
    params = await _params(request)
    if params.rate_limit is None:
        raise ApiError(400, "rate_limit is required (requests per minute, a positive integer).",
                       param="rate_limit", code="missing_parameter")
    now = time.time()
    expires_at = params.expiry(now)
    if expires_at is not None and expires_at <= now:
        param = "expires_in_days" if params.expires_in_days is not None else "expires_at"
        raise ApiError(400, f"{param} puts the expiry in the past.", param=param, code="invalid_value")
    try:
        secret, record = await store.create_key(
            params.rate_limit, name=params.name, expires_at=expires_at,
            scopes=tuple(params.scopes) if params.scopes else ALL_SCOPES,
            allowed_models=tuple(params.allowed_models) if params.allowed_models else None,
            daily_token_limit=params.daily_token_limit, max_concurrent_requests=params.max_concurrent_requests,
            max_stored_bytes_per_day=params.max_stored_bytes_per_day,
        )
    except StoreUnavailable:
        raise store_unavailable() from None
    request.app[CTX].store_marker.marked()
    logger.info("api key created id={} rate_limit={} scopes={}", record.id, record.rate_limit, ",".join(record.scopes))
    # the subnet doc's two fields first, then the key's public details
    return json_response({"message": "API key created", "api_key": secret, **KeyOut.of(record).model_dump(mode="json")})


async def modify_api_key(request: web.Request) -> web.Response:
    store = await _admin(request)
    record = await _resolve(store, request.match_info["api_key"])
    params = await _params(request)
    if params.is_empty():
        raise ApiError(400, "Nothing to change: give rate_limit, name, expires_at, expires_in_days, scopes, "
                            "allowed_models, daily_token_limit, max_concurrent_requests or "
                            "max_stored_bytes_per_day.",
                       code="missing_parameter")
    changes = params.changes(time.time())
    new = await store_call(store.update_key(record.id, changes))
    if new is None:
        raise key_not_found()
    logger.info("api key modified id={} fields={}", new.id, ",".join(sorted(params.model_fields_set)))
    return json_response({"message": "API key updated", **KeyOut.of(new).model_dump(mode="json")})


async def import_api_keys(request: web.Request) -> web.Response:
    """The subnet's original API's key file (``API_KEYS_FILE``, its JSON as it is): each key keeps working here
    with its rate limit, so an operator who moves its validator API here moves its callers with it. A key
    already here is left as it is; the secrets are stored hashed and never answered."""
    store = await _admin(request)
    refuse_query(request)
    wanted = _legacy_keys(await read_json(request))
    made: list[KeyOut] = []
    here: list[str] = []
    for secret, legacy in wanted:
        if (found := await store_call(store.get_key(hash_key(secret)))) is not None:
            here.append(found.id)
            continue
        _, record = await store_call(store.create_key(legacy.rate_limit, name="imported", secret=secret))
        made.append(KeyOut.of(record))
        request.app[CTX].store_marker.marked()
    # each key by its id, as every other key change is logged: which keys an import made, never their secrets
    logger.info("api keys imported: {} new ids={}, {} already here ids={}", len(made),
                ",".join(k.id for k in made) or "-", len(here), ",".join(here) or "-")
    return _dump(ImportedKeysOut(imported=len(made), already_here=len(here), data=made))


def _legacy_keys(sent: Any) -> list[tuple[str, LegacyKey]]:
    """The key file's entries, each checked (``KeyImport``); a refusal names an entry by its place in the
    file (``3.rate_limit``), never by its key, which is a secret."""
    if not isinstance(sent, dict):
        raise ApiError(400, "Request body must be the original API's key file: a JSON object of keys.",
                       code="invalid_request")
    if len(sent) > MAX_IMPORTED_KEYS:
        raise invalid_value(None, f"at most {MAX_IMPORTED_KEYS} keys at once: import the file in parts")
    out = []
    for i, (secret, entry) in enumerate(sent.items()):
        if not LEGACY_SECRET.fullmatch(secret):
            raise invalid_value(str(i), "each key must be 32 to 256 letters, digits, '-' or '_' (the original "
                                        "API's were 32 hex digits): a shorter one is too easy to guess")
        if not isinstance(entry, dict):  # {"<key>": 60}: it was "Request body must be a JSON object."
            raise invalid_value(str(i), 'each key\'s entry must be an object, {"rate_limit": N, "usage": M}, as the '
                                        "original API's key file holds them")
        out.append((secret, parse_model(LegacyKey, entry, at=str(i))))
    return out


async def rotate_api_key(request: web.Request) -> web.Response:
    """A new secret for the key, shown once; the old one stops working at once. Its id, settings,
    usage history and rate-limit window stay: a leaked key is replaced without losing them."""
    store = await _admin(request)
    refuse_query(request)
    record = await _resolve(store, request.match_info["api_key"])
    rotated = await store_call(store.rotate_key(record.id))
    if rotated is None:
        raise key_not_found()
    secret, new = rotated
    logger.info("api key rotated id={}", new.id)
    return json_response({"message": "API key rotated", "api_key": secret, **KeyOut.of(new).model_dump(mode="json")})


async def delete_api_key(request: web.Request) -> web.Response:
    store = await _admin(request)
    refuse_query(request)  # ?dry_run=1 deleted the key all the same
    record = await _resolve(store, request.match_info["api_key"])
    deleted = await store_call(store.delete_key(record.id))
    if not deleted:
        raise key_not_found()
    logger.info("api key deleted id={}", record.id)
    await _forget_responses(request.app[CTX], record.id)
    return _dump(DeletedKeyOut(id=record.id))


async def _forget_responses(ctx: ApiContext, key_id: str) -> None:
    """The deleted key's stored responses, conversations and sticky session go with it (no key can use them
    again), and what its requests still in flight would store after is refused (``shared/store/forgotten.py``).
    The three stores share one forgotten mark (one ``STORE_URL``): the first to answer sets it, before any of them
    deletes, and the others are told it is set (each had set it again: three writes of one mark per delete).
    The key is gone whatever happens here: a store that fails now leaves them to their expiry, said in
    a WARNING. A deleted key's session had been kept (and read by every session sweep) up to a week."""
    marked = False
    for what, kept in (("stored responses", ctx.responses), ("conversations", ctx.conversations),
                       ("session", ctx.sessions)):
        if kept is None:
            continue
        try:
            gone = await kept.forget_key(key_id, marked=marked)
        except StoreUnavailable as e:
            logger.warning("{} of deleted key id={} left to expire: {}", what, key_id, e)
            continue
        marked = True
        if gone:
            logger.info("{} of deleted key id={} deleted: {}", what, key_id, int(gone))


async def list_api_keys(request: web.Request) -> web.Response:
    """The keys matching the query's filters, a page of them with ``limit`` (``api.key_list``), each with its
    usage totals. An unknown parameter is a 400 naming it (``?nmae=team-a`` would list every key)."""
    store = await _admin(request)
    query = parse_model(KeyListQuery, dict(request.query))
    usage = request.app[CTX].usage
    try:
        page = select_keys(await store.list_keys(), query, time.time())
        out = [KeyOut.of(r, (await usage.report(r.id)).totals) for r in page.records]
    except StoreUnavailable:
        raise store_unavailable() from None
    return _dump(KeyListOut(data=out, first_id=out[0].id if out else None, last_id=out[-1].id if out else None,
                            has_more=page.has_more))


async def api_key_usage(request: web.Request) -> web.Response:
    store = await _admin(request)
    record = await _resolve(store, request.match_info["api_key"])
    return _dump(await usage_out(request, record))

