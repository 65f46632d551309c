"""A fleet of real miners (honest and fault-injecting) behind an in-process API, all on 127.0.0.1.

Every miner verifies real btauth/1 signatures from the API's hotkey; the API
has a real SQLite store and a real key. Used by the chaos suite and the soak.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from api.app import create_api_app
from api.concurrency import LIMITER
from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend, generate_text
from neurons.miner.faults import REFUSE, STATS, FaultOptions, FaultStats, create_fault_app, refusing_port
from shared.keys_wire import MAX_CONCURRENT
from shared.signing import Authorizer, RequestVerifier
from tests.helpers import build_api_context, keypair, serve_app, snapshot, wait_until  # noqa: F401 - the chaos tests' import

VALIDATOR = keypair("//Validator")
HONEST = "honest"
MESSAGES = [{"role": "user", "content": "Tell me something reliable."}]


def miner_keypair(uid: int) -> Any:
    return keypair(f"//ChaosMiner{uid}")


def expected_answer(seed: int, messages: list[dict[str, Any]] = MESSAGES, **fields: Any) -> str:
    """The honest (deterministic) answer the API must relay for this request."""
    return generate_text({"messages": messages, "seed": seed, **fields})


@dataclass
class Fleet:
    url: str
    key: str
    ctx: Any
    app: Any
    profiles: dict[int, str]
    stats: dict[int, FaultStats] = field(default_factory=dict)
    verifiers: dict[int, RequestVerifier] = field(default_factory=dict)  # each miner's (its nonce window)
    miner_apps: dict[int, Any] = field(default_factory=dict)  # the honest and fault miners' apps, by uid

    def uids(self, *profiles: str) -> list[int]:
        return [uid for uid, p in self.profiles.items() if p in profiles]

    def in_flight(self) -> int:
        """Miner-side chat requests still open (fault miners only)."""
        return sum(s.active for s in self.stats.values())


@contextlib.asynccontextmanager
async def fleet(
    tmp_path: Path, profiles: dict[int, str], *, options: FaultOptions | None = None, **settings: Any
) -> AsyncIterator[Fleet]:
    """Start one miner per uid (``honest`` or a fault profile) and the API in front of them."""
    allowed = {VALIDATOR.ss58_address}
    async with contextlib.AsyncExitStack() as stack:
        miners: dict[int, tuple[str, str | None]] = {}
        stats: dict[int, FaultStats] = {}
        verifiers: dict[int, RequestVerifier] = {}
        apps: dict[int, Any] = {}
        for uid, profile in profiles.items():
            kp = miner_keypair(uid)
            verifier = verifiers[uid] = RequestVerifier(kp.ss58_address, Authorizer(lambda: allowed))
            if profile == REFUSE:
                port = stack.enter_context(refusing_port())
                miners[uid] = (kp.ss58_address, f"127.0.0.1:{port}")
                continue
            if profile == HONEST:
                app = create_miner_app(DeterministicBackend(), verifier)
            else:
                app = create_fault_app(profile, DeterministicBackend(), verifier, options=options)
                stats[uid] = app[STATS]
            apps[uid] = app
            url = await stack.enter_async_context(serve_app(app))
            miners[uid] = (kp.ss58_address, url.removeprefix("http://"))
        ctx = await build_api_context(tmp_path, snapshot(VALIDATOR.ss58_address, miners), VALIDATOR, **settings)
        stack.push_async_callback(ctx.store.close)
        stack.push_async_callback(ctx.client.session.close)
        # the load tools' key: neither its rate nor its requests in flight throttle them (each still takes a slot)
        secret, _ = await ctx.store.create_key(1_000_000, max_concurrent_requests=MAX_CONCURRENT)
        app = create_api_app(ctx, run_background=False)
        url = await stack.enter_async_context(serve_app(app))
        yield Fleet(url=url, key=secret, ctx=ctx, app=app, profiles=dict(profiles), stats=stats,
                    verifiers=verifiers, miner_apps=apps)


@contextlib.asynccontextmanager
async def fleet_on(tmp_path: Path, store: Any, name: str) -> AsyncIterator[tuple[Fleet, str]]:
    """One honest miner and the API in front of it, the API on ``store`` (its keys, usage and rate windows)
    instead of its own SQLite file; a key of ``name`` created there. ``store`` is closed at the end."""
    async with fleet(tmp_path, {1: HONEST}) as f:
        sqlite, f.ctx.store = f.ctx.store, store
        f.app[LIMITER].slots = store.inflight()  # the slots beside the keys, as the app opens them
        if f.ctx.usage is not None:
            f.ctx.usage.store = store
        await sqlite.close()
        secret, _ = await store.create_key(1000, name=name)
        try:
            yield f, secret
        finally:
            await store.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.text)

    def sse_datas(self) -> list[str]:
        return [line[6:] for line in self.text.split("\n") if line.startswith("data: ")]

    def content(self) -> str:
        """The answer text, from a completion object or from a stream's deltas."""
        if not self.headers.get("Content-Type", "").startswith("text/event-stream"):
            return self.json()["choices"][0]["message"]["content"]
        out = []
        for d in self.sse_datas():
            if d == "[DONE]":
                continue
            for c in json.loads(d).get("choices", []):
                out.append(c.get("delta", {}).get("content") or "")
        return "".join(out)


async def chat(
    session: aiohttp.ClientSession, f: Fleet, body: dict[str, Any], *, limit: float = 30.0,
    path: str = "/v1/chat/completions",
) -> Reply:
    started = time.monotonic()
    async with session.post(f.url + path, json=body, timeout=aiohttp.ClientTimeout(total=limit),
                            headers={"Authorization": f"Bearer {f.key}"}) as r:
        text = await r.text()
        return Reply(r.status, dict(r.headers), text, time.monotonic() - started)


