"""Bodies sent to the wrong one of the three inference routes, told where they go.

A chat body posted to the Completions route (or a prompt to chat, or a Responses ``input`` to
either) is a common first mistake with an OpenAI-compatible gateway; "messages: Field required"
does not say what to do about it.
"""

from __future__ import annotations

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
