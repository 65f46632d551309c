"""Wire models of OpenAI's Conversations API (``/v1/conversations``), as the OpenAI SDK sends and reads it.

Items are Responses API input items, checked as ``input`` is
(``api/responses_translate.check_items``); the logic is in
``api/conversations_state.py``, the routes in ``api/conversations.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.responses_wire import Includable, InputItemListOut, InputItemsQuery, Metadata
from shared.protocol import REQUEST_CONFIG

# OpenAI's bound on the items of one create or add (the Agents SDK's session sends at most this many).
MAX_ITEMS_PER_REQUEST = 20


class ConversationCreate(BaseModel):
    """``POST /v1/conversations``: a new conversation, with up to 20 first items."""

    model_config = REQUEST_CONFIG
    items: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_ITEMS_PER_REQUEST)
    metadata: Metadata | None = None
    safety_identifier: str | None = Field(default=None, max_length=64, description="Accepted, changing nothing")


class ConversationUpdate(BaseModel):
    """``POST /v1/conversations/{id}``: its metadata, replaced (null: none)."""

    model_config = REQUEST_CONFIG
    metadata: Metadata | None


class ItemsCreate(BaseModel):
    """``POST /v1/conversations/{id}/items``: items added at its end."""

    model_config = REQUEST_CONFIG
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class ItemsQuery(InputItemsQuery):
    """``GET /v1/conversations/{id}/items``: a page of its items (``desc``, the default: the newest first)."""


class IncludeQuery(BaseModel):
    """``include`` on adding or reading items: accepted, changing nothing (as on ``input_items``)."""

    include: list[Includable] | None = Field(default=None, description="Accepted, changing nothing")


class ConversationOut(BaseModel):
    """OpenAI's ``conversation`` object (the SDK's ``Conversation``)."""

    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    metadata: dict[str, str]


class ConversationDeletedOut(BaseModel):
    """``DELETE /v1/conversations/{id}``: it and its items are gone."""

    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: Literal[True] = True


class ConversationItemListOut(InputItemListOut):
    """A list of conversation items (the SDK's ``ConversationItemList``)."""


class ConversationItemOut(BaseModel):
    """One item (the SDK's ``ConversationItem``): a message, a function call or its output, ..."""

    model_config = {"extra": "allow"}
    id: str
    type: str
