"""The headers of a request to an OpenAI-compatible server, from the miner (its upstream) or the validator (its
reference model): a JSON body, the answer's type accepted, and the key, when there is one, as a bearer token."""

from __future__ import annotations

JSON = "application/json"


def openai_headers(api_key: str | None, *, accept: str = JSON) -> dict[str, str]:
    """``accept``: what the answer must be (``text/event-stream`` for a stream). No key, no ``Authorization``: a
    local server (vLLM, Ollama) needs none, and an empty ``Bearer`` is refused by some."""
    headers = {"Content-Type": JSON, "Accept": accept}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers
