"""The API description: ``GET /openapi.json`` (OpenAPI 3.1) and ``GET /docs`` (Swagger UI, served locally).

The document is generated at the first request from the app's own router and
the pydantic models the handlers validate with (``ChatCompletionRequest``,
``KeyParams``, ``WebRetrievalRequest``...), so it covers every registered
route and cannot drift from the code. ``OPERATIONS`` adds what a router does
not know: summary, auth scheme, query parameters and response model. A route
missing from it is still listed (with its handler's docstring and the error
shape), so a new route is never invisible; give it an entry to document it.
Every error response is the OpenAI error shape (``ErrorOut``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, RootModel
from pydantic.json_schema import models_json_schema

from api.completions_wire import CompletionOut, CompletionRequest
from api.conversations_wire import (
    ConversationCreate,
    ConversationDeletedOut,
    ConversationItemListOut,
    ConversationItemOut,
    ConversationOut,
    ConversationUpdate,
    IncludeQuery,
    ItemsCreate,
    ItemsQuery,
)
from api.discovery_wire import ModelListOut, ModelOut, ReadyOut, TaskListOut
from api.responses_wire import (
    InputItemListOut,
    InputItemsQuery,
    ResponseDeletedOut,
    ResponseEventOut,
    ResponseOut,
    ResponsesRequest,
    RetrieveQuery,
)
from api.sessions import OpenSessionQuery, OpenSessionRequest
from api.web_retrieval import WebResult, WebRetrievalRequest
from shared.errors import ApiError
from shared.http import json_response
from shared.keys_wire import (
    CreatedKeyOut,
    DeletedKeyOut,
    ImportedKeysOut,
    KeyImport,
    KeyListOut,
    KeyListQuery,
    KeyParams,
    ModifiedKeyOut,
    RotatedKeyOut,
    UsageOut,
)
from shared.protocol import AvailabilityResponse, ChatCompletionRequest, Usage

OPENAPI_VERSION = "3.1.0"
DOCUMENT = web.AppKey("openapi_document", dict)
DOCS_ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "application/javascript",
               "favicon-32x32.png": "image/png"}
Auth = Literal["key", "admin", "none"]


# --- response models for answers the handlers build as plain dicts (hot path) -----------------------

class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer: OpenAI's error shape."""

    error: ErrorDetail


class ToolCallFunction(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str | None = None
    type: str = "function"
    function: ToolCallFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None
    function_call: ToolCallFunction | None = Field(default=None, description="The call of a request that sent "
                                                   "OpenAI's deprecated `functions` (then no `tool_calls`)")


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None


class ChatCompletionOut(BaseModel):
    """A ``chat.completion`` (``stream: false``); with ``stream: true`` the answer is SSE chunks."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ChunkDelta(BaseModel):
    model_config = {"extra": "allow"}
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None  # a legacy ``functions`` request's call, in pieces


class ChunkChoice(BaseModel):
    model_config = {"extra": "allow"}
    index: int = 0
    delta: ChunkDelta = Field(default_factory=ChunkDelta)
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletionChunkOut(BaseModel):
    """One ``chat.completion.chunk`` of a stream (the last may carry only ``usage``, with no choices)."""

    model_config = {"extra": "allow"}
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class WebRetrievalOut(BaseModel):
    results: list[WebResult]


class HealthOut(BaseModel):
    model_config = {"extra": "allow"}
    status: str


class AvailabilityMapOut(RootModel[dict[str, AvailabilityResponse | None]]):
    """uid -> what the miner serves (null: it did not answer the last poll)."""


class UidListOut(RootModel[list[int]]):
    pass


class SessionOut(BaseModel):
    """A sticky session: the calling key's chat requests go to miner ``uid`` until ``expires_at``."""

    session_id: str
    model: str
    uid: int
    created_at: float = Field(description="Unix time")
    expires_at: float = Field(description="Unix time")
    failover: bool


class SessionDeletedOut(BaseModel):
    session_id: str
    deleted: Literal[True]


class SessionPingOut(BaseModel):
    """``ok``: the pinned miner answered; ``moved``: it did not and the session now pins ``uid``;
    ``closed``: it did not and no other miner serves the model, so the session ended."""

    session_id: str
    status: Literal["ok", "moved", "closed"]
    uid: int | None = Field(default=None, description="The miner the session pins now (absent when closed)")
    latency_ms: float | None = Field(default=None, description="Round trip of the one-token completion (ok)")
    error: str | None = Field(default=None, description="Why the pinned miner failed (moved, closed)")
    previous_uid: int | None = Field(default=None, description="The miner that failed (moved, closed)")


class DaysQuery(BaseModel):
    days: int = Field(default=30, ge=1, le=366, description="How many days back, today included")


class AvailableMinersQuery(BaseModel):
    k: int = Field(default=10, ge=1, description="How many uids at most; one beyond every uid returns them all")
    task: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    auth: Auth = "key"
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    media: str = "application/json"
    stream: bool = False
    event: type[BaseModel] | None = None  # a stream's event data (default: a chat completion chunk)
    stream_doc: str = ("`data: <chat.completion.chunk>` events, then `data: [DONE]`; a failure after the first "
                       "byte is an `error` event")


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/health"): Operation("Liveness: the process answers", "operations", "none", response=HealthOut),
    ("GET", "/ready"): Operation("Readiness with reasons (503 when not ready)", "operations", "none",
                                 response=ReadyOut),
    ("GET", "/metrics"): Operation("Prometheus metrics (text format)", "operations", "none", media="text/plain"),
    ("GET", "/openapi.json"): Operation("This document", "operations", "none"),
    ("GET", "/docs"): Operation("Swagger UI for this document", "operations", "none", media="text/html"),
    ("GET", "/docs/assets/{name}"): Operation("Swagger UI assets (served locally)", "operations", "none",
                                              media="application/octet-stream"),
    ("POST", "/v1/chat/completions"): Operation(
        "Chat completion (OpenAI-compatible; `stream: true` answers server-sent events)", "inference",
        body=ChatCompletionRequest, response=ChatCompletionOut, stream=True),
    ("POST", "/v1/completions"): Operation(
        "Text completion (OpenAI's legacy Completions API; each prompt is answered as one user message by the "
        "chat miners; `stream: true` answers server-sent events)", "inference",
        body=CompletionRequest, response=CompletionOut, stream=True, event=CompletionOut,
        stream_doc="`data: <text_completion>` chunks (`choices[].text` is the next piece of choice `index`), then "
                   "`data: [DONE]`; a failure after the first byte is an `error` event"),
    ("POST", "/v1/responses"): Operation(
        "Create a response (OpenAI's Responses API; stored for RESPONSES_RETENTION_SECONDS unless `store: false`, "
        "and continued by `previous_response_id`; `stream: true` answers server-sent events)", "inference",
        body=ResponsesRequest, response=ResponseOut, stream=True, event=ResponseEventOut,
        stream_doc="`event: <type>` / `data: <event>` pairs in OpenAI's order, from `response.created` to "
                   "`response.completed` (or `response.incomplete`, `response.failed`)"),
    ("GET", "/v1/responses/{response_id}"): Operation(
        "One of the calling key's stored responses (404 `response_not_found` for any other id); with `stream=true`, "
        "a streamed background response's events again, after `starting_after`, until its end (one of the key's "
        "requests in flight while it lasts: 429 `concurrency_limit_exceeded` past its limit)", "inference",
        query=RetrieveQuery, response=ResponseOut, stream=True, event=ResponseEventOut,
        stream_doc="the response's events (`response.created` ... `response.completed`), each with its "
                   "`sequence_number`"),
    ("DELETE", "/v1/responses/{response_id}"): Operation(
        "Delete one of the calling key's stored responses (404 `response_not_found` for any other id)", "inference",
        response=ResponseDeletedOut),
    ("POST", "/v1/responses/{response_id}/cancel"): Operation(
        "Cancel a background response still queued (`status: cancelled`); one already done is returned as it is, "
        "one not made with `background: true` is a 400 (404 `response_not_found` for any other id)", "inference",
        body_required=False, response=ResponseOut),
    ("GET", "/v1/responses/{response_id}/input_items"): Operation(
        "The input items of one of the calling key's stored responses: the conversation it answered, a page at a "
        "time (404 `response_not_found` for any other id)", "inference", query=InputItemsQuery,
        response=InputItemListOut),
    ("POST", "/v1/conversations"): Operation(
        "Create a conversation (OpenAI's Conversations API) with up to 20 first items; name it as `conversation` on "
        "`POST /v1/responses`. Kept RESPONSES_RETENTION_SECONDS after its last write (404 when that is 0)",
        "inference", body=ConversationCreate, body_required=False, response=ConversationOut),
    ("GET", "/v1/conversations/{conversation_id}"): Operation(
        "One of the calling key's conversations (404 `conversation_not_found` for any other id)", "inference",
        response=ConversationOut),
    ("POST", "/v1/conversations/{conversation_id}"): Operation(
        "Replace a conversation's metadata", "inference", body=ConversationUpdate, response=ConversationOut),
    ("DELETE", "/v1/conversations/{conversation_id}"): Operation(
        "Delete a conversation and its items", "inference", response=ConversationDeletedOut),
    ("POST", "/v1/conversations/{conversation_id}/items"): Operation(
        "Add up to 20 items at a conversation's end (all or none: a 400 past its size bound); the items added",
        "inference", body=ItemsCreate, query=IncludeQuery, response=ConversationItemListOut),
    ("GET", "/v1/conversations/{conversation_id}/items"): Operation(
        "A page of a conversation's items", "inference", query=ItemsQuery, response=ConversationItemListOut),
    ("GET", "/v1/conversations/{conversation_id}/items/{item_id}"): Operation(
        "One item of a conversation (404 `item_not_found` for an unknown id)", "inference", query=IncludeQuery,
        response=ConversationItemOut),
    ("DELETE", "/v1/conversations/{conversation_id}/items/{item_id}"): Operation(
        "Delete one item of a conversation; the conversation", "inference", response=ConversationOut),
    ("GET", "/v1/models"): Operation("Models served by available miners", "discovery", response=ModelListOut),
    ("GET", "/v1/models/{model}"): Operation("One model (`default`: any model): its tasks and miner count", "discovery",
                                             response=ModelOut),
    ("GET", "/v1/tasks"): Operation("Task types and how many miners serve each", "discovery",
                                    response=TaskListOut),
    ("GET", "/web_retrieval"): Operation("Web search across miners (query parameters)", "inference",
                                         query=WebRetrievalRequest, response=WebRetrievalOut),
    ("POST", "/web_retrieval"): Operation("Web search across miners (JSON body)", "inference",
                                          body=WebRetrievalRequest, response=WebRetrievalOut),
    ("POST", "/miner_availabilities/miner_availabilities"): Operation(
        "Availability of the given uids, as the validator's poll found it (body: a JSON array of uids, or empty for "
        "all; header x-sn1-set-aside: those this API process has set aside for failing its requests)", "discovery",
        response=AvailabilityMapOut),
    ("GET", "/miner_availabilities/get_available_miners"): Operation(
        "Up to k uids a chat request for the task and model would race (header x-sn1-availability: fresh, or "
        "unknown when every serving miner is listed for want of fresh data; header x-sn1-set-aside: the uids left "
        "out as set aside for failing this API process's requests)", "discovery", query=AvailableMinersQuery, response=UidListOut),
    ("POST", "/api_management/create-api-key/"): Operation(
        "Create an API key (shown once)", "admin", "admin", body=KeyParams, body_required=False, query=KeyParams,
        response=CreatedKeyOut),
    ("POST", "/api_management/create-api-key"): Operation(
        "Create an API key (shown once)", "admin", "admin", body=KeyParams, body_required=False, query=KeyParams,
        response=CreatedKeyOut),
    ("PUT", "/api_management/modify-api-key/{api_key}"): Operation(
        "Modify an API key (by secret or id)", "admin", "admin", body=KeyParams, body_required=False,
        query=KeyParams, response=ModifiedKeyOut),
    ("POST", "/api_management/rotate-api-key/{api_key}"): Operation(
        "Rotate an API key (by secret or id): a new secret, shown once; the old one stops working at once; "
        "the id, settings, usage and rate-limit window stay", "admin", "admin", response=RotatedKeyOut),
    ("POST", "/api_management/import-api-keys"): Operation(
        "Import the subnet's original API's key file (API_KEYS_FILE, as it is): each key keeps working here with "
        "its rate limit; one already here is left as it is", "admin", "admin", body=KeyImport,
        response=ImportedKeysOut),
    ("DELETE", "/api_management/delete-api-key/{api_key}"): Operation(
        "Delete an API key (by secret or id)", "admin", "admin", response=DeletedKeyOut),
    ("GET", "/api_management/api-keys"): Operation(
        "List API keys with usage totals (filtered by name, scope or status; paged with limit and after)", "admin",
        "admin", query=KeyListQuery, response=KeyListOut),
    ("GET", "/api_management/api-keys/{api_key}/usage"): Operation(
        "One key's usage by day", "admin", "admin", query=DaysQuery, response=UsageOut),
    ("GET", "/v1/usage"): Operation("The calling key's usage by day", "usage", query=DaysQuery, response=UsageOut),
    ("POST", "/v1/sessions"): Operation(
        "Open a sticky session: pin one miner serving the model to the calling key (404 if none serves it)",
        "sessions", body=OpenSessionRequest, query=OpenSessionQuery, response=SessionOut),
    ("GET", "/v1/sessions"): Operation("The calling key's active session (404 if none)", "sessions",
                                       response=SessionOut),
    ("DELETE", "/v1/sessions/{session_id}"): Operation("Close one of the calling key's sessions", "sessions",
                                                       response=SessionDeletedOut),
    ("POST", "/v1/sessions/{session_id}/ping"): Operation(
        "A one-token completion against the pinned miner; on failure the session is moved or closed",
        "sessions", response=SessionPingOut),
}

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "API key as `Authorization: Bearer <key>`"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "api-key"},
    "xApiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    "adminKey": {"type": "apiKey", "in": "header", "name": "admin-key",
                 "description": "The operator's ADMIN_KEY (admin routes only)"},
}
SECURITY = {"key": [{"bearer": []}, {"apiKeyHeader": []}, {"xApiKeyHeader": []}], "admin": [{"adminKey": []}],
            "none": []}


def routes_of(app: web.Application) -> list[tuple[str, str, Any]]:
    """(method, path pattern, handler) of every registered route, HEAD twins and CORS preflights left out."""
    out = []
    for route in app.router.routes():
        resource = route.resource
        if route.method in ("HEAD", "OPTIONS", "*") or resource is None:
            continue
        out.append((route.method, resource.canonical, route.handler))
    return out


def _schemas(ops: list[Operation]) -> tuple[dict[tuple[type[BaseModel], str], Any], dict[str, Any]]:
    wanted: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [(ErrorOut, "serialization")]
    for op in ops:
        if op.stream:
            wanted.append((op.event or ChatCompletionChunkOut, "serialization"))
        if op.body:
            wanted.append((op.body, "validation"))
        if op.response:
            wanted.append((op.response, "serialization"))
    refs, defs = models_json_schema(list(dict.fromkeys(wanted)), ref_template="#/components/schemas/{model}")
    return refs, defs.get("$defs", {})


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        if model.model_fields[name].exclude:
            continue
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if prop.get("type") == "array" or any(p.get("type") == "array" for p in prop.get("anyOf", [])):
            param.update(style="form", explode=False)
        params.append(param)
    return params


def sse_event_schema(refs: dict[tuple[type[BaseModel], str], Any], event: type[BaseModel]) -> dict[str, Any]:
    """One server-sent event of a stream: its ``data`` is a JSON event, an OpenAI error, or ``[DONE]``."""
    payload = {"anyOf": [refs[(event, "serialization")], refs[(ErrorOut, "serialization")]]}
    return {"type": "object", "required": ["data"], "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "anyOf": [
            {"const": "[DONE]"},
            {"contentMediaType": "application/json", "contentSchema": payload},
        ]},
    }}


def _responses(op: Operation, refs: dict[tuple[type[BaseModel], str], Any]) -> dict[str, Any]:
    error = {"description": "OpenAI-shaped error", "content": {"application/json": {
        "schema": refs[(ErrorOut, "serialization")]}}}
    if op.response is not None:
        content: dict[str, Any] = {"application/json": {"schema": refs[(op.response, "serialization")]}}
    else:
        content = {op.media: {"schema": {"type": "string"} if op.media != "application/json" else {}}}
    if op.stream:
        content["text/event-stream"] = {"schema": sse_event_schema(refs, op.event or ChatCompletionChunkOut),
                                        "description": op.stream_doc}
    ok = {"description": op.summary, "content": content}
    responses = {"200": ok, "4XX": error, "5XX": error}
    if op.tag == "operations" and op.response is ReadyOut:
        responses["503"] = {"description": "Not ready (same body, with reasons)", "content": ok["content"]}
    return responses


def _operation(method: str, path: str, handler: Any, op: Operation | None,
               refs: dict[tuple[type[BaseModel], str], Any]) -> dict[str, Any]:
    if op is None:  # a route without an entry: listed with what the router knows
        summary = (handler.__doc__ or handler.__name__).strip().splitlines()[0]
        op = Operation(summary, "other", "key" if path.startswith("/v1/") else "none")
    doc: dict[str, Any] = {"summary": op.summary, "tags": [op.tag],
                           "operationId": f"{method.lower()}_{path.strip('/').replace('/', '_') or 'root'}",
                           "security": SECURITY[op.auth], "responses": _responses(op, refs)}
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
              for p in _path_params(path)]
    if op.query is not None:
        params += _query_parameters(op.query)
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {"required": op.body_required, "content": {
            "application/json": {"schema": refs[(op.body, "validation")]}}}
    return doc


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def build_document(app: web.Application, *, title: str = "sn1 API", version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes."""
    routes = routes_of(app)
    ops = [OPERATIONS.get((m, p)) for m, p, _ in routes]
    refs, defs = _schemas([o for o in ops if o is not None])
    paths: dict[str, dict[str, Any]] = {}
    for (method, path, handler), op in zip(routes, ops, strict=True):
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, handler, op, refs)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version,
                 "description": "OpenAI-compatible gateway to a decentralised inference subnet. Every error "
                                "is `{\"error\": {\"message\", \"type\", \"code\", \"param\"}}`."},
        "paths": paths,
        "components": {"schemas": defs, "securitySchemes": SECURITY_SCHEMES},
    }


async def openapi_json(request: web.Request) -> web.Response:
    """Built once per process, at the first request, when every route is registered."""
    doc = request.app.get(DOCUMENT)
    if doc is None:
        doc = build_document(request.app)
        request.app[DOCUMENT] = doc
    return json_response(doc)


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sn1 API</title>
<link rel="icon" href="/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>
"""


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_PAGE, content_type="text/html")


def assets_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


async def docs_asset(request: web.Request) -> web.StreamResponse:
    """Only the few Swagger UI files the page uses; no directory listing, no path traversal."""
    name = request.match_info["name"]
    if name not in DOCS_ASSETS:
        raise ApiError(404, f"No such asset '{name[:100]}'.", code="not_found")
    return web.FileResponse(assets_dir() / name, headers={"Content-Type": DOCS_ASSETS[name],
                                                          "Cache-Control": "public, max-age=86400"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    app.router.add_get("/docs/assets/{name}", docs_asset)
