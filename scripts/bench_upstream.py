"""The benchmark's fake OpenAI-compatible upstream: fixed answers, no delays.

``POST /v1/chat/completions`` answers a fixed ``chat.completion`` (non-streaming)
or 20 SSE chunks then ``[DONE]`` (streaming), from bytes built once at start so
the upstream costs as little as possible: it is the physical limit every setup
is measured against. Model ``bench-drip`` streams one chunk per second instead
(the open-streams memory test); ``bench-paced`` streams the 20 chunks each in its own write,
2 ms apart (a model's shape). A second instance plays the validator: its
``/scoring`` accepts at once, so the API's outbox delivery is measured without
the validator's own scoring work competing for the cores. Run: ``python scripts/bench_upstream.py --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time

from aiohttp import web

MODEL = "bench"
DRIP_MODEL = "bench-drip"
PACED_MODEL = "bench-paced"  # a stream shaped like a model's: each chunk its own write, PACE_SECONDS apart
PACE_SECONDS = 0.002
CHUNKS = 20
DRIP_CHUNKS = 120


# A completion's id and time as vLLM writes them ("chatcmpl-" and 32 hex digits; the time it answered): the API keeps
# a model server's own when they are a completion's (``api.race.own_envelope``), as a real server's are.
COMPLETION_ID = "chatcmpl-" + "5eed" * 8


def completion_bytes() -> bytes:
    return json.dumps({
        "id": COMPLETION_ID, "object": "chat.completion", "created": int(time.time()), "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "tok " * CHUNKS},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": CHUNKS, "total_tokens": CHUNKS + 5},
    }, separators=(",", ":")).encode()


def chunk_frame(i: int, last: bool = False, model: str = MODEL, created: int | None = None) -> bytes:
    """Chunk ``i`` of a stream; ``created``: the stream's time (one for all its chunks, as a model server's), now
    when not given."""
    delta = {"content": "tok "} if not last else {}
    if i == 0:
        delta["role"] = "assistant"
    chunk = {"id": COMPLETION_ID, "object": "chat.completion.chunk", "created": created or int(time.time()),
             "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": "stop" if last else None}]}
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def stream_bytes() -> bytes:
    frames = [chunk_frame(i) for i in range(CHUNKS - 1)] + [chunk_frame(CHUNKS - 1, last=True)]
    return b"".join(frames) + b"data: [DONE]\n\n"


def create_upstream_app() -> web.Application:
    completion, stream = completion_bytes(), stream_bytes()
    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"},
                                                    {"id": DRIP_MODEL, "object": "model"},
                                                    {"id": PACED_MODEL, "object": "model"}]}).encode()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b'"' + DRIP_MODEL.encode() + b'"' in body:
            return await paced(request, DRIP_MODEL, DRIP_CHUNKS, 1.0)
        if b'"' + PACED_MODEL.encode() + b'"' in body:
            return await paced(request, PACED_MODEL, CHUNKS, PACE_SECONDS)
        if b'"stream":true' in body.replace(b" ", b""):
            return web.Response(body=stream, content_type="text/event-stream")
        return web.Response(body=completion, content_type="application/json")

    async def paced(request: web.Request, model: str, chunks: int, pause: float) -> web.StreamResponse:
        """``chunks`` chunks, each its own write, ``pause`` seconds apart, then ``[DONE]``."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        created = int(time.time())
        for i in range(chunks - 1):
            await response.write(chunk_frame(i, model=model, created=created))
            await asyncio.sleep(pause)
        await response.write_eof(chunk_frame(chunks - 1, last=True, model=model, created=created) + b"data: [DONE]\n\n")
        return response

    async def list_models(_request: web.Request) -> web.Response:
        return web.Response(body=models, content_type="application/json")

    async def scoring(request: web.Request) -> web.Response:
        """The fake validator's ``/scoring``: accept at once (the API's outbox delivery stays measured)."""
        await request.read()
        return web.json_response({"status": "accepted"}, status=202)

    async def no_availability(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", list_models)
    app.router.add_post("/scoring", scoring)
    app.router.add_post("/miner_availabilities/miner_availabilities", no_availability)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    import uvloop

    web.run_app(create_upstream_app(), sock=sock, access_log=None, print=None, loop=uvloop.new_event_loop(),
                backlog=4096)


if __name__ == "__main__":
    main()
