"""OpenAI's conversation objects: what the ``/v1/conversations`` routes and ``conversation`` on
``POST /v1/responses`` read and write.

A conversation is the calling key's alone (another key's id reads as an unknown
one: a 404 on its routes, a 400 naming ``conversation`` on a response). A
response naming one is answered with its items before the new input; the input
and the output are then added to it, before the caller gets the response's end
(as a stored response is written: its next turn may come at once, to any worker).
Conversations live in the response store's place (``STORE_URL``), expire
``RESPONSES_RETENTION_SECONDS`` after their last write, and are off with it at 0.

A conversation write of a key deleted while its request ran (``KeyForgotten``:
the store keeps nothing of it) is a 401 ``invalid_api_key``, as that request sent
a moment later is answered: its only product was what it stored. A response's
turn is not added either, and the response is answered all the same (as its
own record is not stored: ``store: false``).

Items come here in their stored form (``responses_state.stored_item``: an id, a
type, a status), checked by the caller as ``input`` is.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from loguru import logger

from api.auth import store_call
from api.context import ApiContext
from api.storage_budget import charged
from shared.aio import retried
from shared.errors import ApiError, invalid_value, retry_after
from shared.store import conversations as conversation_store
from shared.store.base import KeyRecord, StoreUnavailable
from shared.store.conversations import (
    Conversation,
    ConversationStore,
    encode_item,
    size_of,
    valid_id,
)
from shared.store.forgotten import KeyForgotten

# A response (responses_state.keep) or a turn of a conversation the store fails to take at its end: asked again,
# 0.2 s apart.
KEEP_ATTEMPTS, KEEP_PAUSE_S = 3, 0.2
# A failed turn whose withdrawal the store refused: asked again this often, for this long (``withdraw``).
WITHDRAW_EVERY_S, WITHDRAW_FOR_S = 1.0, 300.0
T = TypeVar("T")
STORAGE_OFF = "this gateway stores no conversations (RESPONSES_RETENTION_SECONDS is 0)"


async def _call(pending: Awaitable[T]) -> T:
    """A conversation store call on a request's path: the store down is the 503 naming it (it named the key
    store, which answered); a write its key's deletion refused is the 401 of a deleted key."""
    return await store_call(pending, "conversation store")


def _full(size: int) -> str:
    bound = conversation_store.MAX_CONVERSATION_BYTES
    return (f"the conversation would hold {size} bytes of items, over its bound of {bound}: delete items from "
            "it, or start a new conversation")


def _not_found(ctx: ApiContext, conversation_id: str) -> ApiError:
    why = STORAGE_OFF if ctx.conversations is None else "it does not exist, has expired or was deleted"
    return ApiError(404, f"Conversation with id '{conversation_id[:64]}' not found: {why}.",
                    code="conversation_not_found", param="conversation_id")


def _store(ctx: ApiContext, conversation_id: str) -> ConversationStore:
    """The store to look ``conversation_id`` up in; the 404 when storage is off or it cannot be ours."""
    if ctx.conversations is None or not valid_id(conversation_id):
        raise _not_found(ctx, conversation_id)
    return ctx.conversations


async def create(ctx: ApiContext, key: KeyRecord, metadata: dict[str, str], items: list[dict[str, Any]]) -> Conversation:
    """A new conversation of the calling key, with its first items (a 400 over the size bound)."""
    if ctx.conversations is None:
        raise ApiError(404, f"Conversations are not served here: {STORAGE_OFF}.", code="conversation_not_found")
    encoded = [encode_item(item) for item in items]
    if size_of(encoded) > conversation_store.MAX_CONVERSATION_BYTES:
        raise invalid_value("items", _full(size_of(encoded)))
    made = Conversation(_new_id(), int(time.time()), metadata, size_of(encoded))
    async with charged(ctx.storage_budget, key, size_of(encoded), "this conversation"):
        await _call(ctx.conversations.create(key.id, made, encoded, retention=ctx.settings.responses_retention_seconds))
    return made


def _new_id() -> str:
    """A conversation's id, from the OS's randomness: ``new_id``'s ``random`` is seeded again and again by
    property-based tests (and would be shared by processes forked without a reseed), and two conversations
    with one id cannot both be kept."""
    return f"conv_{secrets.token_hex(24)}"


async def found(ctx: ApiContext, key: KeyRecord, conversation_id: str) -> Conversation:
    """The calling key's conversation, or the 404 an unknown id gets (another key's included)."""
    got = await _call(_store(ctx, conversation_id).get(key.id, conversation_id))
    if got is None:
        raise _not_found(ctx, conversation_id)
    return got


async def items_of(ctx: ApiContext, key: KeyRecord, conversation_id: str) -> list[dict[str, Any]]:
    """Its items, oldest first (404 as ``found``)."""
    got = await _call(_store(ctx, conversation_id).items(key.id, conversation_id))
    if got is None:
        raise _not_found(ctx, conversation_id)
    return got


def item_of(items: list[dict[str, Any]], item_id: str) -> dict[str, Any]:
    """The item with this id, or its 404."""
    for item in items:
        if item.get("id") == item_id:
            return item
    raise _no_item(item_id)


def _no_item(item_id: str) -> ApiError:
    return ApiError(404, f"Item with id '{item_id[:64]}' not found in this conversation.", code="item_not_found",
                    param="item_id")


async def add(ctx: ApiContext, key: KeyRecord, conversation_id: str, items: list[dict[str, Any]]) -> None:
    """Add items at its end, all or none: a 400 saying so when they would take it over its size bound, the 429
    ``storage_limit_exceeded`` when they would pass the key's daily storage budget (nothing added)."""
    store, encoded = _store(ctx, conversation_id), [encode_item(item) for item in items]
    async with charged(ctx.storage_budget, key, size_of(encoded), "these items"):
        done = await _call(store.append(
            key.id, conversation_id, encoded,
            retention=ctx.settings.responses_retention_seconds, max_bytes=conversation_store.MAX_CONVERSATION_BYTES))
        if not done.found:
            raise _not_found(ctx, conversation_id)
        if done.full:
            raise invalid_value("items", _full(done.size))


async def update(ctx: ApiContext, key: KeyRecord, conversation_id: str, metadata: dict[str, str]) -> Conversation:
    """Replace its metadata; the conversation as it is now."""
    if not await _call(_store(ctx, conversation_id).set_metadata(
            key.id, conversation_id, metadata, retention=ctx.settings.responses_retention_seconds)):
        raise _not_found(ctx, conversation_id)
    return await found(ctx, key, conversation_id)


async def forget_item(ctx: ApiContext, key: KeyRecord, conversation_id: str, item_id: str) -> Conversation:
    """Delete one of its items (404 for an unknown conversation or item); the conversation, as OpenAI answers."""
    gone = await _call(_store(ctx, conversation_id).delete_item(
        key.id, conversation_id, item_id, retention=ctx.settings.responses_retention_seconds))
    if gone is None:
        raise _not_found(ctx, conversation_id)
    if not gone:
        raise _no_item(item_id)
    return await found(ctx, key, conversation_id)


async def delete(ctx: ApiContext, key: KeyRecord, conversation_id: str) -> None:
    """Delete it and its items (404 as ``found``)."""
    if not await _call(_store(ctx, conversation_id).delete(key.id, conversation_id)):
        raise _not_found(ctx, conversation_id)


async def history(ctx: ApiContext, key: KeyRecord, conversation_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """The items a response naming this conversation is answered with, and its last stored turn as its record names
    it (``last_stored``; None: none); a 400 naming ``conversation`` when there is none (storage off, unknown,
    another key's)."""
    if ctx.conversations is None:
        raise invalid_value("conversation", STORAGE_OFF)
    got = None
    if valid_id(conversation_id):
        got = await _call(ctx.conversations.turn_items(key.id, conversation_id))
    if got is None:
        raise ApiError(400, f"Conversation with id '{conversation_id[:64]}' not found.", param="conversation",
                       code="conversation_not_found")
    return got


async def check_room(ctx: ApiContext, key: KeyRecord, items: list[dict[str, Any]],
                     added: list[dict[str, Any]]) -> None:
    """A 400 naming ``conversation`` when a turn's input would take its items over their bound, and the 429
    ``storage_limit_exceeded`` when it would pass the key's daily storage budget: both before any miner is asked
    (its answer is added whatever it weighs, and counted then)."""
    added_size = size_of([encode_item(item) for item in added])
    size = size_of([encode_item(item) for item in items]) + added_size
    if size > conversation_store.MAX_CONVERSATION_BYTES:
        raise invalid_value("conversation", _full(size))
    if ctx.storage_budget is not None:
        await ctx.storage_budget.check_room(key, added_size, "this turn's input")


async def extend(ctx: ApiContext, key: KeyRecord, conversation_id: str, added: list[dict[str, Any]],
                 final: dict[str, Any], last: str | None = None) -> None:
    """Add a response's input and output items to its conversation, just before its end goes out. A failed
    response adds nothing (the turn can be sent again). Its answer may take the conversation past its bound
    (the input was checked before it was asked for; its next turn is then the 400). A store that fails is asked
    twice more; then the turn is taken out again (``withdraw``: the write may have landed though it was reported
    failed) and the response fails: ``not_added``'s 503, which the caller's retry of the same turn makes good.
    ``last``: the conversation's last stored turn from now on (``last_stored``), written with the items."""
    if ctx.conversations is None or final.get("status") == "failed":
        return
    try:  # asked again as a response is stored (responses_state.keep): ``once``, a write that landed is not doubled
        await retried(lambda: add_turn(ctx, key, conversation_id, added, final, last),
                      attempts=KEEP_ATTEMPTS, pause=KEEP_PAUSE_S, on=StoreUnavailable)
    except StoreUnavailable as e:
        logger.warning("response {} not added to conversation {} (it fails, store_unavailable): {}", final.get("id"),
                       conversation_id, e)
        await withdraw(ctx, key.id, conversation_id, added, final)
        raise not_added(conversation_id) from None


async def add_turn(ctx: ApiContext, key: KeyRecord, conversation_id: str, added: list[dict[str, Any]],
                   final: dict[str, Any], last: str | None = None) -> None:
    """One attempt at adding a response's turn to its conversation (``StoreUnavailable`` when the store fails: the
    caller asks again, or ``withdraw``s it). A conversation deleted meanwhile takes nothing: a WARNING; one whose
    key was deleted meanwhile neither (no key can read it: DEBUG)."""
    assert ctx.conversations is not None
    turn = _turn(added, final)
    try:
        done = await ctx.conversations.append(key.id, conversation_id, turn, max_bytes=None, once=True,
                                              fence=final["id"], retention=ctx.settings.responses_retention_seconds,
                                              last=last)
    except KeyForgotten:
        logger.debug("response {} not added to conversation {}: its key id={} was deleted", final.get("id"),
                     conversation_id, key.id)
        return
    if not done.found:
        logger.warning("response {} not added to conversation {}: it was deleted meanwhile", final.get("id"),
                       conversation_id)
    elif ctx.storage_budget is not None and not done.withdrawn:
        # let in by ``check_room``: counted whatever it weighs, once it is stored (not once per attempt); a key store
        # that fails the count must not fail the turn stored (it was taken as the append's failure: withdrawn, a 503)
        size = size_of(turn)
        await ctx.storage_budget.count_or_warn(key, size, f"{size} bytes of response {final.get('id')}'s turn in "
                                               f"conversation {conversation_id} not counted")


def _turn(added: list[dict[str, Any]], final: dict[str, Any]) -> list[str]:
    """A response's turn as its conversation keeps it: its input items, then its output."""
    return [encode_item(item) for item in added + list(final.get("output") or [])]


async def withdraw(ctx: ApiContext, key_id: str, conversation_id: str, added: list[dict[str, Any]],
                   final: dict[str, Any]) -> None:
    """Make sure a turn that failed is not in its conversation, so that sending it again is safe: its write was
    reported failed but may have landed, or may yet land (a Redis call that timed out, run when Redis resumes);
    a background response cancelled as its turn was added. Tried now; while the store fails, again every
    ``WITHDRAW_EVERY_S`` in a task, for ``WITHDRAW_FOR_S`` at most (then a WARNING: the turn may be there)."""
    assert ctx.conversations is not None
    store, turn, fence = ctx.conversations, _turn(added, final), final["id"]

    async def attempt() -> bool:
        try:
            removed = await store.withdraw(key_id, conversation_id, turn, fence=fence,
                                           retention=ctx.settings.responses_retention_seconds)
        except StoreUnavailable as e:
            logger.debug("response {}: its turn not yet withdrawn from conversation {}: {}", fence, conversation_id, e)
            return False
        if removed:
            logger.info("response {}: its turn had reached conversation {} though the store said it failed; taken "
                        "out ({} items)", fence, conversation_id, removed)
        return True

    if await attempt():
        return

    async def later() -> None:
        deadline = time.monotonic() + WITHDRAW_FOR_S
        while time.monotonic() < deadline:
            await asyncio.sleep(WITHDRAW_EVERY_S)
            if await attempt():
                return
        logger.warning("response {}: its turn could not be withdrawn from conversation {} for {:.0f} s (the store "
                       "failed): a write of it that landed late stays", fence, conversation_id, WITHDRAW_FOR_S)

    ctx.spawn(later())


def not_added(conversation_id: str) -> ApiError:
    """The 503 of a response whose turn its conversation could not take (the store failed): nothing of it is
    kept, neither in the conversation nor as a stored response, so the same turn can be sent again."""
    return ApiError(503, f"The answer was not added to conversation '{conversation_id[:64]}': the store is "
                         "unavailable. Nothing of this turn was kept (neither in the conversation nor as a stored "
                         "response): sending the same turn again is safe; try again shortly.",
                    code="store_unavailable", headers=retry_after(1))
