"""The fault-injecting miner: a test double that misbehaves on purpose, one profile per fault.

Miners are untrusted and unreliable by design, so the API and the validator are
tested against servers that do every bad thing the wire allows: refuse
connections, stall before or after the headers or mid-stream, trickle one byte
a second, answer 500, broken JSON, broken SSE framing, an empty stream, only
``[DONE]``, an answer cut short (no ``finish_reason``), an answer beyond the size cap, the wrong content type, tool-call
garbage, an answer after the deadline, a connection dropped mid-chunk.

Each fault miner is otherwise a faithful miner: it verifies btauth/1 signatures
(when given a verifier), answers ``/health`` and ``/availability`` honestly (so
validators and the API select it) and only ``POST /v1/chat/completions``
misbehaves. ``refuse`` is the exception: nothing listens, so there is no
``/health`` either (``sn1 localnet`` does not wait for it).

Served by ``sn1 miner`` when ``MINER_PROFILE`` names a fault (``sn1 localnet
--miner-profiles honest,stall-mid,...``) and used in-process by the chaos suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from loguru import logger

from neurons.miner.backends.base import Backend
from neurons.miner.profiles import FAULT_PROFILES
from shared.connections import ConnectionLimits
from shared.errors import error_body
from shared.http import error_middleware, json_response, read_json
from shared.jsonutil import dumpb
from shared.signing import RequestVerifier, btauth_middleware
from shared.sse import DONE_FRAME, encode_event


@dataclass(frozen=True)
class FaultOptions:
    """Knobs of the faults. Defaults put every fault beyond the API's default limits."""

    huge_bytes: int = 16 << 20  # > MINER_MAX_RESPONSE_BYTES (2 MiB by default)
    late_seconds: float = 125.0  # > MAX_REQUEST_TIMEOUT (120 s by default)
    trickle_interval: float = 1.0  # one byte per interval
    stall_after_chunks: int = 1  # stall-mid: content chunks sent before the stall
    disconnect_after_chunks: int = 0  # disconnect: whole content chunks before the broken one


@dataclass
class FaultStats:
    """What the chaos tests observe from the miner's side (calls, in flight, cancelled by the caller)."""

    calls: int = 0
    active: int = 0
    cancelled: int = 0


@dataclass(frozen=True)
class FaultCall:
    request: web.Request
    body: dict[str, Any]
    backend: Backend
    options: FaultOptions


FaultHandler = Callable[[FaultCall], Awaitable[web.StreamResponse]]

BACKEND = web.AppKey("fault_backend", Backend)
PROFILE = web.AppKey("fault_profile", str)
OPTIONS = web.AppKey("fault_options", FaultOptions)
STATS = web.AppKey("fault_stats", FaultStats)

REFUSE = "refuse"


# --- building blocks -------------------------------------------------------------------------------


async def _forever() -> None:
    """Hold the request open until the caller gives up (the handler is then cancelled)."""
    await asyncio.Event().wait()


async def _sse_response(request: web.Request, content_type: str = "text/event-stream") -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


async def honest_events(call: FaultCall) -> list[bytes]:
    """The honest answer's SSE events (each ``data: ...\\n\\n``), without ``[DONE]``."""
    return [encode_event(data) async for data in call.backend.stream(call.body)]


def _is_content(event: bytes) -> bool:
    return b'"content":"' in event and b'"content":""' not in event


async def _sse_bytes(call: FaultCall, *chunks: bytes, done: bool = True) -> web.StreamResponse:
    """An SSE response made of exactly these bytes (then ``[DONE]`` unless ``done=False``)."""
    response = await _sse_response(call.request)
    for chunk in chunks:
        await response.write(chunk)
    if done:
        await response.write(DONE_FRAME)
    await response.write_eof()
    return response


async def _stream_honestly(call: FaultCall, response: web.StreamResponse) -> web.StreamResponse:
    for event in await honest_events(call):
        await response.write(event)
    await response.write(DONE_FRAME)
    await response.write_eof()
    return response


# --- the faults ------------------------------------------------------------------------------------


async def stall_headers(call: FaultCall) -> web.StreamResponse:
    await _forever()
    raise AssertionError("unreachable")


async def stall_body(call: FaultCall) -> web.StreamResponse:
    await _sse_response(call.request)
    await _forever()
    raise AssertionError("unreachable")


async def stall_mid(call: FaultCall) -> web.StreamResponse:
    """A valid start (role chunk + ``stall_after_chunks`` content chunks), then silence."""
    response = await _sse_response(call.request)
    sent = 0
    for event in await honest_events(call):
        if _is_content(event):
            if sent >= call.options.stall_after_chunks:
                break
            sent += 1
        await response.write(event)
    await _forever()
    raise AssertionError("unreachable")


async def trickle(call: FaultCall) -> web.StreamResponse:
    response = await _sse_response(call.request)
    raw = b"".join(await honest_events(call)) + DONE_FRAME
    for i in range(len(raw)):
        await response.write(raw[i : i + 1])
        await asyncio.sleep(call.options.trickle_interval)
    await response.write_eof()
    return response


async def http500(call: FaultCall) -> web.StreamResponse:
    return json_response(error_body("the miner crashed", type_="server_error"), status=500)


async def bad_json(call: FaultCall) -> web.StreamResponse:
    return await _sse_bytes(call, b'data: {"choices": [{"index": 0, "delta": {"content": "Hel\n\n',
                            b"data: this is not json\n\n")


async def bad_sse(call: FaultCall) -> web.StreamResponse:
    """Events run together without the blank line between them, then bytes that are not UTF-8."""
    events = [e.rstrip(b"\n") for e in await honest_events(call)]
    return await _sse_bytes(call, b"".join(events) + b"\n\n", b"data: \xff\xfe\xfd\n\n")


async def empty(call: FaultCall) -> web.StreamResponse:
    return await _sse_bytes(call, done=False)


async def done_only(call: FaultCall) -> web.StreamResponse:
    return await _sse_bytes(call)


async def cut_short(call: FaultCall) -> web.StreamResponse:
    """The answer without its last chunk (the one with ``finish_reason``), then ``[DONE]``: what a
    miner relays when its model server drops the connection mid-answer and it ends the stream as if
    nothing happened. Well-formed to the last byte; only the missing ``finish_reason`` tells."""
    events = [e for e in await honest_events(call) if b'"finish_reason":"' not in e]
    return await _sse_bytes(call, *events)


async def huge(call: FaultCall) -> web.StreamResponse:
    """One content event of ``huge_bytes``, written in 64 KiB pieces (bounded memory on both sides)."""
    response = await _sse_response(call.request)
    await response.write(b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"')
    piece = b"x" * (64 << 10)
    for _ in range(max(1, call.options.huge_bytes // len(piece))):
        await response.write(piece)
    await response.write(b'"},"finish_reason":"stop"}]}\n\n' + DONE_FRAME)
    await response.write_eof()
    return response


async def wrong_type(call: FaultCall) -> web.StreamResponse:
    """A perfectly good SSE body labelled ``text/html``: a caller must not trust it."""
    raw = b"".join(await honest_events(call)) + DONE_FRAME
    return web.Response(body=raw, content_type="text/html")


BAD_TOOL_CALLS: tuple[Any, ...] = (
    "rm -rf /",
    [{"index": "first", "function": 7}],
    [{"index": 0, "function": {"name": ["not", "a", "string"], "arguments": {"a": 1}}}],
    [None, 42],
)


async def bad_tools(call: FaultCall) -> web.StreamResponse:
    chunks = ({"object": "chat.completion.chunk", "model": "sn1/garbage",
               "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": garbage}}]}
              for garbage in BAD_TOOL_CALLS)
    return await _sse_bytes(call, *(b"data: " + dumpb(c) + b"\n\n" for c in chunks))


async def late(call: FaultCall) -> web.StreamResponse:
    await asyncio.sleep(call.options.late_seconds)
    return await _stream_honestly(call, await _sse_response(call.request))


async def disconnect(call: FaultCall) -> web.StreamResponse:
    """Role chunk and ``disconnect_after_chunks`` content chunks, then half an event in a chunk that
    announces more bytes than it carries, and the connection is closed."""
    request = call.request
    response = await _sse_response(request)
    sent = 0
    for event in await honest_events(call):
        if _is_content(event):
            if sent >= call.options.disconnect_after_chunks:
                transport = request.transport
                assert transport is not None
                half = event[: len(event) // 2]
                transport.write(f"{len(event):x}\r\n".encode() + half)
                transport.close()
                return response
            sent += 1
        await response.write(event)
    await response.write_eof()
    return response


FAULTS: dict[str, FaultHandler] = {
    "stall-headers": stall_headers,
    "stall-body": stall_body,
    "stall-mid": stall_mid,
    "trickle": trickle,
    "http500": http500,
    "bad-json": bad_json,
    "bad-sse": bad_sse,
    "empty": empty,
    "done-only": done_only,
    "cut-short": cut_short,
    "huge": huge,
    "wrong-type": wrong_type,
    "bad-tools": bad_tools,
    "late": late,
    "disconnect": disconnect,
}

FAULT_PROFILES.update(FAULTS)
FAULT_PROFILES.add(REFUSE)

# Faults that start a valid answer and only then fail: in a streaming race they can win
# (the first content chunk wins) and the client then sees the mid-stream error event.
FAIL_AFTER_ANSWER_STARTS = frozenset({"stall-mid", "cut-short"})


# --- the app ---------------------------------------------------------------------------------------


def create_fault_app(
    profile: str,
    backend: Backend,
    verifier: RequestVerifier | None = None,
    *,
    options: FaultOptions | None = None,
    max_body_bytes: int = 8 << 20,
) -> web.Application:
    """A miner app whose chat route misbehaves as ``profile`` says (``refuse`` has no app)."""
    if profile not in FAULTS:
        raise ValueError(f"unknown fault profile {profile!r}; known: {', '.join(sorted(FAULT_PROFILES))}")
    middlewares: list[Any] = [error_middleware]
    if verifier is not None:
        middlewares.append(btauth_middleware(verifier))
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    app[BACKEND] = backend
    app[PROFILE] = profile
    app[OPTIONS] = options or FaultOptions()
    app[STATS] = FaultStats()
    app.router.add_get("/health", _health)
    app.router.add_post("/availability", _availability)
    app.router.add_post("/v1/chat/completions", _chat)
    return app


async def _health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "backend": request.app[BACKEND].name, "profile": request.app[PROFILE]})


async def _availability(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    return json_response({"task_availabilities": {t: True for t in backend.tasks()},
                          "llm_model_availabilities": {m: True for m in backend.models()}})


async def _chat(request: web.Request) -> web.StreamResponse:
    app = request.app
    body = await read_json(request)
    if not isinstance(body, dict):
        body = {}
    stats = app[STATS]
    stats.calls += 1
    stats.active += 1
    try:
        return await FAULTS[app[PROFILE]](FaultCall(request, body, app[BACKEND], app[OPTIONS]))
    except asyncio.CancelledError:
        stats.cancelled += 1
        raise
    finally:
        stats.active -= 1


# --- refuse and serving ----------------------------------------------------------------------------


@contextlib.contextmanager
def refusing_port(host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it) but never listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_fault_miner(
    profile: str, backend: Backend, verifier: RequestVerifier, host: str, port: int,
    *, max_body_bytes: int = 8 << 20, options: FaultOptions | None = None, limits: ConnectionLimits | None = None,
) -> None:
    """``sn1 miner`` with a fault profile: serve the misbehaving app until SIGINT/SIGTERM."""
    from shared.http import serve_until_signal

    logger.warning("miner profile {!r} is a FAULT profile: this miner misbehaves on purpose", profile)
    if profile == REFUSE:
        with refusing_port(host, port):
            await _until_signal()
        return
    app = create_fault_app(profile, backend, verifier, options=options, max_body_bytes=max_body_bytes)
    await serve_until_signal(app, host, port, limits=limits)
