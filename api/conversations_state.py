"""OpenAI's conversation objects: what the ``/v1/conversations`` routes and ``conversation`` on
``POST /v1/responses`` read and write.

A conversation is the calling key's alone (another key's id reads as an unknown
one: a 404 on its routes, a 400 naming ``conversation`` on a response). A
response naming one is answered with its items before the new input; the input
and the output are then added to it, before the caller gets the response's end
(as a stored response is written: its next turn may come at once, to any worker).
Conversations live in the response store's place (``STORE_URL``), expire
``RESPONSES_RETENTION_SECONDS`` after their last write, and are off with it at 0.

Items come here in their stored form (``responses_state.stored_item``: an id, a
type, a status), checked by the caller as ``input`` is.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from loguru import logger

from api.auth import store_call
from api.context import ApiContext
from shared.aio import retried
from shared.errors import ApiError, invalid_value
from shared.store import conversations as conversation_store
from shared.store.base import KeyRecord, StoreUnavailable
from shared.store.conversations import (
    Conversation,
    ConversationStore,
    encode_item,
    size_of,
    valid_id,
)

# A response (responses_state.keep) or a turn of a conversation the store fails to take at its end: asked again,
# 0.2 s apart.
KEEP_ATTEMPTS, KEEP_PAUSE_S = 3, 0.2
STORAGE_OFF = "this gateway stores no conversations (RESPONSES_RETENTION_SECONDS is 0)"


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
    await store_call(ctx.conversations.create(key.id, made, encoded, retention=ctx.settings.responses_retention_seconds))
    return made


def _new_id() -> str:
    """A conversation's id, from the OS's randomness: ``new_id``'s ``random`` is seeded again and again by
    property-based tests (and would be shared by processes forked without a reseed), and two conversations
    with one id cannot both be kept."""
    return f"conv_{secrets.token_hex(24)}"


async def found(ctx: ApiContext, key: KeyRecord, conversation_id: str) -> Conversation:
    """The calling key's conversation, or the 404 an unknown id gets (another key's included)."""
    got = await store_call(_store(ctx, conversation_id).get(key.id, conversation_id))
    if got is None:
        raise _not_found(ctx, conversation_id)
    return got


async def items_of(ctx: ApiContext, key: KeyRecord, conversation_id: str) -> list[dict[str, Any]]:
    """Its items, oldest first (404 as ``found``)."""
    got = await store_call(_store(ctx, conversation_id).items(key.id, conversation_id))
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
    """Add items at its end, all or none: a 400 saying so when they would take it over its size bound."""
    done = await store_call(_store(ctx, conversation_id).append(
        key.id, conversation_id, [encode_item(item) for item in items],
        retention=ctx.settings.responses_retention_seconds, max_bytes=conversation_store.MAX_CONVERSATION_BYTES))
    if not done.found:
        raise _not_found(ctx, conversation_id)
    if done.full:
        raise invalid_value("items", _full(done.size))


async def update(ctx: ApiContext, key: KeyRecord, conversation_id: str, metadata: dict[str, str]) -> Conversation:
    """Replace its metadata; the conversation as it is now."""
    if not await store_call(_store(ctx, conversation_id).set_metadata(
            key.id, conversation_id, metadata, retention=ctx.settings.responses_retention_seconds)):
        raise _not_found(ctx, conversation_id)
    return await found(ctx, key, conversation_id)


async def forget_item(ctx: ApiContext, key: KeyRecord, conversation_id: str, item_id: str) -> Conversation:
    """Delete one of its items (404 for an unknown conversation or item); the conversation, as OpenAI answers."""
    gone = await store_call(_store(ctx, conversation_id).delete_item(
        key.id, conversation_id, item_id, retention=ctx.settings.responses_retention_seconds))
    if gone is None:
        raise _not_found(ctx, conversation_id)
    if not gone:
        raise _no_item(item_id)
    return await found(ctx, key, conversation_id)


async def delete(ctx: ApiContext, key: KeyRecord, conversation_id: str) -> None:
    """Delete it and its items (404 as ``found``)."""
    if not await store_call(_store(ctx, conversation_id).delete(key.id, conversation_id)):
        raise _not_found(ctx, conversation_id)


async def history(ctx: ApiContext, key: KeyRecord, conversation_id: str) -> list[dict[str, Any]]:
    """The items a response naming this conversation is answered with; a 400 naming ``conversation`` when
    there is none (storage off, unknown, another key's)."""
    if ctx.conversations is None:
        raise invalid_value("conversation", STORAGE_OFF)
    got = None
    if valid_id(conversation_id):
        got = await store_call(ctx.conversations.items(key.id, conversation_id))
    if got is None:
        raise ApiError(400, f"Conversation with id '{conversation_id[:64]}' not found.", param="conversation",
                       code="conversation_not_found")
    return got


def check_room(items: list[dict[str, Any]], added: list[dict[str, Any]]) -> None:
    """A 400 naming ``conversation`` when a turn's input would take its items over their bound."""
    size = size_of([encode_item(item) for item in items + added])
    if size > conversation_store.MAX_CONVERSATION_BYTES:
        raise invalid_value("conversation", _full(size))


async def extend(ctx: ApiContext, key_id: str, conversation_id: str, added: list[dict[str, Any]],
                 final: dict[str, Any]) -> None:
    """Add a response's input and output items to its conversation, just before its end goes out. A failed
    response adds nothing (the turn can be sent again). Its answer may take the conversation past its bound
    (the input was checked before it was asked for; its next turn is then the 400); a store that fails is asked
    twice more, then costs the conversation this turn, not the caller its answer: a WARNING."""
    if ctx.conversations is None or final.get("status") == "failed":
        return
    encoded, store = [encode_item(item) for item in added + list(final.get("output") or [])], ctx.conversations
    try:  # asked again as a response is stored (responses_state.keep): ``once``, a write that landed is not doubled
        done = await retried(lambda: store.append(key_id, conversation_id, encoded, max_bytes=None, once=True,
                                                  retention=ctx.settings.responses_retention_seconds),
                             attempts=KEEP_ATTEMPTS, pause=KEEP_PAUSE_S, on=StoreUnavailable)
    except StoreUnavailable as e:
        logger.warning("response {} not added to conversation {}: {}", final.get("id"), conversation_id, e)
        return
    if not done.found:
        logger.warning("response {} not added to conversation {}: it was deleted meanwhile", final.get("id"),
                       conversation_id)
