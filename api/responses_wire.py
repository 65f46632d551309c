"""Wire models of OpenAI's Responses API (``POST /v1/responses``), as far as this gateway serves it.

A response is a chat completion underneath (``api/responses_translate.py``): what
cannot be expressed as one is refused with a 400 naming the field, never dropped
in silence. Responses are stored for ``RESPONSES_RETENTION_SECONDS``
(``api/responses_state.py``), so ``previous_response_id`` continues one, and
``conversation`` names one of OpenAI's conversation objects
(``api/conversations_state.py``) to answer and extend.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from shared.errors import NEEDED
from shared.protocol import (
    FUNCTION_NAME,
    MAX_OUTPUT_TOKENS,
    MAX_UIDS,
    MIN_TIMEOUT,
    REQUEST_CONFIG,
    SERVICE_TIER,
    Metadata,
    SamplingParameters,
    StreamOptions,
    null_means_default,
    tools_in_shape,
)

# OpenAI's least max_output_tokens (its 400 integer_below_min_value below it): a smaller limit was taken here, and a
# probe that works nowhere else (max_output_tokens: 1) seemed to.
MIN_OUTPUT_TOKENS = 16
MAX_ALLOWED_DOMAINS = 20  # OpenAI's bound on a web search's filters.allowed_domains
STATELESS = "this gateway stores no responses: send the whole conversation in 'input'"
NO_ITEM_REFERENCES = ("an item_reference names a stored item, and is sent as that item: one here was not resolved "
                      "(items of a conversation's history are stored resolved)")
PLATFORM_ONLY = {  # fields only OpenAI's platform can honour, and what to do instead
    "moderation": "moderation runs on OpenAI's platform; no moderation model is served here: moderate the "
                  "input and output yourself",
    "prompt": "prompt templates live on OpenAI's platform; send the prompt's text in 'instructions' and 'input'",
}


# Every value of ``include`` OpenAI defines (the SDK's ``ResponseIncludable``); any other is a 400, as at
# OpenAI. Only the logprobs and the web search's sources change an answer here: the others ask for output
# of tools not served (file search, computer use, code interpreter), for encrypted reasoning to store, or for
# what the call item and the input do not repeat here (the search's results, the input's image URLs): accepted,
# changing nothing, as the README says.
Includable = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
]

# OpenAI's names for its hosted web search tool, old and new: served by the subnet's web retrieval miners.
WEB_SEARCH_TYPES = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26",
                              "web_search_preview_2025_03_11"})


def is_item_reference(raw: dict[str, Any]) -> bool:
    """Whether an input item is OpenAI's ``item_reference`` (the SDK's ``ItemReference``: its ``type`` may be
    left out, leaving an item with an id and no role)."""
    kind = raw.get("type")
    return kind == "item_reference" or (kind is None and "role" not in raw and "id" in raw)


class Tool(BaseModel):
    """A tool: a function (flat, Responses style: ``name`` and ``parameters`` beside ``type``) or web search.

    Web search takes OpenAI's options; ``search_context_size`` sets how many results the answer gets,
    ``filters.allowed_domains`` which of them it may get (``allowed_domains``), ``user_location`` is accepted
    and echoed (the miners search without it)."""

    model_config = REQUEST_CONFIG
    type: str
    name: str | None = Field(default=None, validate_default=True, pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    search_context_size: Literal["low", "medium", "high"] | None = None
    user_location: dict[str, Any] | None = None
    filters: dict[str, Any] | None = None

    @field_validator("type")
    @classmethod
    def _served(cls, v: str) -> str:
        if v != "function" and v not in WEB_SEARCH_TYPES:
            raise PydanticCustomError("unsupported_tool", "only function and web_search tools are served here, "
                                      "not '{type}'", {"type": v})
        return v

    @field_validator("name")
    @classmethod
    def _named(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("type") == "function":
            raise PydanticCustomError(NEEDED, "a function tool needs a name")
        return v

    @field_validator("filters")
    @classmethod
    def _domains(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        domains = (v or {}).get("allowed_domains")
        if domains is not None and not (isinstance(domains, list) and len(domains) <= MAX_ALLOWED_DOMAINS
                                        and all(isinstance(d, str) and 0 < len(d) <= 253 for d in domains)):
            raise PydanticCustomError("invalid_domains", "filters.allowed_domains must be a list of up to {n} domain "
                                      "names", {"n": MAX_ALLOWED_DOMAINS})
        return v

    @property
    def is_web_search(self) -> bool:
        return self.type in WEB_SEARCH_TYPES

    def allowed_domains(self) -> list[str] | None:
        """The domains a web search's results must be on (their subdomains too); None: any."""
        domains = (self.filters or {}).get("allowed_domains")
        return [domain_name(d) for d in domains] if domains else None


def domain_name(written: str) -> str:
    """The domain an ``allowed_domains`` entry names: its host when it is written as a URL
    (``https://www.Example.com/path`` is ``example.com``; OpenAI asks for names without the scheme, and
    one with it matched no result, so the search found nothing), lower-cased, without ``www.``."""
    text = written.strip()
    if "://" in text:
        authority = text.partition("://")[2].partition("/")[0].partition("?")[0].partition("#")[0]
        text = authority.rpartition("@")[2].partition(":")[0]
    return text.rstrip("/").lower().removeprefix("www.")


class AllowedTools(BaseModel):
    """``tool_choice: {"type": "allowed_tools", ...}``: the model may call only the listed tools (each
    ``{"type": "function", "name": ...}`` or web search) of those in ``tools``; ``mode`` says whether
    it may answer in text instead (``auto``) or must call one (``required``)."""

    model_config = REQUEST_CONFIG
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]] = Field(min_length=1)


# The longest id an item may have: a page's ``after`` names the item that ended the page before (the SDK's pager
# sends it), so an item the caller gives a longer id would stop the listing there.
MAX_ITEM_ID = 256
# An id no URL can name as the path segment of ``/v1/conversations/{id}/items/{item_id}``: ``.`` and ``..``, as
# they are or percent-encoded (the OpenAI SDK refuses to build such a path, and a server resolves it to another
# route), and one with ``/``, ``?``, ``#`` or a control character (a client that does not escape them, curl or an
# older SDK, asks for another route). Such an item could never be read or deleted alone.
UNNAMEABLE_ITEM_ID = re.compile(r"^(?:\.|%2e){1,2}$|[/?#\x00-\x1f\x7f]", re.IGNORECASE)


def _nameable(item_id: str) -> str:
    if UNNAMEABLE_ITEM_ID.search(item_id):
        raise PydanticCustomError("invalid_item_id", "an item id is a segment of the URL that reads or deletes the "
                                                     "item: it cannot be '.' or '..', nor hold '/', '?', '#' or a "
                                                     "control character")
    return item_id


ItemId = Annotated[str, Field(max_length=MAX_ITEM_ID), AfterValidator(_nameable)]
# The statuses an input item may say it has: the SDK's item types take these (a web search's, ``WebSearchStatus``),
# and the item is kept and listed as it came.
ItemStatus = Literal["in_progress", "completed", "incomplete"]
WebSearchStatus = Literal["in_progress", "searching", "completed", "failed", "incomplete"]


class TextFormat(BaseModel):
    model_config = REQUEST_CONFIG
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = REQUEST_CONFIG
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # chat's ``verbosity``


class ReasoningConfig(BaseModel):
    """How hard a reasoning model thinks (chat's ``reasoning_effort``): every level the OpenAI SDK
    sends, ``xhigh`` and ``max`` too (chat completions pass any on; a model server that knows no such
    level refuses it, the caller's 400). A summary is not served: no miner writes one."""

    model_config = REQUEST_CONFIG
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None  # OpenAI's levels: echoed, as the SDK types it


class MessageItem(BaseModel):
    """A message in ``input``; ``content`` is a string or a list of parts (``input_text``, ...)."""

    model_config = REQUEST_CONFIG
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]
    id: ItemId | None = None
    status: ItemStatus | None = None


class FunctionCallItem(BaseModel):
    """A call the model made earlier in the conversation."""

    model_config = REQUEST_CONFIG
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: ItemId | None = None
    status: ItemStatus | None = None


class FunctionCallOutputItem(BaseModel):
    """The caller's result for a call: ``output`` is text, or a list of parts with text."""

    model_config = REQUEST_CONFIG
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[dict[str, Any]]
    id: ItemId | None = None
    status: ItemStatus | None = None


class ReasoningItem(BaseModel):
    """An earlier turn's reasoning: no miner is sent it, but it is kept and listed as sent, so it has what the
    SDK's ``ResponseReasoningItem`` requires (OpenAI's 400 names a missing ``summary`` too)."""

    model_config = REQUEST_CONFIG
    type: Literal["reasoning"]
    summary: list[dict[str, Any]]
    id: ItemId | None = None
    status: ItemStatus | None = None


class WebSearchCallItem(BaseModel):
    """An earlier turn's web search: no miner is sent it (its answer follows as a message), but it is kept and
    listed as sent, so it has what the SDK's ``ResponseFunctionWebSearch`` requires (its ``action``)."""

    model_config = REQUEST_CONFIG
    type: Literal["web_search_call"]
    action: dict[str, Any]
    id: ItemId | None = None
    status: WebSearchStatus | None = None


class ResponsesRequest(BaseModel):
    """The request body. Fields of OpenAI's that only its own platform can honour (``prompt``,
    ``moderation``) are refused; the subnet's extras are as for chat completions."""

    model_config = REQUEST_CONFIG

    input: str | list[dict[str, Any]]
    model: str | None = None
    instructions: str | None = None
    stream: bool = False
    _nulls = null_means_default("stream")
    tools: list[Tool] | None = None
    _tools_flat = tools_in_shape(nested=False)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=MIN_OUTPUT_TOKENS, le=MAX_OUTPUT_TOKENS)
    include: list[Includable] | None = None
    # Calls to built-in tools (web search, the only one served, runs at most once): 0 means no search.
    max_tool_calls: int | None = Field(default=None, ge=0, le=2**31 - 1)  # echoed: a number every client reads
    stream_options: StreamOptions | None = None  # OpenAI's include_obfuscation: accepted, changing nothing
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    metadata: Metadata | None = None
    store: bool | None = None
    user: str | None = None
    # auto: a conversation the miners' models refuse as too long is cut from its beginning (api/responses.py)
    truncation: Literal["auto", "disabled"] | None = None
    # OpenAI's, echoed on the response (typed as the SDK types them, so that the echo is a response the SDK
    # reads, and a value OpenAI refuses is a 400 here too); prompt_cache_key and safety_identifier also reach
    # the miners (chat fields too), the others change nothing.
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    safety_identifier: str | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI: any int64
    # The stored response this one continues (looked up for the calling key; api/responses_state.py).
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=256)
    # The calling key's conversation this response answers and extends ("conv_..." or {"id": "conv_..."}).
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None

    # The subnet's extras, as for chat completions.
    task: str | None = None
    sampling_parameters: SamplingParameters | None = None
    uids: list[int] | None = Field(default=None, max_length=MAX_UIDS)
    mixture: bool | None = None
    inference_mode: str | None = None
    timeout: float | None = Field(default=None, ge=MIN_TIMEOUT, le=600, description="Deadline in seconds")
    session_id: str | None = Field(default=None, max_length=128)

    @property
    def web_search(self) -> Tool | None:
        """The web search tool, if the request offers one (the first, if several)."""
        return next((t for t in self.tools or [] if t.is_web_search), None)

    @property
    def function_tools(self) -> list[Tool]:
        """The tools the miners get: every one but web search, which the gateway does itself."""
        return [t for t in self.tools or [] if not t.is_web_search]

    @field_validator("input")
    @classmethod
    def _input_not_empty(cls, v: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(v, list) and not v:
            raise PydanticCustomError("empty_input", "input needs at least one item")
        return v

    @field_validator(*PLATFORM_ONLY)
    @classmethod
    def _platform_only(cls, v: Any, info: ValidationInfo) -> Any:
        """Accepted and ignored, each would be silently wrong (a ``block`` moderation policy blocking nothing)."""
        if v is not None:
            raise PydanticCustomError("unsupported_parameter", PLATFORM_ONLY[info.field_name])
        return v

    @field_validator("conversation")
    @classmethod
    def _conversation_named(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        named = v.get("id") if isinstance(v, dict) else v
        if v is not None and not (isinstance(named, str) and 0 < len(named) <= 256):
            raise PydanticCustomError("invalid_conversation", "conversation is a conversation id, or an object "
                                      "with one as its 'id'")
        return v

    @property
    def conversation_id(self) -> str | None:
        """The id ``conversation`` names, in either form."""
        return self.conversation.get("id") if isinstance(self.conversation, dict) else self.conversation


class ResponseOut(BaseModel):
    """A ``response`` object (``stream: false``); with ``stream: true`` the answer is SSE events."""

    model_config = {"extra": "allow"}
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = Field(default=None, description="Set when the status is completed")
    status: Literal["completed", "incomplete", "failed", "queued", "in_progress", "cancelled"] = Field(
        description="queued or in_progress: a background response not answered yet (poll it); cancelled: one "
                    "cancelled before")
    model: str
    output: list[dict[str, Any]] = Field(description="reasoning, web_search_call, message and function_call "
                                                     "items, in order")
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    # The request's settings, echoed (OpenAI's default where it shows one and the field was left out).
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int = 0
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    store: bool = Field(default=False, description="Whether the response was stored (retrievable, and continued "
                                                   "by previous_response_id)")
    service_tier: str = SERVICE_TIER
    background: bool = Field(default=False, description="Made with background: true (polled, and cancellable)")
    previous_response_id: str | None = None
    conversation: dict[str, str] | None = Field(default=None, description="The conversation this response "
                                                "answered and was added to ({\"id\": ...})")
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    user: str | None = None


class ResponseEventOut(BaseModel):
    """One event of a streamed response (``response.created``, ``response.output_text.delta``, ...)."""

    model_config = {"extra": "allow"}
    type: str
    sequence_number: int


class ResponseDeletedOut(BaseModel):
    """``DELETE /v1/responses/{id}``: the stored response is gone."""

    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: Literal[True] = True


class InputItemsQuery(BaseModel):
    """``GET /v1/responses/{id}/input_items``: a page of the conversation the response answered."""

    limit: int = Field(default=20, ge=1, le=100, description="Items per page")
    order: Literal["asc", "desc"] = Field(default="desc", description="desc: the newest item first")
    after: str | None = Field(default=None, max_length=MAX_ITEM_ID,
                              description="The id of the item the page starts after")
    include: list[Includable] | None = Field(default=None, description="Accepted, changing nothing")


class RetrieveQuery(BaseModel):
    """``GET /v1/responses/{id}``: the response object, or (``stream``) a streamed background response's
    events again, after ``starting_after``."""

    stream: bool = Field(default=False, description="A streamed background response's events, from the start "
                                                    "or after starting_after, until its end")
    starting_after: int | None = Field(default=None, ge=0, le=2**31, description="The sequence number of the "
                                                                                  "last event had (stream)")
    include: list[Includable] | None = Field(default=None, description="Accepted, changing nothing")
    include_obfuscation: bool | None = Field(default=None, description="Accepted, changing nothing")


class InputItemListOut(BaseModel):
    """OpenAI's list of a response's input items (the SDK's ``ResponseItemList``)."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]] = Field(description="Input items, each with its id")
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool
