"""Quality profiles: miners of known, different quality for the validator to rank.

Registered in ``neurons.miner.profiles.QUALITY_PROFILES`` (``MINER_PROFILE``,
``sn1 localnet --miner-profiles``). Each wraps the miner's real backend:

- ``lazy``: plausible random text (the model's vocabulary, no model), random
  numbers, made-up search results, a random offered tool called with random
  words: cheap answers that look like answers;
- ``slow``: the honest answer, first chunk held back until
  ``SLOW_FRACTION`` of the request's deadline (its ``timeout``; else, as a
  synthetic task's deadline is not in its body, ``SLOW_PROFILE_DEADLINE``, the
  validator's ``SYNTHETIC_TIMEOUT``, which the local network passes);
- ``copy``: replays the answer any peer would give to the same prompt,
  ignoring the seed it was asked with (a relay or a shared answer cache);
- ``down``: serves ``/health`` but nothing else: no tasks, no models, 503.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

from neurons.miner.backends.base import Backend, BackendError
from neurons.miner.backends.deterministic import VOCABULARY, DeterministicBackend
from neurons.miner.profiles import QUALITY_PROFILES
from shared import tasks
from shared.jsonutil import dumps

SLOW_FRACTION = 0.8


class LazyBackend(DeterministicBackend):
    """Random but plausible answers, streamed like the real model's."""

    name = "lazy"

    def __init__(self, inner: Backend) -> None:
        models = inner.models()
        super().__init__(models[0] if models else "sn1/deterministic")
        self.inner = inner
        self.rng = random.Random()

    def models(self) -> list[str]:
        return self.inner.models()

    def tasks(self) -> list[str]:
        return self.inner.tasks() or list(tasks.ALL_TASKS)

    def answer_text(self, body: dict[str, Any]) -> str:
        task = body.get("task") or tasks.INFERENCE
        if task == tasks.ARITHMETIC:
            return str(self.rng.randint(0, 99_999))
        if task == tasks.WEB_RETRIEVAL:
            return dumps([{"url": f"https://example.com/{self.rng.getrandbits(32):x}", "content": self._words(30),
                           "relevant": self._words(8)} for _ in range(3)])
        return self._words(self.rng.randint(20, 48))

    def _words(self, n: int) -> str:
        return (" ".join(self.rng.choice(VOCABULARY) for _ in range(n)) + ".").capitalize()

    def _guessing(self, body: dict[str, Any]) -> dict[str, Any]:
        """With tools, a call of a random offered tool with random words for its arguments: what a miner
        that runs no model can make of an agent's request (after a tool result, random text as always)."""
        tools, messages = body.get("tools"), body.get("messages") or []
        if not tools or body.get("tool_choice") == "none" or (messages and messages[-1].get("role") == "tool"):
            return body
        guess = {k: v for k, v in body.items() if k != "tool_choice"}
        return guess | {"tools": [self.rng.choice(tools)], "messages": [{"role": "user", "content": self._words(6)}]}

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return await super().complete(self._guessing(body))

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[str]:
        async for data in super().stream(self._guessing(body)):
            yield data

    async def close(self) -> None:
        await self.inner.close()


class _Wrapper:
    """Delegates everything to the real backend; subclasses change one thing."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = f"{type(self).__name__.removesuffix('Backend').lower()}({inner.name})"

    def models(self) -> list[str]:
        return self.inner.models()

    def tasks(self) -> list[str]:
        return self.inner.tasks()

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.inner.complete(body)

    def stream(self, body: dict[str, Any]) -> AsyncIterator[str]:
        return self.inner.stream(body)

    async def close(self) -> None:
        await self.inner.close()


class SlowBackend(_Wrapper):
    def __init__(self, inner: Backend, deadline: float) -> None:
        super().__init__(inner)
        self.deadline = deadline  # a request's deadline when its body names none (SLOW_PROFILE_DEADLINE)

    def delay(self, body: dict[str, Any]) -> float:
        timeout = body.get("timeout")
        deadline = float(timeout) if isinstance(timeout, int | float) and timeout > 0 else self.deadline
        return SLOW_FRACTION * deadline

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(self.delay(body))
        return await self.inner.complete(body)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[str]:  # type: ignore[override]
        await asyncio.sleep(self.delay(body))
        async for chunk in self.inner.stream(body):
            yield chunk


class CopyBackend(_Wrapper):
    @staticmethod
    def replayed(body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k != "seed"}

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.inner.complete(self.replayed(body))

    def stream(self, body: dict[str, Any]) -> AsyncIterator[str]:
        return self.inner.stream(self.replayed(body))


class DownBackend(_Wrapper):
    def models(self) -> list[str]:
        return []

    def tasks(self) -> list[str]:
        return []

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        raise BackendError("this miner is down", status=503)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[str]:  # type: ignore[override]
        raise BackendError("this miner is down", status=503)
        yield ""  # pragma: no cover - makes this an async generator


QUALITY_PROFILES.update({
    "lazy": lambda backend, _settings: LazyBackend(backend),
    "slow": lambda backend, settings: SlowBackend(backend, settings.slow_profile_deadline),
    "copy": lambda backend, _settings: CopyBackend(backend),
    "down": lambda backend, _settings: DownBackend(backend),
})
