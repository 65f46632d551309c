"""The reference miner's HTTP API: signed chat completions and availability.

Only validators may call it: every route but ``/health`` needs a btauth/1
signature for this miner's hotkey from a validator-permit holder (or an
allow-listed hotkey).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from aiohttp import web

from neurons.miner.backends.base import Backend, BackendError
from neurons.miner.backends.server_watch import DOWN_PROBE_S
from neurons.miner.standing import Standing
from neurons.miner.traffic import (
    CLIENT_GONE,
    FAILING,
    REFUSALS,
    TRAFFIC,
    FailureStreak,
    RefusalLog,
    TrafficLog,
    summary_loop,
)
from shared.connections import ended_by_stop
from shared.errors import ApiError
from shared.http import error_middleware, json_response, parse_model, read_json
from shared.ids import request_id_from
from shared.jsonutil import dumps
from shared.metagraph import MetagraphView
from shared.protocol import DEADLINE_HEADER, ChatCompletionRequest, told_deadline
from shared.request_log import RequestLog
from shared.signing import CALLER_KEY, RequestVerifier, btauth_middleware
from shared.sse import DONE_FRAME, DONE_TAIL_BYTES, encode_event, ends_with_done

BACKEND = web.AppKey("backend", Backend)
BACKEND_FAILURE = web.RequestKey("sn1_backend_failure", str)  # why the backend did not answer (its BackendError)
# The error a stream that had begun ended with (its last event): what its line says, as an HTTP error's would.
CUT_STREAM = web.RequestKey("sn1_cut_stream", ApiError)
# When a stream's first chunk came from the backend (perf_counter): its line's ``ttft_ms``, what the validator's
# latency reward scores (to the first word, which the first chunk carries or comes just before).
FIRST_CHUNK_AT = web.RequestKey("sn1_first_chunk_at", float)
METAGRAPH = web.AppKey("metagraph", MetagraphView)
STANDING = web.AppKey("standing", Standing)
STOPPING = web.AppKey("stopping", asyncio.Event)  # set once a stop signal came (``on_shutdown``)
# Seconds before its deadline that a caller's leaving counts as leaving at it (``left_at_deadline``): the time the
# request took to arrive, which the caller's deadline counts and this miner's does not.
LEFT_AT_DEADLINE_S = 0.5
# A chat request while the backend serves no model (its model server down, or listing none): a 503 at once, not
# the model server asked (a 502 after a connection refused, or a hung connect to a host gone), nor a 404
# ``model_not_found`` for a model served again once the server is back. Retry-After: the seconds between its probes.
MODEL_SERVER_UNAVAILABLE = "model_server_unavailable"
UNAVAILABLE_RETRY_AFTER = str(math.ceil(DOWN_PROBE_S))
NO_TIMER = contextlib.nullcontext()  # ``_timer``'s block for no deadline (it holds nothing: shared by every request)


def create_miner_app(
    backend: Backend,
    verifier: RequestVerifier,
    *,
    metagraph: MetagraphView | None = None,
    max_body_bytes: int = 8 << 20,
    log_level: str = "INFO",
    standing: Standing | None = None,
) -> web.Application:
    """``log_level``: the process's ``LOG_LEVEL`` (below INFO's, the per-request lines are not even formatted).
    ``standing``: checked again at each refresh of ``metagraph``, and its problems shown in ``/health``."""
    refusals = RefusalLog(caller=verifier.authorizer.allowed)
    app = web.Application(
        middlewares=[error_middleware, btauth_middleware(verifier, on_refused=refusals.record)],
        client_max_size=max_body_bytes,
    )
    app[BACKEND] = backend
    app[TRAFFIC] = TrafficLog(lines=RequestLog("miner", level=log_level))
    app[REFUSALS] = refusals
    app[FAILING] = FailureStreak()
    app.cleanup_ctx.append(summary_loop)
    if standing is not None:
        app[STANDING] = standing
    if metagraph is not None:
        app[METAGRAPH] = metagraph
        app.cleanup_ctx.append(_metagraph_refresh)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/availability", availability)
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_stopping)
    app.on_cleanup.append(_close_backend)
    app.on_cleanup.append(_flush_request_log)
    return app


async def _metagraph_refresh(app: web.Application) -> AsyncIterator[None]:
    standing = app.get(STANDING)
    task = asyncio.create_task(app[METAGRAPH].run(standing.check if standing is not None else None))
    yield
    task.cancel()


async def _stopping(app: web.Application) -> None:
    """The process is stopping: a request its stop cuts is logged as such (``miner_stopped``), not as a caller
    that left (``499``, counted as "left by the caller first" in the minute's line); a caller that leaves meanwhile
    (a race the API settled) is still one (``ended_by_stop``)."""
    app[STOPPING].set()


async def _close_backend(app: web.Application) -> None:
    await app[BACKEND].close()


async def _flush_request_log(app: web.Application) -> None:
    """The request lines still batched are written at shutdown (a stopped miner's last requests are kept)."""
    app[TRAFFIC].lines.flush()


async def health(request: web.Request) -> web.Response:
    """Liveness (``status`` is ``ok`` while the process serves), and ``problems``: what keeps validators from
    calling this miner or it from answering them (a restart fixes none of them), empty when nothing does."""
    request.app[TRAFFIC].seen(request, "health")
    backend = request.app[BACKEND]
    models = backend.models()
    standing = request.app.get(STANDING)
    problems = list(standing.problems) if standing is not None else []
    # what the model server's list says (down, empty, a model UPSTREAM_MODELS names missing), else the bare fact
    told = getattr(backend, "problems", list)()
    problems += told
    if not models and not told:
        problems.append("no model is served: the model server lists none, or has not answered yet (see the "
                        "WARNING at start)")
    if (failing := request.app[FAILING].problem()) is not None:
        problems.append(failing)
    problems += request.app[REFUSALS].problems()
    return json_response({"status": "ok", "backend": backend.name, "models": models, "problems": problems})


async def availability(request: web.Request) -> web.Response:
    request.app[TRAFFIC].seen(request, "availability")
    backend = request.app[BACKEND]
    return json_response(
        {
            "task_availabilities": {t: True for t in backend.tasks()},
            "llm_model_availabilities": {m: True for m in backend.models()},
        }
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    deadline = caller_deadline(request)
    status, stream, code = 500, False, None
    unserved: str | None = None  # the model asked for, when this miner does not serve it (its line names it)
    try:
        data = await read_json(request)
        req: ChatCompletionRequest = parse_model(ChatCompletionRequest, data)
        stream = bool(req.stream)
        backend = request.app[BACKEND]
        if (down := getattr(backend, "unavailable", _serving)()) is not None:
            raise ApiError(503, down, code=MODEL_SERVER_UNAVAILABLE, headers={"Retry-After": UNAVAILABLE_RETRY_AFTER})
        if not req.wants_any_model() and req.model not in backend.models():
            unserved = req.model
            raise ApiError(404, f"The model '{req.model}' is not served here.", code="model_not_found",
                           param="model")
        if deadline is not None and deadline <= asyncio.get_running_loop().time():
            raise _past_deadline(request, "before the model server was asked")
        response = await (_stream(request, backend, data, deadline) if stream
                          else _complete(request, backend, data, deadline))
        cut = request.get(CUT_STREAM)  # it failed mid-stream: its line says so as an error answer's does
        status, code = (cut.status, cut.code) if cut is not None else (response.status, None)
        return response
    except ApiError as e:
        status, code = e.status, e.code
        raise
    except asyncio.CancelledError:
        if request.app[STOPPING].is_set() and ended_by_stop(request):  # by this miner's stop, not by its caller
            status, code = 503, "miner_stopped"
        elif left_at_deadline(deadline):  # too slow, not a race lost: as the miner's own 504 at that moment
            status, code = 504, "deadline_exceeded"
            request[BACKEND_FAILURE] = f"the caller left at its deadline ({DEADLINE_HEADER}) before the answer ended"
        else:
            status = CLIENT_GONE  # the caller left (a lost race, its deadline): not a failure of this miner
        raise
    finally:
        request.app[FAILING].record(status, code, request.get(BACKEND_FAILURE))
        first_at = request.get(FIRST_CHUNK_AT)
        request.app[TRAFFIC].record(rid=request_id_from(request.headers),
                                    caller=request[CALLER_KEY].hotkey_ss58, stream=stream, status=status,
                                    latency_ms=(time.perf_counter() - started) * 1000,
                                    failure=request.get(BACKEND_FAILURE), code=code, model=unserved,
                                    ttft_ms=None if first_at is None else (first_at - started) * 1000)


def _serving() -> str | None:
    """A backend's ``unavailable`` when it has none (it always serves what it lists)."""
    return None


def caller_deadline(request: web.Request) -> float | None:
    """When the caller stops waiting (loop time), from its ``x-sn1-deadline`` (seconds left as it sent the
    request); None without one. The model server is not asked past it: the caller is gone, and the answer
    would cost this miner's model server for nobody (it kept generating until its own ``UPSTREAM_TIMEOUT``)."""
    left = told_deadline(request.headers.get(DEADLINE_HEADER))
    return None if left is None else asyncio.get_running_loop().time() + left


def left_at_deadline(deadline: float | None) -> bool:
    """Whether a caller that left now left at its deadline (within ``LEFT_AT_DEADLINE_S``: its clock ran from when
    it sent the request, this miner's from when it arrived). Its close and this miner's own 504 come at the same
    moment, and whichever came first decided the request's line: a model server slower than callers wait showed
    mostly as callers that left first (``status=499``, "left by the caller first": races lost) and never in
    ``/health``."""
    return deadline is not None and asyncio.get_running_loop().time() >= deadline - LEFT_AT_DEADLINE_S


def _past_deadline(request: web.Request, when: str) -> ApiError:
    """The caller's deadline passed (``when``): a 504, noted for the request's log line (a WARNING: the model
    server is slower than callers wait, or the caller's host is far)."""
    request[BACKEND_FAILURE] = f"the caller's deadline ({DEADLINE_HEADER}) passed {when}"
    return ApiError(504, f"The caller's deadline ({DEADLINE_HEADER}) passed {when}.", code="deadline_exceeded")


def _backend_failed(request: web.Request, error: BackendError) -> ApiError:
    """The caller's error for a backend failure, noted for the request's log line (a WARNING)."""
    request[BACKEND_FAILURE] = str(error)
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return ApiError(error.status, str(error), code=error.code, headers=headers)


async def _complete(request: web.Request, backend: Backend, body: dict[str, Any],
                    deadline: float | None) -> web.Response:
    """The backend's whole answer, asked for until the caller's ``deadline`` (loop time; None: the backend's
    own timeout), which an upstream's request is given too and is dropped at (its connection closed)."""
    complete_raw = getattr(backend, "complete_raw", None)
    try:
        if complete_raw is not None:  # its upstream request is bounded by the deadline itself: no second timer
            return web.Response(body=await complete_raw(body, deadline=deadline), content_type="application/json")
        async with asyncio.timeout_at(deadline):
            return json_response(await backend.complete(body))
    except BackendError as e:
        raise _backend_failed(request, e) from None
    except TimeoutError:
        raise _past_deadline(request, "before the model server answered") from None


async def _stream(request: web.Request, backend: Backend, body: dict[str, Any],
                  deadline: float | None) -> web.StreamResponse:
    """Stream the backend's chunks until the caller's ``deadline`` (as ``_complete``); a failure after
    headers (the deadline's too) becomes an SSE error event.

    Chunks that arrived together are written together (one syscall, not one per chunk).
    The upstream's status decides ours: nothing is sent before its first chunk.
    """
    stream_raw = getattr(backend, "stream_raw", None)
    # A raw stream's upstream request is bounded by the deadline itself (one timer a request, not three).
    timer_at = deadline if stream_raw is None else None
    # closed on every way out: a stream stopped at the deadline drops the upstream's connection at once
    async with contextlib.aclosing(stream_raw(body, deadline=deadline) if stream_raw is not None
                                   else _encoded(backend, body)) as pieces:
        try:
            async with _timer(timer_at):
                first = await anext(pieces, None)
        except BackendError as e:
            raise _backend_failed(request, e) from None
        except TimeoutError:
            raise _past_deadline(request, "before the model server's first chunk") from None
        if first is not None:
            request[FIRST_CHUNK_AT] = time.perf_counter()
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        if first is not None and ends_with_done(first):  # the whole answer came in one read: one write
            with contextlib.suppress(BackendError):  # a break after [DONE] loses nothing
                async for _rest in pieces:  # to the upstream's end, so its connection is reused
                    pass
            return web.Response(body=first, headers=headers)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        tail = b""
        try:
            async with _timer(timer_at):
                if first is not None:
                    await response.write(first)
                    tail = first[-DONE_TAIL_BYTES:]
                async for piece in pieces:
                    await response.write(piece)
                    tail = (tail + piece[-DONE_TAIL_BYTES:])[-DONE_TAIL_BYTES:]
        except (BackendError, TimeoutError) as e:
            cut = request[CUT_STREAM] = (_backend_failed(request, e) if isinstance(e, BackendError)
                                         else _past_deadline(request, "as the answer streamed"))
            request[BACKEND_FAILURE] = f"mid-stream: {request[BACKEND_FAILURE]}"
            # the error an answer not begun would have had, as its last event (OpenAI's shape: its code too)
            await response.write(_event_boundary(tail) + encode_event(dumps(cut.body())))
            tail = b""
        # A relayed stream carries the upstream's own [DONE]; every other ending gets ours, after a blank line
        # if the upstream stopped mid-event (else ours would run on into its last line).
        await response.write_eof(b"" if ends_with_done(tail) else _event_boundary(tail) + DONE_FRAME)
        return response


def _timer(when: float | None) -> contextlib.AbstractAsyncContextManager[object]:
    """A block that ends at ``when`` (loop time), or a block with no timer at all for None (a raw stream's own request
    keeps the deadline): ``asyncio.timeout_at(None)`` made and entered a timer object twice a stream for nothing."""
    return asyncio.timeout_at(when) if when is not None else NO_TIMER


def _event_boundary(tail: bytes) -> bytes:
    """What ends the relayed bytes' last event (nothing when they end on a blank line already)."""
    if not tail or tail.endswith((b"\n\n", b"\r\n\r\n", b"\r\r")):
        return b""
    return b"\n\n"


async def _encoded(backend: Backend, body: dict[str, Any]) -> AsyncGenerator[bytes]:
    """The backend's chunks as SSE bytes, one piece per group of chunks that arrived together
    (the backend's own ``stream_batches`` when it has one, else one chunk at a time)."""
    stream_batches = getattr(backend, "stream_batches", None)
    if stream_batches is not None:
        async for batch in stream_batches(body):
            yield b"".join(map(encode_event, batch))
        return
    async for data in backend.stream(body):
        yield encode_event(data)
