"""Signing a request to a miner (or the validator) as it leaves, however long it waited to.

A signature is good for ``http_auth.DEFAULT_MAX_AGE`` (10 s) and a request can wait longer before it goes out:
for a pooled connection (a saturated pool: ``limit_per_host`` requests to one slow miner, ``limit`` in all), for
a new connection to a miner that answers slowly (a full accept queue drops the SYN, resent after 1 s, then 3 s),
and again when it is sent once more (``shared.resend.post_once_more``). A request that left stale was refused
(401) and the miner scored 0 for the node's own congestion. ``Signing`` is the one way a request is signed,
the first time and each time after; ``ResigningConnector`` signs it again when it waited long.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from yarl import URL

from shared.protocol import DEADLINE_HEADER
from shared.sdk import http_auth
from shared.signing import Signer

RETELL_AFTER = 0.05  # seconds a request waited for a connection after which its deadline header is redone


def seconds_left(deadline: float) -> str:
    """``x-sn1-deadline``'s value: the seconds from now to ``deadline`` (loop time), to the millisecond."""
    left = deadline - asyncio.get_running_loop().time()
    return f"{left:.3f}" if left > 0 else "0.000"


class Signing:
    """One POST's signature and ``x-sn1-deadline``, made each time it may leave: when it is made, when the pool
    held it long (``ResigningConnector``) and when it is sent once more on a new connection.

    Each signature has a new nonce, under which the pool finds the request in ``pending`` (until ``done``). The
    once-more send was signed apart and never left there, so one that then waited for its connection went out
    with its signature as old as the wait, and a miner refused it."""

    __slots__ = ("signer", "url", "body", "receiver", "deadline", "headers", "nonce", "_pending")

    def __init__(self, signer: Signer, url: URL, body: bytes, receiver: str, headers: dict[str, str], *,
                 deadline: float | None, pending: dict[str, Signing] | None) -> None:
        """``headers``: the request's others (its content type, ...), sent with the signature; ``deadline`` (loop
        time): told in ``x-sn1-deadline`` when given; ``pending``: the pool's, None for a pool that signs nothing."""
        self.signer = signer
        self.url = url
        self.body = body
        self.receiver = receiver
        self.deadline = deadline
        self.headers = headers
        self.nonce: str | None = None
        self._pending = pending
        self.sign()

    def sign(self) -> dict[str, str]:
        """Signs anew (a new nonce; the pool finds the request under it, no longer under the last) and tells
        what is left of the deadline; returns the headers that changed."""
        fresh = self.signer.headers("POST", self.url, self.body, self.receiver)
        if self.deadline is not None:
            fresh[DEADLINE_HEADER] = seconds_left(self.deadline)
        self.headers.update(fresh)
        if (pending := self._pending) is not None:
            if self.nonce is not None:
                pending.pop(self.nonce, None)
            self.nonce = fresh[http_auth.HEADER_NONCE]
            pending[self.nonce] = self
        return fresh

    def retold(self) -> dict[str, str]:
        """The deadline header told again (what is left of it now); nothing for a request that tells none."""
        if self.deadline is None:
            return {}
        self.headers[DEADLINE_HEADER] = told = seconds_left(self.deadline)
        return {DEADLINE_HEADER: told}

    def done(self) -> None:
        """Sent (or given up): nothing left for the pool to sign again."""
        if self.nonce is not None and self._pending is not None:
            self._pending.pop(self.nonce, None)
        self.nonce = None


class ResigningConnector(aiohttp.TCPConnector):
    """A pool that signs a request again (``Signing.sign``) when it waited ``resign_after`` for its connection,
    and after ``RETELL_AFTER`` tells its ``x-sn1-deadline`` again (the time it waited is no longer the miner's)."""

    resign_after = 2.0  # seconds of waiting after which a request is signed again as it leaves

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pending: dict[str, Signing] = {}

    async def connect(self, req: aiohttp.ClientRequest, traces: Any, timeout: aiohttp.ClientTimeout) -> Any:
        started = time.monotonic()
        conn = await super().connect(req, traces, timeout)
        waited = time.monotonic() - started
        if waited >= RETELL_AFTER:
            signing = self.pending.get(req.headers.get(http_auth.HEADER_NONCE, ""))
            if signing is not None:
                req.headers.update(signing.sign() if waited >= self.resign_after else signing.retold())
        return conn
