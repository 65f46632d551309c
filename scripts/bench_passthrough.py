"""The ``bare`` setup: an aiohttp pass-through proxy with no logic at all.

Two of these in a row give the same number of hops as API -> miner, so the
difference between ``bare`` and ``sn1`` is exactly what our logic costs.
Run: ``python scripts/bench_passthrough.py --port P --target http://127.0.0.1:Q``.
"""

from __future__ import annotations

import argparse
import socket

import aiohttp
from aiohttp import web


def create_passthrough_app(target: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application):
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with app["session"].post(target + request.path_qs, data=body, headers=headers) as up:
            if up.content_type != "text/event-stream":
                return web.Response(body=await up.read(), status=up.status, content_type=up.content_type)
            response = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", forward)
    app.router.add_get("/health", lambda _r: web.Response(text="ok"))  # type: ignore[arg-type, return-value]
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--target", required=True)
    args = p.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    import uvloop

    web.run_app(create_passthrough_app(args.target.rstrip("/")), sock=sock, access_log=None, print=None,
                loop=uvloop.new_event_loop(), backlog=4096)


if __name__ == "__main__":
    main()
