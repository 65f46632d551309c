"""A caller's strict JSON schema, run by the API on a miner's answer to check that it fits: a ``pattern`` (and
``patternProperties``) is matched with Python's ``re``, which backtracks, so ``^(a|aa)+$`` on 60 letters and a
``!`` takes years; ``anyOf`` within ``anyOf`` through ``$defs`` doubles the work a level, a few hundred bytes for
millions of steps. One request held the API worker's event loop (every caller's requests, its ``/health``) for
as long as the schema and a model's answer let it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp

from tests.helpers import Script, api_with_miners, chunk, loop_gaps, sse

# ~1.5 s (CPU) of Python's ``re`` on this pattern (it doubles about every 1.5 letters more: 60 are decades): long enough to
# be seen, short enough that the unbounded match ends while the test waits for it
LETTERS = 35
EVIL = "^(a|aa)+$"
LEVELS = 15  # ~1.5 s (CPU) of jsonschema's anyOf


def schema(keyword: str) -> dict:
    if keyword == "anyOf":  # 2**LEVELS ways to fail
        defs = {"d0": {"type": "integer"}} | {
            f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i - 1}"}, {"$ref": f"#/$defs/d{i - 1}"}]} for i in range(1, LEVELS)}
        return {"type": "object", "properties": {"s": {"$ref": f"#/$defs/d{LEVELS - 1}"}}, "$defs": defs}
    if keyword == "pattern":
        return {"type": "object", "properties": {"s": {"type": "string", "pattern": EVIL}}, "required": ["s"]}
    return {"type": "object", "patternProperties": {EVIL: {"type": "string"}}}


async def test_a_strict_schema_cannot_hold_the_event_loop(tmp_path: Path) -> None:
    for keyword in ("pattern", "patternProperties", "anyOf"):
        text = json.dumps({"a" * LETTERS + "!": "x"} if keyword == "patternProperties" else {"s": "a" * LETTERS + "!"})
        miner = Script([(0, d) for d in sse(chunk(text), chunk(finish="stop"))])
        body = {"messages": [{"role": "user", "content": "Hi"}],
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "s", "strict": True, "schema": schema(keyword)}}}
        async with api_with_miners(tmp_path, {1: miner}) as api, aiohttp.ClientSession() as s:
            async with loop_gaps() as gaps:
                async with s.post(api.url + "/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {api.key}"}) as r:
                    status = r.status
            assert max(gaps) < 0.5, (keyword, f"the event loop was held {max(gaps):.2f} s")
            # the check gives up on the caller's schema within its bound and leaves the answer to the model
            # server, as a schema it cannot walk: the answer is the caller's
            assert status == 200, keyword


@contextmanager
def internal_service() -> Iterator[tuple[str, list[str]]]:
    """An HTTP service on this host that only this host should reach (a cloud's metadata address, an admin port): its
    URL and the paths asked of it. In a thread of its own: jsonschema fetched with a blocking ``urlopen``, on the
    event loop, which a server on that loop could never have answered."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            asked.append(self.path)
            body = b'{"type": "integer"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/schema+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_a_strict_schemas_remote_ref_is_never_fetched(tmp_path: Path) -> None:
    """jsonschema fetches a ``$ref`` to an http URL it does not know (``urlopen``, no timeout): a caller's schema
    had the API request any URL from inside its network, and one that never answered held its event loop."""
    miner = Script([(0, d) for d in sse(chunk('{"s": 1}'), chunk(finish="stop"))])
    with internal_service() as (url, asked):
        strict = {"type": "object", "properties": {"s": {"$ref": url + "/latest/meta-data/iam"}}}
        body = {"messages": [{"role": "user", "content": "Hi"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "s", "strict": True, "schema": strict}}}
        async with api_with_miners(tmp_path, {1: miner}) as api, aiohttp.ClientSession() as s:
            async with s.post(api.url + "/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {api.key}"}) as r:
                status = r.status
        assert asked == [], "the API fetched the caller's URL"
        assert status == 200  # a reference the check cannot follow leaves the answer to the model server
