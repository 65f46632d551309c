"""``/v1/conversations``: OpenAI's Conversations API, as the OpenAI SDK's ``client.conversations`` calls it.

The OpenAI Agents SDK's ``OpenAIConversationsSession`` and apps following
OpenAI's "conversation state" guide keep a dialogue here and name it as
``conversation`` on ``POST /v1/responses``. Items are checked as a response's
``input`` is, and stored in its stored form (an id, a type, a status), so what
is listed is what the miners will be sent. The logic is in
``api/conversations_state.py``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api import conversations_state
from api.access_log import access_logged
from api.context import ApiContext
from api.conversations_wire import (
    ConversationCreate,
    ConversationUpdate,
    IncludeQuery,
    ItemsCreate,
    ItemsQuery,
)
from api.responses import caller, items_query
from api.responses_state import page, resolved, stored_item, unique_ids
from api.responses_translate import check_items
from api.responses_wire import is_item_reference
from shared.http import json_response, parse_model, read_json
from shared.store.base import KeyRecord


async def _stored(ctx: ApiContext, key: KeyRecord, items: list[dict[str, Any]], at: str,
                  conversation_id: str | None = None) -> list[dict[str, Any]]:
    """Items as ``input`` takes them (a 400 naming the place otherwise), in their stored form: an
    ``item_reference`` is stored as the item it names (one of the conversation's own, or one the key's
    stored responses added), and an id the conversation has already is given a new one (``unique_ids``;
    the list of items added says so)."""
    known: list[dict[str, Any]] = []
    if conversation_id is not None and any("id" in item for item in items):
        known = await conversations_state.items_of(ctx, key, conversation_id)
    if any(is_item_reference(item) for item in items):
        items = await resolved(ctx, key, items, at, known)
    check_items(items, at)
    return unique_ids([stored_item(item) for item in items], known)


def _item_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's list of the items just added (all of them: no page)."""
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": False}


def _conversation_id(request: web.Request) -> str:
    return request.match_info["conversation_id"]


@access_logged("conversations")
async def create_conversation(request: web.Request) -> web.StreamResponse:
    """``POST /v1/conversations``: a new conversation, with its first items."""
    ctx, key = await caller(request)
    # no body at all is an empty conversation (the SDK's create() sends one)
    wanted: ConversationCreate = parse_model(ConversationCreate, await read_json(request, empty={}))
    made = await conversations_state.create(ctx, key, wanted.metadata or {}, await _stored(ctx, key, wanted.items or [], "items"))
    return json_response(made.out())


@access_logged("conversations")
async def get_conversation(request: web.Request) -> web.StreamResponse:
    """``GET /v1/conversations/{id}``: the calling key's conversation object."""
    ctx, key = await caller(request)
    return json_response((await conversations_state.found(ctx, key, _conversation_id(request))).out())


@access_logged("conversations")
async def update_conversation(request: web.Request) -> web.StreamResponse:
    """``POST /v1/conversations/{id}``: its metadata, replaced."""
    ctx, key = await caller(request)
    wanted: ConversationUpdate = parse_model(ConversationUpdate, await read_json(request))
    updated = await conversations_state.update(ctx, key, _conversation_id(request), wanted.metadata or {})
    return json_response(updated.out())


@access_logged("conversations")
async def delete_conversation(request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/conversations/{id}``: it and its items are gone (a response naming it then a 400)."""
    ctx, key = await caller(request)
    conversation_id = _conversation_id(request)
    await conversations_state.delete(ctx, key, conversation_id)
    return json_response({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


@access_logged("conversations")
async def add_items(request: web.Request) -> web.StreamResponse:
    """``POST /v1/conversations/{id}/items``: up to 20 items added at its end; the list of those added."""
    ctx, key = await caller(request)
    parse_model(IncludeQuery, items_query(request))
    wanted: ItemsCreate = parse_model(ItemsCreate, await read_json(request))
    conversation_id = _conversation_id(request)
    items = await _stored(ctx, key, wanted.items, "items", conversation_id)
    await conversations_state.add(ctx, key, conversation_id, items)
    return json_response(_item_list(items))


@access_logged("conversations")
async def list_items(request: web.Request) -> web.StreamResponse:
    """``GET /v1/conversations/{id}/items``: a page of its items."""
    ctx, key = await caller(request)
    query: ItemsQuery = parse_model(ItemsQuery, items_query(request))
    items = await conversations_state.items_of(ctx, key, _conversation_id(request))
    return json_response(page(items, query, "this conversation"))


@access_logged("conversations")
async def get_item(request: web.Request) -> web.StreamResponse:
    """``GET /v1/conversations/{id}/items/{item_id}``: one of its items."""
    ctx, key = await caller(request)
    parse_model(IncludeQuery, items_query(request))
    items = await conversations_state.items_of(ctx, key, _conversation_id(request))
    return json_response(conversations_state.item_of(items, request.match_info["item_id"]))


@access_logged("conversations")
async def delete_item(request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/conversations/{id}/items/{item_id}``: one item gone; the conversation, as OpenAI answers."""
    ctx, key = await caller(request)
    kept = await conversations_state.forget_item(ctx, key, _conversation_id(request), request.match_info["item_id"])
    return json_response(kept.out())


def install(app: web.Application) -> None:
    """The Conversations API's routes."""
    app.router.add_post("/v1/conversations", create_conversation)
    app.router.add_get("/v1/conversations/{conversation_id}", get_conversation)
    app.router.add_post("/v1/conversations/{conversation_id}", update_conversation)
    app.router.add_delete("/v1/conversations/{conversation_id}", delete_conversation)
    app.router.add_post("/v1/conversations/{conversation_id}/items", add_items)
    app.router.add_get("/v1/conversations/{conversation_id}/items", list_items)
    app.router.add_get("/v1/conversations/{conversation_id}/items/{item_id}", get_item)
    app.router.add_delete("/v1/conversations/{conversation_id}/items/{item_id}", delete_item)
