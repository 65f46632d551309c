"""Bodies sent to the wrong one of the three inference routes, told where they go.

A chat body posted to the Completions route (or a prompt to chat, or a Responses ``input`` to
either) is a common first mistake with an OpenAI-compatible gateway; "messages: Field required"
does not say what to do about it. So is a chat completions field sent to another route, where it would be
ignored in silence: refused, naming where it goes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.errors import ApiError

ROUTE_OF = {"messages": "/v1/chat/completions", "prompt": "/v1/completions", "input": "/v1/responses"}
OWN = {"input": {"prompt"}}  # the Responses API has a ``prompt`` of its own (a stored prompt template)


def require(sent: Any, field: str) -> None:
    """A 400 naming ``field`` and the route the body belongs to, when ``sent`` lacks ``field`` and has
    another route's (a request with neither is left to the route's own validation)."""
    if isinstance(sent, dict) and field not in sent:
        for other, route in ROUTE_OF.items():
            if other != field and other not in OWN.get(field, ()) and other in sent:
                raise ApiError(400, f"'{field}' is required here. A body with '{other}' is for POST {route}.",
                               param=field, code="missing_parameter")


# Chat completions' fields that change nothing with these values, which chat clients send by default (no tools,
# plain text, one answer), as with null for each: accepted on the routes that refuse the field.
NEUTRAL: dict[str, tuple[Any, ...]] = {"tools": ([],), "functions": ([],), "tool_choice": ("none", "auto"),
                                       "function_call": ("none", "auto"), "response_format": ({"type": "text"},),
                                       "n": (1,), "logprobs": (False,), "stop": ([],)}
# Chat completions' fields that would change the answer, posted to /v1/responses: where the Responses API takes
# each (OpenAI's own 400 says "has moved to" for the first ones), or what to do. Ignored, a caller got an answer
# uncut by max_tokens 5, or prose for a JSON response_format, and never knew.
RESPONSES_MOVED = {
    "messages": "'input'",
    "response_format": "'text.format'",
    "max_tokens": "'max_output_tokens'",
    "max_completion_tokens": "'max_output_tokens'",
    "reasoning_effort": "'reasoning.effort'",
    "verbosity": "'text.verbosity'",
    "logprobs": "'include' (include: [\"message.output_text.logprobs\"], with top_logprobs)",
    "web_search_options": "'tools' (tools: [{\"type\": \"web_search\"}])",
    "functions": "'tools' (each {\"type\": \"function\", \"name\": ..., \"parameters\": ...})",
    "function_call": "'tool_choice'",
}
RESPONSES_NOT_SERVED = {
    "stop": "The Responses API takes no stop sequences (OpenAI's neither): send the request to /v1/chat/completions",
    "n": "A response is one answer: send the request to /v1/chat/completions for n answers, or make n requests",
}


# The Responses API's fields posted to /v1/chat/completions, and what chat takes instead. Unknown fields pass on to
# the miners there (a model server may take more than OpenAI does), but these are no chat server's: passed on, each was
# ignored in silence (the instructions lost, an answer uncut by max_output_tokens, a conversation continued from none).
CHAT_INSTEAD = {
    "instructions": "send them as the first message, with role 'system' (or 'developer')",
    "max_output_tokens": "the token limit is 'max_tokens' (or 'max_completion_tokens')",
    "text": "a format is 'response_format', and verbosity 'verbosity'",
    "input": "send the conversation as 'messages'",
    "previous_response_id": "a chat completion is not stored: send the whole conversation in 'messages', or continue "
                            "the response on POST /v1/responses",
    "conversation": "conversations are the Responses API's: send the whole conversation in 'messages', or use POST "
                    "/v1/responses",
}


def refuse_set(sent: dict[str, Any], fields: dict[str, str], say: Callable[[str, str], str]) -> None:
    """A 400 ``unsupported_parameter`` naming the first of ``fields`` that ``sent`` sets to a value that asks for
    something (not null, not ``NEUTRAL``), in the words ``say`` makes of its name and its entry in ``fields``."""
    for name, instead in fields.items():
        if sent.get(name) is not None and sent[name] not in NEUTRAL.get(name, ()):
            raise ApiError(400, say(name, instead), param=name, code="unsupported_parameter")


def refuse_chat_fields_in_responses(sent: dict[str, Any]) -> None:
    """Chat completions' fields on ``/v1/responses`` that would change the answer: a 400 naming the field and where
    the Responses API takes it (``RESPONSES_MOVED``), or what to do (``RESPONSES_NOT_SERVED``)."""
    refuse_set(sent, RESPONSES_MOVED,
               lambda name, to: f"Unsupported parameter: '{name}'. In the Responses API, this parameter has moved to {to}.")
    refuse_set(sent, RESPONSES_NOT_SERVED, lambda name, what: f"Unsupported parameter: '{name}'. {what}.")


def refuse_responses_fields_in_chat(sent: dict[str, Any]) -> None:
    """The Responses API's fields on ``/v1/chat/completions`` (``CHAT_INSTEAD``): a 400 naming the field and what
    chat completions take instead. (OpenAI's deprecated ``functions`` and ``function_call`` are served:
    ``legacy_functions``.)"""
    refuse_set(sent, CHAT_INSTEAD, lambda name, instead: f"Unsupported parameter: '{name}'. It is a Responses API "
               f"field (POST /v1/responses); in chat completions, {instead}.")
