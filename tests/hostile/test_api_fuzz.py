"""Every API endpoint fuzzed: whatever a caller sends, the answer is never a 500, every error is
OpenAI-shaped, and no secret comes back in an error body.

Routes are read from the app's router, so an endpoint added later is fuzzed too.
Requests carry a valid API key and the admin key, so the fuzz reaches past
authentication into each handler's parsing.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import re
import time
import urllib.parse
import zlib

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.hostile.conftest import ADMIN_KEY, Running

FANOUT = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/web_retrieval")
# Fan-out routes may fail upstream for a request the API accepted (a short ``timeout``, a model
# no miner serves): those are the documented 503/504, never a 500. Never "no_valid_answer" (502): the
# miner behind this API is honest, so a 502 means the API let through a request a miner refuses, a
# caller's mistake that would be blamed on the miner (a NaN in ``logit_bias`` was one).
UPSTREAM_CODES = {"deadline_exceeded", "no_miners_available", "model_not_found"}
# No shrinking: a failure already names the request that caused it, and shrinking HTTP round trips is slow.
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                phases=[Phase.explicit, Phase.generate])

scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                                           max_size=4), max_leaves=16)
FIELDS = ["messages", "model", "stream", "stream_options", "temperature", "top_p", "n", "stop", "max_tokens",
          "max_completion_tokens", "seed", "tools", "tool_choice", "response_format", "logit_bias", "task",
          "sampling_parameters", "uids", "mixture", "timeout", "target_results", "inference_mode", "search_query",
          "n_miners", "n_results", "max_response_time", "rate_limit", "name", "scopes", "allowed_models",
          "expires_at", "expires_in", "user", "logprobs", "top_logprobs", "prompt", "suffix", "echo", "best_of"]
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]) | json_values},
                                optional={"content": st.text(max_size=50) | json_values, "name": json_values})
shaped = st.fixed_dictionaries(
    {"messages": st.lists(message, min_size=0, max_size=3) | json_values},
    optional={f: json_values for f in FIELDS if f != "messages"},
)


def deep(n: int) -> bytes:
    return b'{"messages":' + b"[" * n + b"]" * n + b"}"


# Mostly-valid bodies with one hostile field: they get past the first check into the handler.
one_bad_field = st.tuples(st.sampled_from(FIELDS), json_values).map(
    lambda kv: {"messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "rate_limit": 5, "search_query": "q",
                kv[0]: kv[1]})
# A string with a lone UTF-16 surrogate (written as its \\u escape), as a value or as a key.
surrogate_text = st.builds(lambda a, c, b: a + c + b, st.text(max_size=5),
                           st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.text(max_size=5))
one_surrogate = st.tuples(st.sampled_from(FIELDS), surrogate_text, st.booleans()).map(
    lambda t: {"messages": [{"role": "user", "content": "hi"}], "search_query": "q",
               **({t[0]: {t[1]: 1}} if t[2] else {t[0]: t[1]})})
raw_bodies = st.one_of(
    one_bad_field.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    one_bad_field.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    st.binary(max_size=200),
    st.just(b"\xff\xfe\x00{"), st.just(b'{"messages": "\xc3\x28"}'),
    st.integers(min_value=1, max_value=200_000).map(deep),
    st.integers(min_value=100, max_value=5000).map(lambda n: b"9" * n),  # a huge number as the whole body
    one_surrogate.map(lambda d: json.dumps(d).encode()),  # "\\ud800": JSON may spell it, no text holds it
    shaped.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    json_values.map(lambda d: json.dumps(d, allow_nan=True).encode()),
)
path_params = st.one_of(
    st.sampled_from(["@key", "@id"]),  # the real key or its id: reaches past the lookup
    st.text(max_size=80),
    st.sampled_from(["../../../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/", "....//....//",
                     "%00", "sn1-%00", "sn1-" + "A" * 5000, "/", "%2F", "..", ".", "~root", "\u202e", "0" * 16]),
)
query_values = st.text(max_size=30) | st.sampled_from(["-1", "0", "1e309", "NaN", "99999999999999999999999",
                                                        "%00", "[]", "{}", "true"])


def routes(server: Running) -> list[tuple[str, str]]:
    out = []
    for route in server.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        template = info.get("formatter") or info.get("path")
        if template and route.method != "HEAD":
            out.append((route.method, template))
    return sorted(set(out))


def fill(template: str, value: str, *, quote: bool, server: Running | None = None, method: str = "GET") -> str:
    if server is not None and value in ("@key", "@id"):
        # Never delete or rotate the key the fuzz authenticates with.
        ours = method != "DELETE" and "rotate-api-key" not in template
        value = (server.key if value == "@key" else key_id(server)) if ours else "sn1-not-our-key"
    encoded = urllib.parse.quote(value, safe="" if quote else "/%.") if value else "x"
    return re.sub(r"\{[^}]+\}", lambda _: encoded, template)


def key_id(server: Running) -> str:
    from shared.store.base import hash_key

    return server.call(server.ctx.store.get_key(hash_key(server.key))).id


def send(server: Running, method: str, path: str, body: bytes | None,
         headers: list[tuple[str, str | bytes]]) -> tuple[int, bytes, http.client.HTTPMessage]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.msg
    finally:
        conn.close()


def auth_headers(server: Running) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {server.key}"), ("admin-key", ADMIN_KEY)]


def check(server: Running, method: str, template: str, status: int, body: bytes, path: str = "") -> None:
    """Never a 500; errors OpenAI-shaped; the admin key never in a body; the API key in an error
    body only where the caller itself put it in the path (a 404 may name what was asked for)."""
    where = f"{method} {path or template} -> {status}: {body[:300]!r}"
    assert status != 500, where
    assert ADMIN_KEY.encode() not in body, f"admin key echoed: {where}"
    if server.key not in path:
        assert server.key.encode() not in body or status < 400, f"api key echoed in an error: {where}"
    if template == "/ready" and status == 503:  # a readiness report, not an error: its reasons (a run past the
        assert json.loads(body)["ready"] is False, where  # metagraph's 180 s limit finds the test's grown stale)
        return
    if status >= 400:
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "code", "param"}, where
        if status >= 500:
            assert template in FANOUT and err["code"] in UPSTREAM_CODES, where


@FUZZ
@given(data=st.data())
def test_hostile_bodies_and_queries_on_every_route(api_server: Running, data: st.DataObject) -> None:
    for method, template in routes(api_server):
        path = fill(template, data.draw(path_params, label="path"), quote=data.draw(st.booleans(), label="quote"),
                    server=api_server, method=method)
        query = data.draw(st.dictionaries(st.sampled_from(["rate_limit", "rate_limit", "k", "name", "task", "model", "scopes",
                                                           "n_miners", "search_query", "limit", "since"]),
                                          query_values, max_size=3), label="query")
        if query:
            path += "?" + urllib.parse.urlencode(query)
        body = data.draw(raw_bodies, label="body") if method in ("POST", "PUT", "PATCH", "DELETE") else None
        ctype = data.draw(st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x",
                                           "application/x-www-form-urlencoded", "", "application/json; charset=latin-1"]))
        headers = auth_headers(api_server) + ([("Content-Type", ctype)] if ctype else [])
        encoding = data.draw(st.sampled_from(["", "", "", "gzip", "deflate", "br", "zstd", "x-unknown"]), label="enc")
        if encoding and body is not None:
            headers.append(("Content-Encoding", encoding))  # the body is not in that encoding: a 400
        status, resp, _ = send(api_server, method, path, body, headers)
        check(api_server, method, template, status, resp, path)
    close_sessions(api_server)


def close_sessions(server: Running) -> None:
    """A fuzzed body can open a sticky session (``POST /v1/sessions`` takes any model name while availability is
    unknown; rare, an empty JSON object with ``?model=...``): the key's next chat naming no model goes to its
    miner for that model, and gets the miner's 404 ``model_not_found`` (the session then closes itself; it was a
    502 for every later chat before), so the first test after the fuzz on the same worker that expects a 200
    (``test_header_injection_...``) would fail once. Closed here, it never reaches them."""
    store = server.ctx.sessions
    if store is None:
        return

    async def close_all() -> None:
        for session in await store.active():
            await store.close(session.id)

    server.call(close_all())


@pytest.mark.parametrize("value", [
    "../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2f", "sn1-..%2f..%2fapi.db",
    "%00", "sn1-" + "A" * 10_000, "%F0%9F%98%80", "%ff%fe",
])
def test_path_traversal_in_key_paths_is_4xx(api_server: Running, value: str) -> None:
    for method, template in routes(api_server):
        if "{" not in template:
            continue
        path = re.sub(r"\{[^}]+\}", value, template)
        status, body, _ = send(api_server, method, path, b"{}" if method != "GET" else None, auth_headers(api_server))
        if method == "OPTIONS" and status == 204:  # a plain OPTIONS is told the methods of the path, and reads nothing
            assert body == b"", (path, body[:200])
            continue
        assert 400 <= status < 500, (method, path, status, body[:200])
        check(api_server, method, template, status, body, path)


def test_traversal_outside_the_routes_is_404(api_server: Running) -> None:
    for path in ("/../../etc/passwd", "/v1/../api_management/api-keys/../../state/api.db", "/%2e%2e/%2e%2e/etc/passwd",
                 "/api_management/api-keys/..%2f..%2f..%2fetc%2fpasswd/usage", "//etc/passwd"):
        status, body, _ = send(api_server, "GET", path, None, auth_headers(api_server))
        assert 400 <= status < 500, (path, status)
        assert b"root:" not in body


def test_a_trailing_slash_404_names_the_path_that_is_served(api_server: Running) -> None:
    """curl users add a slash the router does not serve: the 404 says which path is (never the key in it)."""
    status, body, _ = send(api_server, "GET", "/api_management/api-keys/", None, [("admin-key", ADMIN_KEY)])
    assert status == 404 and "Did you mean /api_management/api-keys?" in json.loads(body)["error"]["message"]
    status, body, _ = send(api_server, "PUT", f"/api_management/modify-api-key/{api_server.key}/", b"{}",
                           [("admin-key", ADMIN_KEY)])
    message = json.loads(body)["error"]["message"]
    assert status == 404 and "Did you mean /api_management/modify-api-key/sn1-" in message
    assert api_server.key not in message
    status, body, _ = send(api_server, "GET", "/v1/nothing/", None, auth_headers(api_server))
    assert status == 404 and "Did you mean" not in json.loads(body)["error"]["message"]


def test_openai_endpoints_not_served_here_are_404_not_405(api_server: Running) -> None:
    """``responses.input_tokens.count`` matched ``/v1/responses/{response_id}``: a 405 "use GET" read as
    if the endpoint existed, and the SDK raised an untyped error instead of NotFoundError."""
    for path in ("/v1/responses/input_tokens", "/v1/responses/compact"):
        status, body, _ = send(api_server, "POST", path, b'{"input": "hi"}', auth_headers(api_server))
        err = json.loads(body)["error"]
        assert status == 404 and f"Invalid URL (POST {path})" in err["message"], (path, status, body)
    status, _, _ = send(api_server, "POST", "/v1/responses/resp_1", b"{}", auth_headers(api_server))
    assert status == 405, "another POST on a stored-response path still names the methods it takes"


def test_duplicate_and_conflicting_auth_headers_are_4xx(api_server: Running) -> None:
    cases = [
        [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {api_server.key}")],
        [("Authorization", f"Bearer {api_server.key}"), ("Authorization", "Bearer wrong")],
        [("api-key", "x"), ("api-key", "y")],
        [("Authorization", "Basic " + "A" * 300)],
        [("Authorization", "Bearer " + "k" * 1000)],
        [("Authorization", "Bearer"), ("x-api-key", "")],
        [("Authorization", "Bearer \xe9\xff".encode("latin-1"))],
    ]
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    for headers in cases:
        status, resp, _ = send(api_server, "POST", "/v1/chat/completions", body,
                               [*headers, ("Content-Type", "application/json")])
        twice = len({name for name, _ in headers}) < len(headers) and len({v for _, v in headers}) > 1
        assert status in ((400,) if twice else (200, 401)), (headers, status, resp[:200])  # twice: duplicate_header
        check(api_server, "POST", "/v1/chat/completions", status, resp)


def test_duplicate_content_length_and_smuggling_attempts_are_rejected(api_server: Running) -> None:
    """Raw sockets: requests no client library would send. The HTTP parser itself answers 400."""
    import socket

    body = b'{"messages":[{"role":"user","content":"hi"}]}'
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_server.key}\r\n"
    attempts = [
        head + f"Content-Length: {len(body)}\r\nContent-Length: 5\r\n\r\n",
        head + f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n",
        head + "Content-Length: -1\r\n\r\n",
        head + "Content-Length: 99999999999999999999999\r\n\r\n",
        head + "X-Injected: a\rb\r\nContent-Length: 0\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Bad\x00Name: 1\r\n\r\n",
        "GET /health\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
    ]
    for raw in attempts:
        with socket.create_connection((api_server.host, api_server.port), timeout=10) as s:
            s.sendall(raw.encode("latin-1") + body)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
        assert 400 <= status < 500 or status == 0, (raw[:80], reply[:200])


CHAT_BODY = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(("encoding", "body", "status", "words"), [
    ("gzip", gzip.compress(CHAT_BODY, mtime=0), 200, ""),
    ("deflate", zlib.compress(CHAT_BODY), 200, ""),
    ("deflate", raw_deflate(CHAT_BODY), 200, ""),  # headerless deflate, as some clients send it
    ("gzip", b"not compressed", 400, "not gzip data"),
    ("deflate", bytes(range(256)) * 400, 400, "not deflate data"),
    ("gzip", gzip.compress(CHAT_BODY, mtime=0)[:-12], 400, "stops short"),
    ("deflate", b"[]", 400, "stops short"),  # a raw deflate start: aiohttp waited forever for its end
    ("gzip", gzip.compress(CHAT_BODY, mtime=0) + b"junk", 400, "bytes after the end"),
    ("gzip", gzip.compress(b" " * (8 << 20), mtime=0), 413, "once decoded"),  # 8 KB that decode to 8 MiB
    ("br", b"xx", 415, "'br' is not supported"),
    ("zstd", b"xx", 415, "'zstd' is not supported"),
])
def test_compressed_bodies_are_decoded_or_refused_in_words(api_server: Running, encoding: str, body: bytes,
                                                           status: int, words: str) -> None:
    """Decoded by us, not aiohttp: a body not in its encoding was a 500 with two tracebacks, a deflate
    body that stopped short hung the request when it came after the headers, and ``br`` was a
    plain-text 400. The body goes out 50 ms after the headers, as a slow client sends it."""
    import socket

    seen = len(api_server.logs)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_server.key}\r\n"
            f"Content-Type: application/json\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection((api_server.host, api_server.port), timeout=10) as s:
        s.sendall(head)
        time.sleep(0.05)
        s.sendall(body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    got = int(reply.split(b" ", 2)[1])
    answer = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert got == status, reply[:300]
    if status == 200:
        assert answer["choices"][0]["message"]["content"]
    else:
        assert words in answer["error"]["message"] and set(answer["error"]) == {"message", "type", "code", "param"}
    assert not [line for line in api_server.logs[seen:] if "Unhandled" in line or "Traceback" in line]


def test_header_injection_through_request_id_is_not_reflected(api_server: Running) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    for rid in ("abc\u2028Set-Cookie: x=1", "é" * 10, "a" * 500, "ok-id"):
        status, _, headers = send(api_server, "POST", "/v1/chat/completions", body,
                                  [*auth_headers(api_server), ("x-request-id", rid.encode("utf-8"))])
        assert status == 200
        assert headers.get("Set-Cookie") is None
        echoed = headers.get("x-request-id", "")
        assert echoed.isascii() and echoed.isprintable() and len(echoed) <= 128
        if rid == "ok-id":
            assert echoed == rid


def test_a_request_id_cannot_forge_fields_of_the_log_line(api_server: Running) -> None:
    """``x-request-id: abc key=... winner=9`` went into the ``key=value`` access log as fields of its own."""
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    seen = len(api_server.logs)
    forged = "abc key=deadbeef00000000 uids=[9] winner=9 status=ok"
    status, _, headers = send(api_server, "POST", "/v1/chat/completions", body,
                              [*auth_headers(api_server), ("x-request-id", forged)])
    assert status == 200 and headers["x-request-id"] != forged and " " not in headers["x-request-id"]
    assert not [line for line in api_server.logs[seen:] if "deadbeef00000000" in line]
    for fine in ("req_01HZX9", "trace-7f3a.span:2", "svc/abc@1+2"):
        _, _, headers = send(api_server, "POST", "/v1/chat/completions", body,
                             [*auth_headers(api_server), ("x-request-id", fine)])
        assert headers["x-request-id"] == fine


def test_an_api_key_sent_as_the_request_id_is_never_logged_or_passed_on(api_server: Running) -> None:
    """A key pasted into ``x-request-id`` (a client's mix-up) went into the access log, every miner's log and
    the echoed header: an id that is a key is replaced by a new one."""
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    seen = len(api_server.logs)
    status, _, headers = send(api_server, "POST", "/v1/chat/completions", body,
                              [*auth_headers(api_server), ("x-request-id", api_server.key)])
    assert status == 200 and headers["x-request-id"] != api_server.key and len(headers["x-request-id"]) == 32
    assert not [line for line in api_server.logs[seen:] if api_server.key in line]


def test_no_secret_in_any_log_line(api_server: Running) -> None:
    """Runs last in this module: a key made through the admin route is used, misused and deleted,
    then everything the servers logged (the fuzz included) is searched for any secret."""
    status, body, _ = send(api_server, "POST", "/api_management/create-api-key?rate_limit=5&name=logcheck", b"",
                           [("admin-key", ADMIN_KEY)])
    assert status == 200, body
    fresh = json.loads(body)["api_key"]
    chat = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    for headers in ([("Authorization", f"Bearer {fresh}")], [("api-key", fresh + "x")], [("x-api-key", fresh[:-1])]):
        send(api_server, "POST", "/v1/chat/completions", chat, [*headers, ("Content-Type", "application/json")])
    send(api_server, "GET", f"/api_management/api-keys/{fresh}/usage", None, [("admin-key", ADMIN_KEY)])
    send(api_server, "DELETE", f"/api_management/delete-api-key/{fresh}", None, [("admin-key", ADMIN_KEY + "x")])
    # Headers padded past the parser's 8190-byte limit: aiohttp quotes the line's first bytes in its refusal.
    for name, value in (("Authorization", f"Bearer {fresh}"), ("admin-key", ADMIN_KEY)):
        status, body, _ = send(api_server, "GET", "/api_management/api-keys", None, [(name, value + "a" * 9000)])
        assert status == 431 and json.loads(body)["error"]["code"] == "request_header_fields_too_large", body[:200]
    send(api_server, "DELETE", f"/api_management/delete-api-key/{fresh}", None, [("admin-key", ADMIN_KEY)])
    secrets = [api_server.key, fresh, ADMIN_KEY, "//Validator"]

    async def flush_access_log() -> None:
        api_server.ctx.request_log.flush()

    asyncio.run_coroutine_threadsafe(flush_access_log(), api_server.loop).result(10)
    assert api_server.logs, "the servers must have logged something"
    assert any(" | chat rid=" in line for line in api_server.logs), "the access log's lines are searched too"
    assert any("status=431" in line and "parser=LineTooLong" in line for line in api_server.logs), \
        "aiohttp's own refusals are logged through loguru (and searched too)"
    for line in api_server.logs:
        for secret in secrets:
            assert secret not in line, f"secret in log line: {line[:300]}"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/conversations",
                                  "/v1/conversations/conv_x/items", "/v1/sessions", "/web_retrieval"])
def test_a_multipart_body_is_a_415_on_every_json_route(api_server: Running, path: str) -> None:
    """A form upload is certainly not the JSON these routes read: a 415, before anything else is done (the
    conversations route, which takes an empty body too, made a conversation of one)."""
    headers = auth_headers(api_server) + [("Content-Type", "multipart/form-data; boundary=x")]
    status, body, _ = send(api_server, "POST", path, b'{"metadata": {"a": "b"}}', headers)
    assert status == 415 and json.loads(body)["error"]["code"] == "unsupported_media_type", (path, status, body)
