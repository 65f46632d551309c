"""What a miner backend must do: say what it serves, answer streaming or not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class BackendError(Exception):
    """The backend could not answer (upstream down, bad upstream reply), or its model server refused
    the request (a 4xx status with ``code=MODEL_SERVER_REJECTED``). ``retry_after``: the seconds a busy
    miner's 503 tells the caller to wait before it retries (its ``Retry-After``)."""

    def __init__(self, message: str, status: int = 502, *, code: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or "backend_error"
        self.retry_after = retry_after


class Backend(Protocol):
    name: str

    def models(self) -> list[str]: ...

    def tasks(self) -> list[str]: ...

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A whole ``chat.completion`` object."""
        ...

    def stream(self, body: dict[str, Any]) -> AsyncIterator[str]:
        """Each chunk's JSON text, in order, without the final ``[DONE]``.

        A backend may also offer ``stream_batches(body)``: the same chunks in
        non-empty lists as they arrived, which the app then writes one list at a
        time. A wrapper that changes ``stream`` must not expose the inner one's.

        A backend in front of another server may offer ``complete_raw(body, *, deadline)``
        (the JSON completion's bytes) and ``stream_raw(body, *, deadline)`` (the SSE bytes
        as read, ``[DONE]`` included): the app then relays them without parsing, and
        hands them the caller's deadline (loop time, or None) to bound the upstream's
        request by. The app bounds every backend by it anyway.
        """
        ...

    async def close(self) -> None: ...
