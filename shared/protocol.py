"""Wire models: what crosses a process boundary on the chat path.

The request model accepts every standard OpenAI chat-completion field plus the
subnet's extras; unknown fields are kept (``extra="allow"``) so they reach the
miner instead of being silently dropped, as the original implementation did.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from shared.content_parts import ContentPart
from shared.errors import NEEDED, array_too_long, missing_refusal, openai_refusal
from shared.ids import random_hex

DEFAULT_TASK = "InferenceTask"
# The shortest deadline a caller may ask for: below it no miner can answer over a network, so the
# request could only ever fail (a 504); it is refused up front instead (a 400 naming the field).
MIN_TIMEOUT = 0.5
# The longest a caller may name (``timeout``, ``/web_retrieval``'s ``max_response_time``); the node cuts it to
# MAX_REQUEST_TIMEOUT, which may be set up to this.
MAX_TIMEOUT = 600.0
# Output tokens a request may ask for: the model server refuses what its context cannot hold (a 400 it
# names); 65,536 refused what OpenAI allows (128k for its newest models).
MAX_OUTPUT_TOKENS = 1 << 20
GREEDY = 0.0  # the temperature of greedy decoding (sampling_parameters.do_sample: false)
# Unknown fields are kept (forwarded to miners); known ones must have their JSON type, as at OpenAI:
# "max_tokens": "5" or "stream": "true" is a 400 naming the field, never silently coerced.
REQUEST_CONFIG = ConfigDict(extra="allow", strict=True)
ANY_MODEL = {"", "default", None}
# The miners one race may be named (``uids``: every uid of a 256-uid subnet), and those n choices' races of the
# named uids may ask together (``api.choices.check_named_miners``).
MAX_UIDS = 256
# For the API only, never sent to miners (web_search_options: the API searches, see api/web_search.py).
# n: each miner is asked for one answer (the API races once per choice; a miner's second would mix in).
MAX_SESSION_ID = 128
ROUTING_FIELDS = ("uids", "timeout", "session_id", "web_search_options", "n")
# The header that tells a miner how long it has for a chat request: the seconds left when the request was
# sent, a decimal (``29.997``). Relative, not an epoch time: the caller's and the miner's clocks need not
# agree. Not covered by the btauth/1 signature (it signs the method, path, body and hotkeys only): advisory.
DEADLINE_HEADER = "x-sn1-deadline"
MAX_TOLD_DEADLINE = 600.0  # seconds: a larger value read from the header is taken as this (no caller waits longer)


def told_deadline(value: str | None) -> float | None:
    """The seconds a request's ``x-sn1-deadline`` gives (0.0: passed already), at most ``MAX_TOLD_DEADLINE``;
    None when absent or not a finite number (the header is unsigned: a value that makes no sense is no deadline,
    not a refusal)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_TOLD_DEADLINE)


def asks_stream(body: dict[str, Any]) -> bool:
    """Whether a miner's body asks for a stream: its ``stream`` is true (absent is false, as a miner reads it).
    Told the miner in ``Accept``, the same from the API and the validator (a difference would tell synthetic
    traffic apart)."""
    return body.get("stream") is True


# OpenAI's metadata (a chat completion's, a response's, a conversation's): up to 16 pairs, keys up to 64
# characters, values up to 512.
Metadata = Annotated[dict[Annotated[str, StringConstraints(max_length=64)],
                          Annotated[str, StringConstraints(max_length=512)]], Field(max_length=16)]


MAX_NAMED_CALLS = 16  # the call ids an unanswered-call refusal names (OpenAI names each: bounded here)


def unanswered_tool_result(messages: Iterable[tuple[str, Any, Any]], *, in_turn: bool = False) -> tuple[int, Any] | None:
    """The first tool result that answers no call a message before it made: its index and the call id it names
    (None: each answers one). ``messages``: (role, tool_calls, tool_call_id) of each chat message, in order
    (chat's check, and the Responses API's of its function outputs). ``in_turn``: chat's rule, a result answers a
    call of the message right before the run of tool messages it is in (any other message ends the turn); the
    Responses API pairs an output with its call by id wherever the call was made before it."""
    return next(tool_results_without_call(messages, in_turn=in_turn), None)


def tool_results_without_call(messages: Iterable[tuple[str, Any, Any]], *,
                              in_turn: bool = False) -> Iterator[tuple[int, Any]]:
    """Each tool result that answers no call a message before it made (``unanswered_tool_result``'s, all of them, in
    one pass: dropping one leaves the others as they were)."""
    called: set[Any] = set()
    for i, (role, calls, call_id) in enumerate(messages):
        if calls:
            made = {call.get("id") for call in calls if isinstance(call, dict)}
            called = made if in_turn else called | made
        elif role == "tool":
            if call_id not in called:
                yield i, call_id
        elif in_turn:
            called = set()


def unanswered_call(messages: Iterable[tuple[str, Any, Any]], *, in_turn: bool = False) -> tuple[int, list[Any]] | None:
    """The first message with a tool call that no tool message after it answers: its index and the ids of its
    calls left unanswered, in order (None: each call is answered). ``messages`` and ``in_turn`` as for
    ``unanswered_tool_result`` (chat's: the answers must come right after the calls, before any other message):
    a conversation that leaves a call unanswered asks the model to go on without the call's result (OpenAI's chat
    and Responses APIs refuse it)."""
    waiting: dict[Any, int] = {}  # each call id left unanswered -> the message that made it
    for i, (role, calls, call_id) in enumerate(messages):
        if role == "tool" and not calls:
            waiting.pop(call_id, None)
            continue
        if in_turn and waiting:  # the turn ended with calls unanswered
            break
        if calls:
            waiting.update((call.get("id"), i) for call in calls if isinstance(call, dict))
    if not waiting:
        return None
    first = min(waiting.values())
    return first, [call_id for call_id, at in waiting.items() if at == first]


def missing_tool_id(messages: list[Any]) -> PydanticCustomError | None:
    """OpenAI's 400 for the first tool call sent back without its ``id`` (absent or null) or tool message without
    the ``tool_call_id`` it answers, in its words and ``param`` (None: none is missing). ``messages``: as sent (a
    malformed message is left to the model's own checks). Without it, a call's missing id was the call left
    unanswered ("... did not have response messages: None")."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        if message.get("role") == "tool" and message.get("tool_call_id") is None:
            return openai_refusal("Missing parameter 'tool_call_id': messages with role 'tool' must have a "
                                  "'tool_call_id'.", f"messages.[{i}].tool_call_id")
        calls = message.get("tool_calls")
        if not isinstance(calls, list):  # nearly every message: no list to walk
            continue
        for j, call in enumerate(calls):
            if isinstance(call, dict) and call.get("id") is None:
                return missing_refusal(f"messages[{i}].tool_calls[{j}].id")
    return None


# A function tool in each API's shape, as the 400 for a tool in the other's shows it.
CHAT_TOOL = '{"type": "function", "function": {"name": ..., "description": ..., "parameters": ...}}'
RESPONSES_TOOL = '{"type": "function", "name": ..., "description": ..., "parameters": ...}'


def other_tool_shape(tools: Any, *, nested: bool) -> PydanticCustomError | None:
    """OpenAI's 400 (its words, its code) for the first function tool sent in the other API's shape, saying which
    shape this route takes (None: none is). ``nested``: chat completions' route, whose tools hold their definition
    in ``function``; the Responses API's are flat. Code moved from one API to the other (or a tool made by
    ``openai.pydantic_function_tool``, chat's, passed to ``responses.create``) got OpenAI's bare "Missing required
    parameter", which did not say that the name was there, one level up or down."""
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        if nested and "function" not in tool and "name" in tool:
            return openai_refusal(f"Missing required parameter: 'tools[{i}].function'. A chat completions tool holds "
                                  f"its definition in 'function': {CHAT_TOOL}; a name beside 'type' is the Responses "
                                  "API's shape (POST /v1/responses).", f"tools.{i}.function",
                                  code="missing_required_parameter")
        if not nested and "name" not in tool and isinstance(tool.get("function"), dict):
            return openai_refusal(f"Missing required parameter: 'tools[{i}].name'. A Responses API function tool has "
                                  f"its name beside 'type': {RESPONSES_TOOL}; a definition in 'function' is the chat "
                                  "completions shape (POST /v1/chat/completions).", f"tools.{i}.name",
                                  code="missing_required_parameter")
    return None


def tools_in_shape(*, nested: bool) -> Any:
    """A validator for a request's ``tools``: ``other_tool_shape``'s 400 for a tool in the other API's shape, before
    the tools are read (as the field's own "Missing required parameter" would come first)."""

    def check(cls: type[BaseModel], value: Any) -> Any:
        if (refusal := other_tool_shape(value, nested=nested)) is not None:
            raise refusal
        return value

    return field_validator("tools", mode="before")(check)


NEEDS_CONTENT = frozenset({"system", "user", "developer", "tool"})


class ChatMessage(BaseModel):
    """One message. As at OpenAI, only an assistant (or legacy function) message may go without
    content, and a tool result names the call it answers: a request that breaks this is the caller's
    400 here, not an upstream's refusal relayed as a miner's failure (which would cost the miner
    its score)."""

    model_config = REQUEST_CONFIG
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[ContentPart] | None = Field(default=None, validate_default=True)
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = Field(default=None, validate_default=True)

    @field_validator("content")
    @classmethod
    def _content_where_required(cls, v: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        if v is None and role in NEEDS_CONTENT:
            raise PydanticCustomError(NEEDED, "a {role} message needs content (a string or a list of "
                                      "parts)", {"role": role})
        return v

    @field_validator("tool_call_id")
    @classmethod
    def _tool_names_its_call(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("role") == "tool":
            raise PydanticCustomError("missing_tool_call_id", "a tool message needs the tool_call_id it answers")
        return v

    def text(self) -> str:
        return content_text(self.content)


def content_text(content: Any) -> str:
    """Flatten OpenAI message content (a string or a list of parts) to plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
        if text:
            parts.append(text)
    return "\n".join(parts)


class SamplingParameters(BaseModel):
    """The subnet's own sampling block (``extra_body.sampling_parameters``)."""

    model_config = REQUEST_CONFIG
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    max_new_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    do_sample: bool | None = None
    mixture: bool | None = None


# A function's (a tool's) name as OpenAI takes one.
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionDefinition(BaseModel):
    model_config = REQUEST_CONFIG
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    """A tool as OpenAI and model servers take it (validation only: the caller's JSON is forwarded)."""

    model_config = REQUEST_CONFIG
    type: Literal["function"]
    function: FunctionDefinition


RESPONSE_FORMATS = ("text", "json_object", "json_schema")


class StreamOptions(BaseModel):
    model_config = REQUEST_CONFIG
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # OpenAI's padding of each event against length side channels: none here


def null_means_default(*fields: str) -> Any:
    """A validator for a model's body: an explicit JSON ``null`` in these fields is their default.
    OpenAI documents them "or null" and SDKs send it (``stream=None``); strict validation refused it."""

    def take(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
        if value is not None or info.field_name is None:
            return value
        return cls.model_fields[info.field_name].get_default(call_default_factory=True)

    return field_validator(*fields, mode="before")(take)


def stream_options_need_stream() -> Any:
    """A validator of ``stream_options`` as OpenAI and vLLM take it: only with ``stream: true``. Ignored
    without it, a caller's ``include_usage`` seemed to work here and was a 400 at OpenAI."""

    def check(cls: type[BaseModel], v: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if v is not None and info.data.get("stream") is not True:
            raise PydanticCustomError("stream_required",
                                      "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        return v

    return field_validator("stream_options")(check)


MAX_STOPS = 4  # OpenAI's most stop sequences


def stop_is_bounded() -> Any:
    """A validator of ``stop``: at most ``MAX_STOPS`` sequences, as OpenAI's 400 says it (``array_above_max_length``,
    its words: ``out_of_bounds``'s for a list field), naming ``stop``."""

    def check(cls: type[BaseModel], v: Any) -> Any:
        if isinstance(v, list) and len(v) > MAX_STOPS:
            raise array_too_long("stop", MAX_STOPS, len(v))
        return v

    return field_validator("stop")(check)


MAX_LOGIT_BIAS = 100


def logit_bias_is_openais() -> Any:
    """A validator of ``logit_bias`` as OpenAI takes it: token ids (JSON object keys, so strings of
    digits) to biases from -100 to 100. A model server refuses another key (the caller got its
    400, or a 200 from a miner that ignores the field), and clamps a bias OpenAI refuses."""

    def check(cls: type[BaseModel], v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not (key.isascii() and key.isdigit() and len(key) <= 10):
                raise PydanticCustomError("invalid_logit_bias", "logit_bias keys are token ids (strings of digits, "
                                          "such as '50256'); '{key}' is not one", {"key": key[:40]})
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise PydanticCustomError("invalid_logit_bias", "logit_bias values are from -100 to 100; token "
                                          "{key} has {bias}", {"key": key, "bias": bias})
        return v

    return field_validator("logit_bias")(check)


class WebSearchOptions(BaseModel):
    """OpenAI's ``web_search_options``: search the web before answering (``user_location`` is accepted;
    the miners search without it)."""

    model_config = REQUEST_CONFIG
    search_context_size: Literal["low", "medium", "high"] | None = None
    user_location: dict[str, Any] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = REQUEST_CONFIG

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    _nulls = null_means_default("stream")
    metadata: Metadata | None = None
    stream_options: StreamOptions | None = None
    _stream_options = stream_options_need_stream()
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=8, description="Choices: each the winner of its own race")
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    _logit_bias = logit_bias_is_openais()
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI: any int64
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    web_search_options: WebSearchOptions | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None

    # The subnet's extras.
    task: str | None = None
    sampling_parameters: SamplingParameters | None = None
    uids: list[int] | None = Field(default=None, max_length=MAX_UIDS)
    mixture: bool | None = None
    inference_mode: str | None = None
    target_results: int | None = Field(default=None, ge=1, le=256)
    timeout: float | None = Field(default=None, ge=MIN_TIMEOUT, le=MAX_TIMEOUT, description="Deadline in seconds")
    session_id: str | None = Field(default=None, max_length=MAX_SESSION_ID)

    # What follows refuses requests that OpenAI and model servers refuse: passed on, each would
    # come back as a miner's failure (a 502 for the caller and a zero score for the miner).
    _tools_shaped = tools_in_shape(nested=True)

    _stop = stop_is_bounded()

    @field_validator("messages", mode="before")
    @classmethod
    def _tool_ids_are_given(cls, v: Any) -> Any:
        """Each call sent back has its id and each tool message the call it answers (``missing_tool_id``), checked
        before the messages are read, as OpenAI checks its schema before the conversation."""
        refusal = missing_tool_id(v) if isinstance(v, list) else None
        if refusal is not None:
            raise refusal
        return v

    @field_validator("messages")
    @classmethod
    def _tool_turns_are_whole(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        """Each call of an assistant message is answered by a tool message right after it (before any other
        message), and each tool message answers a call of the assistant message its turn follows: OpenAI's 400s,
        in its words (``openai_refusal``), the first in the conversation. A call left unanswered asked the miners'
        models to go on without its result, and they answered anyway."""
        if not any(m.tool_calls or m.role == "tool" for m in v):
            return v  # no call made and no result sent (nearly every request): nothing to pair
        turns = [(m.role, m.tool_calls, m.tool_call_id) for m in v]
        orphan, unanswered = unanswered_tool_result(turns, in_turn=True), unanswered_call(turns, in_turn=True)
        if unanswered is not None and (orphan is None or unanswered[0] < orphan[0]):
            ids = ", ".join(str(call_id)[:256] for call_id in unanswered[1][:MAX_NAMED_CALLS])
            raise openai_refusal("An assistant message with 'tool_calls' must be followed by tool messages "
                                 "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                                 f"response messages: {ids}", f"messages.[{unanswered[0]}].role")
        if orphan is not None:  # "preceeding": OpenAI's spelling, which callers match on
            raise openai_refusal("Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                                 "message with 'tool_calls'.", f"messages.[{orphan[0]}].role")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("logprobs") is not True:
            raise PydanticCustomError("logprobs_required", "top_logprobs needs logprobs: true")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_names_a_tool(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None or v in ("none", "auto"):
            return v
        names = chosen_functions(v)
        if names is None:
            raise PydanticCustomError("invalid_tool_choice", TOOL_CHOICES)
        tools = info.data.get("tools") or []
        if not tools:
            raise PydanticCustomError("tools_required", "tool_choice {choice} needs tools",
                                      {"choice": "'required'" if v == "required" else "naming a function"})
        offered = {t.function.name for t in tools}
        for name in names:
            if name not in offered:
                raise PydanticCustomError("unknown_tool", "tool_choice names '{name}', which is not among tools",
                                          {"name": name})
        return v

    @field_validator("response_format")
    @classmethod
    def _response_format_is_known(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        if v.get("type") not in RESPONSE_FORMATS:
            raise PydanticCustomError("invalid_response_format",
                                      "response_format type must be 'text', 'json_object' or 'json_schema'")
        schema = v.get("json_schema")
        if v["type"] == "json_schema" and schema is None:  # OpenAI's 400 names what is missing (this named only
            raise missing_refusal("response_format.json_schema")  # response_format)
        if v["type"] == "json_schema" and isinstance(schema, dict) and schema.get("name") is None:
            raise missing_refusal("response_format.json_schema.name")
        if v["type"] == "json_schema" and not (isinstance(schema, dict) and isinstance(schema.get("name"), str)
                                               and schema["name"]):
            raise PydanticCustomError("invalid_response_format",
                                      "response_format json_schema needs a json_schema object with a name")
        if v["type"] == "json_schema" and schema.get("schema") is not None and not isinstance(schema["schema"], dict):
            raise PydanticCustomError("invalid_response_format",
                                      "response_format json_schema.schema must be a JSON Schema object")
        if v["type"] == "json_schema" and schema.get("strict") is not None and type(schema["strict"]) is not bool:
            raise PydanticCustomError("invalid_response_format", "response_format json_schema.strict must be a boolean")
        return v

    @field_validator("modalities")
    @classmethod
    def _text_output_only(cls, v: list[str] | None) -> list[str] | None:
        """Audio output, accepted, came back as text alone (``message.audio`` null for a caller who asked)."""
        if v is not None and any(m != "text" for m in v):
            raise PydanticCustomError("unsupported_modality", "only text output is served here (the miners' "
                                      "models write text): send modalities ['text'] or none")
        return v

    @field_validator("audio")
    @classmethod
    def _no_audio_output(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            raise PydanticCustomError("unsupported_audio", "audio output is not served here (the miners' models "
                                      "write text): leave audio out")
        return v

    @field_validator("uids")
    @classmethod
    def _uids_non_negative(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(u < 0 for u in v):
            raise ValueError("uids must be non-negative integers")
        return v


    def allowed_tools(self) -> tuple[frozenset[str], str] | None:
        """The functions an ``allowed_tools`` choice lists and its ``mode``; None: another choice."""
        choice = self.tool_choice
        if not isinstance(choice, dict) or choice.get("type") != "allowed_tools":
            return None
        return frozenset(chosen_functions(choice) or ()), choice["allowed_tools"]["mode"]

    def wants_any_model(self) -> bool:
        return self.model in ANY_MODEL

    def effective_max_tokens(self) -> int | None:
        """OpenAI fields win over the subnet's ``sampling_parameters`` (documented precedence)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        if self.max_tokens is not None:
            return self.max_tokens
        sp = self.sampling_parameters
        return sp.max_new_tokens if sp else None

    def effective_temperature(self) -> float | None:
        """The OpenAI field, else the block's; but ``"do_sample": false`` in the block is greedy decoding (0) whatever
        temperature is given: the flag is Hugging Face ``generate``'s, which then ignores temperature, and the
        original API's callers send it (its doc's example). Forwarded as it came, no model server read it and the
        answer was sampled."""
        sp = self.sampling_parameters
        if sp is not None and sp.do_sample is False:
            return GREEDY
        if self.temperature is not None:
            return self.temperature
        return sp.temperature if sp else None

    def effective_top_p(self) -> float | None:
        if self.top_p is not None:
            return self.top_p
        sp = self.sampling_parameters
        return sp.top_p if sp else None

    def miner_body(self, *, seed: int, sent: dict[str, Any]) -> dict[str, Any]:
        """The body sent to miners: every field the caller sent, with sampling merged in.

        Routing-only fields (``uids``, ``timeout``, ``session_id``, ``n``) stay with the API; everything
        else, unknown fields included, is forwarded. ``sent`` is the JSON object this request was
        validated from: validation is strict (nothing coerced), so its values are forwarded as they
        came, which is what the caller sent and cheaper than dumping the model again.
        """
        body = {k: v for k, v in sent.items() if v is not None and k not in ROUTING_FIELDS}
        body["seed"] = seed
        # Miners answer in the caller's mode: a non-streaming caller gets one JSON completion from
        # each miner (one parse, one write per hop) instead of a stream it would only reassemble.
        body["stream"] = bool(self.stream)  # stream_options come only with stream: true
        for name, value in (
            ("max_tokens", self.effective_max_tokens()),
            ("temperature", self.effective_temperature()),
            ("top_p", self.effective_top_p()),
        ):
            if value is not None:
                body[name] = value
        body.pop("max_completion_tokens", None)
        if not self.tools:
            # Without tools, "auto" and "none" mean nothing (any other choice was a 400 above), and chat
            # servers refuse tool_choice, parallel_tool_calls and an empty tools list (OpenAI, vLLM): each miner
            # would fail, and the caller get the server's 400 (SDKs send parallel_tool_calls by default).
            for name in ("tools", "tool_choice", "parallel_tool_calls"):
                body.pop(name, None)
        elif (allowed := self.allowed_tools()) is not None:
            # Model servers take no allowed_tools choice: the miners are offered only the functions it
            # lists, its mode their tool_choice, and a call to any other fails a miner (race.offered).
            names, body["tool_choice"] = allowed
            body["tools"] = [t for t in body["tools"] if t["function"]["name"] in names]
        body.setdefault("task", DEFAULT_TASK)
        return body


TOOL_CHOICES = ("tool_choice must be 'none', 'auto', 'required', "
                '{"type": "function", "function": {"name": ...}} or {"type": "allowed_tools", "allowed_tools": '
                '{"mode": "auto" or "required", "tools": [{"type": "function", "function": {"name": ...}}, ...]}}')


def chosen_functions(choice: Any) -> list[str] | None:
    """The functions a ``tool_choice`` other than "none" and "auto" names: none for "required", one for a
    named function, those an ``allowed_tools`` choice lists; None for a choice of no form served here."""
    if choice == "required":
        return []
    if not isinstance(choice, dict):
        return None
    if choice.get("type") == "function":
        name = function_name(choice)
        return [name] if name is not None else None
    spec = choice.get("allowed_tools") if choice.get("type") == "allowed_tools" else None
    if not isinstance(spec, dict) or spec.get("mode") not in ("auto", "required"):
        return None
    listed = spec.get("tools")
    if not isinstance(listed, list) or not listed:
        return None
    names = [function_name(t) if isinstance(t, dict) and t.get("type") == "function" else None for t in listed]
    return [n for n in names if n is not None] if None not in names else None


def function_name(named: dict[str, Any]) -> str | None:
    """The name in ``{"function": {"name": ...}}`` (None: there is none)."""
    fn = named.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    return name if isinstance(name, str) else None


# How a chat choice may end, in the SDK's words (its type is a Literal of these).
# The tier an answer says served it (OpenAI's chat completion and response name the one that did: "default" for
# its standard one, whatever ``service_tier`` asked): the gateway has one, so a chat completion and a Responses API
# response alike say it. A miner's own (its hosted upstream's "priority", say) is never the caller's.
SERVICE_TIER = "default"
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
# A model server's own words for an answer cut at its token limit; its other words of its own (TGI's
# "eos_token" and "stop_sequence", vLLM's "abort") mean it stopped.
CUT_SHORT = frozenset({"max_tokens", "model_length"})


def finish_reason(reason: str) -> str:
    """A miner's ``finish_reason`` in the SDK's words: a model server's own word was passed on as it
    came, which the SDK's type refuses and a caller's check for "length" (a cut answer) misses."""
    if reason in FINISH_REASONS:
        return reason
    return "length" if reason in CUT_SHORT else "stop"


def token_count(value: Any) -> int | None:
    """A token count as a model server reports it, if it is one: a non-negative integer (not a bool, a
    float or "n/a", which miners have sent); None otherwise."""
    return value if type(value) is int and value >= 0 else None


USAGE_DETAILS = ("prompt_tokens_details", "completion_tokens_details")


def valid_usage(usage: Any) -> bool:
    """Token counts a caller can be billed by: non-negative integers (a miner's "n/a" was a 500)."""
    if type(usage) is not dict:
        return False
    return all(token_count(usage.get(name, 0)) is not None
               for name in ("prompt_tokens", "completion_tokens", "total_tokens")) and "completion_tokens" in usage


def reported_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """A miner's usage (its counts checked by ``valid_usage``) as the SDK's ``CompletionUsage``
    types it: every count the type requires (a server that sent only ``completion_tokens`` left the
    others out; the total is their sum), and of each details group only its token counts (a group that was not an object, or
    a count in it that was "n/a", went on as it came); ``"estimated": true`` when the miner says it estimated one."""
    prompt, completion = usage.get("prompt_tokens", 0), usage["completion_tokens"]
    # total_tokens is their sum, whatever the miner wrote (a miner is not trusted: a caller may bill from it)
    out = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    for group in USAGE_DETAILS:
        if counts := token_counts(usage.get(group)):
            out[group] = counts
    if usage.get("estimated") is True:  # a count the miner's model server did not give (``counted_usage``)
        out["estimated"] = True
    return out


def token_counts(details: Any) -> dict[str, int]:
    """The entries of a usage details group (``cached_tokens``, ``reasoning_tokens``, ...) that are token counts."""
    if not isinstance(details, dict):
        return {}
    return {name: n for name, n in details.items() if token_count(n) is not None}


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool | None = None


def passed_on(r: BaseModel, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields ``names`` that a request of another API (Responses, Completions) has set, as its chat
    request carries them (the subnet's ``sampling_parameters`` as JSON)."""
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(r, name)
        if value is not None:
            out[name] = value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value
    return out


def new_completion_id() -> str:
    return f"chatcmpl-{random_hex()}"


def new_call_id() -> str:
    """An id for a tool call its model server sent without one, in OpenAI's form."""
    return f"call_{random_hex()[:24]}"


def completion_object(
    *,
    completion_id: str,
    model: str,
    content: str | None,
    finish_reason: str | None,
    usage: dict[str, Any],
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: Any = None,
    created: int | None = None,
    extra: dict[str, Any] | None = None,
    refusal: str | None = None,
    reasoning: str | None = None,
) -> dict[str, Any]:
    """A standard ``chat.completion`` object as a plain dict (the hot path avoids models). ``reasoning``:
    a reasoning model's thinking, as vLLM and DeepSeek name it (``message.reasoning_content``)."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    obj = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}],
        "usage": usage,
    }
    if extra:
        obj.update(extra)
    return obj


def chunk_object(
    *,
    completion_id: str,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    created: int | None = None,
    usage: dict[str, Any] | None = None,
    logprobs: Any = None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }
    if usage is not None:
        obj["usage"] = usage
    return obj


def usage_chunk(*, completion_id: str, model: str, usage: dict[str, Any], created: int | None = None) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created or int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage,
    }


MAX_ADVERTISED_MODELS = 256  # models of one miner's availability answer taken (the first, in its order)
MAX_ADVERTISED_TASKS = 16  # tasks of one (there are 4; a miner may name its own)
MAX_ADVERTISED_NAME = 256  # characters of a model's or task's name


class AvailabilityResponse(BaseModel):
    """What a miner says it serves (``POST /availability``), within bounds: the first
    ``MAX_ADVERTISED_MODELS`` models and ``MAX_ADVERTISED_TASKS`` tasks whose names are 1 to
    ``MAX_ADVERTISED_NAME`` printable characters. A miner is untrusted: its names were taken as sent,
    so one answer of 60 KB (3,000 models x 300 tasks) cost every API worker 0.2 s of CPU per
    ``/v1/models`` call (the catalogue is models x tasks), one of a few MB froze them for hours, and a
    name with a line break reached log lines and every caller's model list."""

    task_availabilities: dict[str, bool]
    llm_model_availabilities: dict[str, bool]

    @field_validator("task_availabilities")
    @classmethod
    def _bounded_tasks(cls, v: dict[str, bool]) -> dict[str, bool]:
        return advertised(v, MAX_ADVERTISED_TASKS)

    @field_validator("llm_model_availabilities")
    @classmethod
    def _bounded_models(cls, v: dict[str, bool]) -> dict[str, bool]:
        return advertised(v, MAX_ADVERTISED_MODELS)


def is_name(name: object) -> bool:
    """What a miner's name for a task or model may be: 1 to ``MAX_ADVERTISED_NAME`` printable characters."""
    return isinstance(name, str) and 0 < len(name) <= MAX_ADVERTISED_NAME and name.isprintable()


def advertised(names: dict[str, bool], most: int) -> dict[str, bool]:
    """The first ``most`` of ``names`` that a name may be (``is_name``)."""
    kept: dict[str, bool] = {}
    for name, ok in names.items():
        if len(kept) >= most:
            break
        if is_name(name):
            kept[name] = ok
    return kept


def estimate_tokens(text: str) -> int:
    """A cheap, documented token estimate: ~4 characters per token, at least 1 for non-empty text."""
    if not text:
        return 0
    return max(1, (len(text) + 3) // 4)


def messages_text(messages: Iterable[Any]) -> str:
    """The text of a conversation's messages (request dicts or models), one a line: what a prompt's estimate counts."""
    return "\n".join(content_text(m.get("content") if isinstance(m, dict) else m.content) for m in messages)


def estimated_counts(prompt_text: str, completion_text: str) -> dict[str, int]:
    """Usage's three counts, each ``estimate_tokens`` of its text: the same estimate wherever no count came."""
    prompt, completion = estimate_tokens(prompt_text), estimate_tokens(completion_text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
