"""One error shape for every endpoint: OpenAI's.

Handlers raise `ApiError`; the error middleware turns it (and any aiohttp HTTP
exception) into `{"error": {"message", "type", "code", "param"}}` with the right
status. Nothing else in the code base builds error bodies by hand.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from shared.ids import SECRET_PREFIX

# A miner's error code for a request its model server refused itself (a 4xx: a bad parameter, more
# tokens than the model takes). The API tells it from the miner's own failure by this code.
MODEL_SERVER_REJECTED = "model_server_rejected"
# The statuses that code is the caller's with (docs/miner-protocol.md §5): the model server refused the request
# itself. A 401/403 (the model server refusing the miner's own key) or 429 (rate-limiting the miner) with that code
# is the miner's failure: taken as the caller's, a miner with a wrong key was never set aside, nor scored 0.
REJECTED_STATUSES = frozenset({400, 413, 422})
# OpenAI's code for a model it does not serve; a miner answers it (a 404) for a ``model`` it does not list.
MODEL_NOT_FOUND = "model_not_found"
# The code of a request this process's stop cut (``shutting_down``): the caller sends it again.
SERVER_SHUTTING_DOWN = "server_shutting_down"
# OpenAI's code for an input longer than the model's context window: LangChain (its ContextOverflowError),
# Pydantic AI (ModelContextWindowExceededError) and agents that trim or summarize their history act on it.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
# How model servers word that refusal: OpenAI and vLLM ("This model's maximum context length is ..."; vLLM's
# newer "... longer than the maximum model length of ..."), SGLang ("... longer than the model's context
# length ..."), llama.cpp ("the request exceeds the available context size"), TGI ("`inputs` tokens +
# `max_new_tokens` must be <= ..."), and the code itself where a miner passed it on.
_CONTEXT_OVERFLOW = re.compile(r"context_length_exceeded|maximum context length|maximum model length|"
                               r"model's context length|available context size|context window|"
                               r"`inputs` tokens \+ `max_new_tokens` must be", re.I)


def says_context_overflow(message: str) -> bool:
    """Whether a model server's refusal says the input (with the tokens asked for) exceeds its context."""
    return _CONTEXT_OVERFLOW.search(message) is not None

# Every ``code`` an API error body carries (README "Error codes" lists each, and a test holds the two equal): the
# values of ``sn1_api_errors_total``'s ``code`` label, so a code nobody listed is counted as ``other``, never as a
# new series (an upstream's or a bug's wording would otherwise grow ``/metrics``).
API_ERROR_CODES = frozenset({
    "invalid_value", "missing_required_parameter", "missing_parameter", "invalid_json", "invalid_body",
    # a value past its field's bound, in OpenAI's codes (``out_of_bounds``)
    "integer_below_min_value", "integer_above_max_value", "decimal_below_min_value", "decimal_above_max_value",
    "empty_array", "array_below_min_length", "array_above_max_length", "object_above_max_properties",
    "string_above_max_length", "empty_string",
    "invalid_request", "unsupported_parameter", "duplicate_header", "duplicate_parameter",
    "unknown_uid", "uid_not_serving", "invalid_uids",
    "unknown_task", MODEL_SERVER_REJECTED, CONTEXT_LENGTH_EXCEEDED, "session_model_mismatch",
    "previous_response_not_found", "previous_response_in_progress", "conversation_not_found",
    "mutually_exclusive_parameters", "missing_api_key", "invalid_api_key", "expired_api_key", "invalid_admin_key",
    "insufficient_scope", "model_not_allowed", "admin_disabled", MODEL_NOT_FOUND, "not_found", "response_not_found",
    "item_not_found", "session_not_found", "api_key_not_found", "method_not_allowed", "request_entity_too_large",
    "unsupported_media_type", "unsupported_content_encoding", "request_timeout", "rate_limit_exceeded", "token_limit_exceeded",
    "concurrency_limit_exceeded", "storage_limit_exceeded", "invalid_key_rate_limited", "admin_rate_limited",
    "too_many_background_responses", "no_valid_answer", "session_miner_failed", "no_miners_available", "store_unavailable", "sessions_disabled",
    "deadline_exceeded", "miner_failed_mid_stream", SERVER_SHUTTING_DOWN,
    "too_many_connections",  # written by the connection guard before any handler (shared/connections.py)
    # a request the HTTP parser refused, answered before any handler (shared.http.unparsed_refusal)
    "uri_too_long", "request_header_fields_too_large", "malformed_request",
})

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


# The longest wait a Retry-After asks of a client that retries by itself: a per-minute window frees a slot
# 60-61 s after its request (shared/store/window.py). Longer waits (a daily token budget's, until the day ends)
# are not worth sleeping through inside one call.
LONGEST_RETRY_WAIT = 61
# The header that tells the OpenAI SDKs (Python and Node: both obey it before the status) not to retry an error
# that a retry would only repeat; a copy goes on each error (``dict(NO_RETRY)``).
NO_RETRY = {"x-should-retry": "false"}


def retry_after(seconds: float) -> dict[str, str]:
    """The headers of a refusal that ends in ``seconds``: ``Retry-After`` in whole seconds (at least 1), and,
    for a wait longer than ``LONGEST_RETRY_WAIT``, ``x-should-retry: false``. The OpenAI SDKs retry a 429 by
    themselves, and the Node SDK sleeps for whatever Retry-After says (a daily token budget's 429 left the call
    hanging for hours): both SDKs obey ``x-should-retry`` and raise at once, so the caller decides. A shorter
    wait also goes as ``retry-after-ms``, which the SDKs read first: a window that frees a request in 0.2 s
    had them wait the whole second ``Retry-After`` rounds it up to."""
    wait = max(1, math.ceil(seconds))
    if wait > LONGEST_RETRY_WAIT:
        return {"Retry-After": str(wait), **NO_RETRY}
    return {"Retry-After": str(wait), "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


class ApiError(Exception):
    """An error the client should see, with an HTTP status and an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}
        self.close = close  # end the connection after the answer: what follows on it cannot be trusted

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type_=self.type, code=self.code, param=self.param)


def model_not_found(model: str | None) -> ApiError:
    """OpenAI's answer to a model it does not serve, word for word (the SDKs raise ``NotFoundError`` on the 404; a
    client that reads the code, the param or the message finds what it finds at OpenAI): whether the API knew it
    from availability or every miner raced said so."""
    return ApiError(404, f"The model `{model or 'default'}` does not exist or you do not have access to it.",
                    code=MODEL_NOT_FOUND, param="model", type_="invalid_request_error")


STOPPING = "This server is stopping (a restart or a deploy)"  # the first words of every answer a stop cuts


def shutting_down(what: str) -> ApiError:
    """The error of a request this process's stop cut at the end of its grace (``what``: how far its answer had
    come): a 503 with ``Retry-After``, which the OpenAI SDKs retry, where nothing was sent; the last event of a
    stream that had begun, whose caller sends it again."""
    return ApiError(503, f"{STOPPING}; {what}: send it again.",
                    code=SERVER_SHUTTING_DOWN, type_="server_error", headers=retry_after(1), close=True)


def invalid_value(param: str | None, message: str) -> ApiError:
    """The 400 for a value the caller sent that cannot be used, naming where it sits (``None``: the body)."""
    where = f"value for '{param}'" if param else "request body"  # a body may have a field named "body"
    return ApiError(400, f"Invalid {where}: {message}", param=param, code="invalid_value")


def missing_parameter(param: str, why: str = "") -> ApiError:
    """OpenAI's 400 for a required field left out, naming it: its words and code, which its SDKs surface (``why``:
    what the field is for, said after them)."""
    said = f": {why}" if why else ""
    return ApiError(400, f"Missing required parameter: '{param}'{said}.", param=param,
                    code="missing_required_parameter")


# The type of a validator's refusal of a field the value needs (a user message's content, a text part's text): left
# out, it is OpenAI's ``missing_required_parameter``, with the refusal's words; sent as null, an ``invalid_value``.
NEEDED = "needed"


def left_out(data: Any, where: str) -> bool:
    """Whether the field at ``where`` (dotted, as ``first_problem`` names it) is absent from ``data`` (its object is
    there, the key is not)."""
    *path, name = where.split(".")
    for step in path:
        if isinstance(data, dict):
            data = data.get(step)
        elif isinstance(data, list) and step.isdigit() and int(step) < len(data):
            data = data[int(step)]
        else:
            return False
    return isinstance(data, dict) and name not in data


# A validator's refusal that is OpenAI's own 400 word for word, its ``param`` too (``messages.[2].role``, where the
# field is ``messages``): ``openai_refusal`` makes it, and ``shared.http.parse_model`` answers it as it is, not as
# "Invalid value for ...".
OPENAI_REFUSAL = "openai_refusal"


def openai_refusal(message: str, param: str, code: str | None = None) -> PydanticCustomError:
    """OpenAI's 400 for a request, raised in a validator: ``message``, ``param`` and ``code`` as OpenAI gives them
    (most of its conversation checks' ``code`` is null). A ``{param}`` in ``message`` would be filled in (pydantic's
    template)."""
    return PydanticCustomError(OPENAI_REFUSAL, message, {"param": param, "code": code})


def missing_refusal(param: str) -> PydanticCustomError:
    """``missing_parameter``'s 400, raised in a validator (a field inside a free-form object)."""
    return openai_refusal(f"Missing required parameter: '{param}'.", param, code="missing_required_parameter")


def error_body(
    message: str, *, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def error_type_for(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "dict", "list", "none"})


def first_problem(e: ValidationError) -> tuple[str, str]:
    """Where a validation failed, dotted (``messages.0.content``; ``""`` at the top), and why: the
    first problem is the one each caller reports.

    pydantic reports a union (``content: str | list[ContentPart]``) once per member, each under the
    member's name (``messages.0.content.str``). The caller sent one value: its problem is the one
    of the member it came closest to (the deepest), at the field's own place; a value no member
    took even at the top is "a valid string or a valid list".
    """
    where, why, _ = located(e)
    return where, why


def located(e: ValidationError) -> tuple[str, str, ErrorDetails | None]:
    """``first_problem``'s place and words, and the one error they are (None: the words of several, or of a
    dict's key)."""
    errors = e.errors()
    loc = tuple(errors[0]["loc"])
    if loc[-1:] == ("[key]",):  # a dict's key refused: the dict is the place (the key may be long, or anything)
        return _dotted(loc[:-2]), f"each key: {errors[0]['msg']}", None
    for i, part in enumerate(loc):
        branches = [err for err in errors
                    if len(err["loc"]) > i and tuple(err["loc"][:i]) == loc[:i] and _is_member(err["loc"][i])]
        if not _is_member(part) or len({err["loc"][i] for err in branches}) < 2:
            continue
        closest = max(branches, key=lambda err: len(err["loc"]))
        if len(closest["loc"]) > i + 1:
            return _dotted(loc[:i] + tuple(closest["loc"][i + 1:])), closest["msg"], closest
        wanted = dict.fromkeys(err["msg"].removeprefix("Input should be ") for err in branches)
        return _dotted(loc[:i]), "Input should be " + " or ".join(wanted), None
    return _dotted(loc), errors[0]["msg"], errors[0]


def out_of_bounds(e: ValidationError, at: str = "") -> ApiError | None:
    """OpenAI's 400 for a value past its field's bound (a number below its minimum or above its maximum, an empty
    or too long array, too many properties, a string too long or empty), in its words and ``code``
    (``integer_below_min_value``, ``empty_array``, ...), naming the field below ``at``; None for any other
    problem. Clients that sort OpenAI's refusals by code (an output limit too high, a cache key too long) read
    these; all of them were ``invalid_value`` here."""
    where, _, error = located(e)
    words = _bound_words(error) if error is not None and where else None
    if words is None:
        return None
    return _past_bound(".".join(p for p in (at, where) if p), *words)


def empty_array(param: str) -> ApiError:
    """OpenAI's 400 for an empty array where it takes one item at least (``out_of_bounds``'s, for a check of
    the caller's own)."""
    return _past_bound(param, "empty_array", _EMPTY_ARRAY.format(least=1))


def _past_bound(param: str, code: str, words: str) -> ApiError:
    return ApiError(400, f"Invalid '{param}': {words}", param=param, code=code)


def array_too_long(param: str, most: int, size: int) -> PydanticCustomError:
    """``out_of_bounds``'s 400 for an array longer than ``most``, raised in a validator (a list in a union, which
    pydantic's own check would report once per member)."""
    return openai_refusal(f"Invalid '{param}': {_ARRAY_TOO_LONG.format(most=most, size=size)}", param,
                          code="array_above_max_length")


_ARRAY_TOO_LONG = "array too long. Expected an array with maximum length {most}, but got an array with length {size} instead."
_EMPTY_ARRAY = "empty array. Expected an array with minimum length {least}, but got an empty array instead."


# pydantic's number bound errors: the bound's key in ``ctx``, OpenAI's sign for it, its code's end and its words
_BOUNDS = {"greater_than_equal": ("ge", ">=", "below_min_value", "below minimum value"),
           "greater_than": ("gt", ">", "below_min_value", "below minimum value"),
           "less_than_equal": ("le", "<=", "above_max_value", "above maximum value"),
           "less_than": ("lt", "<", "above_max_value", "above maximum value")}


def _bound_words(error: ErrorDetails) -> tuple[str, str] | None:
    """(code, words after "Invalid 'param': ") of OpenAI's refusal of what pydantic's ``error`` refused."""
    kind, ctx, sent = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in _BOUNDS:
        key, sign, code, said = _BOUNDS[kind]
        bound = ctx[key]
        number = "decimal" if isinstance(bound, float) else "integer"  # the field's type (a float's bound is one)
        return f"{number}_{code}", (f"{number} {said}. Expected a value {sign} {_number(bound)}, but got "
                                    f"{_number(sent)} instead.")
    size = len(sent) if isinstance(sent, (list, dict, str)) else ctx.get("actual_length")
    if kind == "too_short" and ctx.get("field_type") == "List":
        if not size:
            return "empty_array", _EMPTY_ARRAY.format(least=ctx["min_length"])
        return "array_below_min_length", (f"array too short. Expected an array with minimum length "
                                          f"{ctx['min_length']}, but got an array with length {size} instead.")
    if kind == "too_long" and ctx.get("field_type") == "List":
        return "array_above_max_length", _ARRAY_TOO_LONG.format(most=ctx["max_length"], size=size)
    if kind == "too_long" and ctx.get("field_type") == "Dictionary":
        return "object_above_max_properties", (f"too many properties. Expected an object with at most "
                                               f"{ctx['max_length']} properties, but got an object with {size} "
                                               "properties instead.")
    if kind == "string_too_long":
        return "string_above_max_length", (f"string too long. Expected a string with maximum length "
                                           f"{ctx['max_length']}, but got a string with length {size} instead.")
    if kind == "string_too_short" and not size:
        return "empty_string", (f"empty string. Expected a string with minimum length {ctx['min_length']}, but got an "
                                "empty string instead.")
    return None


def _number(value: Any) -> str:
    """A number as OpenAI writes it in a refusal: ``2`` for 2.0, ``0.5``; anything else as sent (a query string's
    text), cut short."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)[:40]


def _is_member(part: Any) -> bool:
    """A union member's name in a pydantic location (``str``, ``list[ContentPart]``), not a field or a key.

    Only type names: a dict's keys are the caller's words (``logit_bias.Hello``), and our unions
    have no model class as a member of its own."""
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS)


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(shown_name(p) if isinstance(p, str) else str(p) for p in loc)


MAX_NAME_SHOWN = 64  # characters of a caller's own name an error quotes (a metadata key's most)
_SECRET = re.compile(re.escape(SECRET_PREFIX) + r"[A-Za-z0-9_-]*")


def shown_name(name: str) -> str:
    """A name the caller chose (a field or query parameter it made up, a dict's key, a content part's type) as an
    error quotes it: an API key pasted into it as ``sn1-***`` (``?sn1-...`` answered the secret back, for a proxy's or
    a client's log to keep), and no more than ``MAX_NAME_SHOWN`` characters of it, cut with ``...`` (a field named with
    a megabyte of text was answered with it twice, in the message and ``param``)."""
    masked = _SECRET.sub(SECRET_PREFIX + "***", name)
    return masked if len(masked) <= MAX_NAME_SHOWN else masked[:MAX_NAME_SHOWN] + "..."


def parse_error(text: str) -> tuple[str | None, str]:
    """``(error.code, error.message)`` of an OpenAI-shaped error body; ``(None, text)`` for anything else
    (a peer's error text, quoted to a caller, reads better without the JSON around it)."""
    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return None, text
    if not isinstance(err, dict):
        return None, text
    message = err.get("message")
    return err.get("code") if isinstance(err.get("code"), str) else None, message if isinstance(message, str) else text
