"""A miner in front of a model server fetches a caller's media URLs itself, and never a private address.

vLLM's and SGLang's servers fetch an ``image_url`` (``video_url``, ``audio_url``) part's URL themselves, from
inside the miner's network. A caller (anyone with a key on any validator's API) naming ``http://127.0.0.1:...``,
a ``10.x`` address, the cloud metadata address or a ``file:`` URL had the miner's model server fetch it: a
server-side request forgery. Checking the address and handing the URL on was not enough: the model server
resolved the name again (DNS rebinding: public to the check, private to the fetch) and followed redirects. The
miner now fetches the URL itself, through a resolver that refuses a private answer when it connects, each
redirect checked the same way, and the model server gets the bytes as a ``data:`` URL; a URL refused is the
caller's ``400`` (no miner is marked down for it) and the model server is never asked.

The media servers here are on 127.0.0.1 (no test sends anything off the machine): the tests' fetcher takes
127.0.0.1 as the one "public" address and every other as private, and resolves names with the tests' own
resolver (the edge of the machine: DNS).
"""

from __future__ import annotations

import base64
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from neurons.miner.media_urls import MediaFetcher, MediaRefused, is_public
from tests.helpers import serve_app
from tests.integration.test_miner_openai_backend import post_chat, stack

PNG = "data:image/png;base64,iVBORw0KGgo="
IMAGE = b"\x89PNG\r\n\x1a\n-the-picture-"
SECRET = b"metadata-credentials"


def with_image(url: str, part: str = "image_url") -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                      {"type": part, part: {"url": url}}]}], "seed": 3}


def sent_urls(received: list) -> list[str]:
    """The media URLs of every request the model server received."""
    return [part[part["type"]]["url"] for body in received for m in body["messages"]
            if isinstance(m.get("content"), list) for part in m["content"] if part.get("type") != "text"]


class ScriptedDNS(AbstractResolver):
    """Answers each name from a script, in turn (the last answer repeats): ``{"media.test": ["127.0.0.1",
    "127.0.0.2"]}`` answers 127.0.0.1 first, then 127.0.0.2, as a rebinding attacker's DNS server does."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = {name: list(answers) for name, answers in script.items()}
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        answers = self.script.get(host)
        if not answers:
            raise OSError(f"{host} does not resolve")
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        return [ResolveResult(hostname=host, host=address, port=port, family=socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


def loopback_only(address: str) -> bool:
    return address == "127.0.0.1"


async def large_picture(request: web.Request) -> web.StreamResponse:
    """1 MiB, written in 64 KiB pieces, its length not declared (chunked)."""
    response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    await response.prepare(request)
    for i in range(16):
        await response.write(bytes([i]) * (64 << 10))
    await response.write_eof()
    return response


@contextlib.asynccontextmanager
async def media_servers(hits: list[str]) -> AsyncIterator[tuple[int, int]]:
    """A media server on 127.0.0.1 (its picture, and redirects) and a "private" one on 127.0.0.2 (the secret):
    their ports. ``hits`` collects every path asked of either."""
    async def picture(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=IMAGE, content_type="image/png")

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound(request.query["to"])

    async def secret(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=SECRET, content_type="image/png")

    public, inner = web.Application(), web.Application()
    async def large(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        return await large_picture(request)

    public.router.add_get("/cat.png", picture)
    public.router.add_get("/large.jpg", large)
    public.router.add_get("/go", redirect)
    inner.router.add_get("/secret", secret)
    async with serve_app(public) as a, serve_app(inner, host="127.0.0.2") as b:
        yield int(a.rsplit(":", 1)[1]), int(b.rsplit(":", 1)[1])


async def test_private_and_file_media_urls_never_reach_the_model_server(tmp_path: Path) -> None:
    received: list = []
    async with stack(tmp_path, received) as (api, key), aiohttp.ClientSession() as s:
        host, port = api.removeprefix("http://").split(":")
        for url, part in ((f"http://127.0.0.1:{port}/v1/models", "image_url"),
                          ("http://localhost/secret.png", "image_url"),
                          ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "image_url"),
                          ("http://10.0.0.5:8000/internal.png", "image_url"),
                          ("http://[::1]:8000/a.png", "image_url"),
                          ("http://[::ffff:192.168.1.1]/a.png", "image_url"),
                          ("file:///etc/passwd", "image_url"),
                          ("http://100.64.0.1/cgnat.png", "image_url")):
            for stream in (False, True):
                status, answer = await post_chat(s, api, key, with_image(url, part) | {"stream": stream})
                assert status == 400, (url, stream, answer)
                assert "private address" in answer["error"]["message"] or "scheme" in answer["error"]["message"]
        assert received == [], "the model server was asked to fetch a private URL"
        status, answer = await post_chat(s, api, key, with_image(PNG))  # data: goes on as it came
        assert status == 200, answer
        assert sent_urls(received) == [PNG]


async def test_the_model_server_gets_the_fetched_bytes_never_the_url(tmp_path: Path) -> None:
    """A public media URL reaches the model server as the bytes the miner fetched (a ``data:`` URL of their type):
    the model server fetches nothing, so it cannot be sent anywhere a check did not see."""
    received: list = []
    hits: list[str] = []
    dns = ScriptedDNS({"media.test": ["127.0.0.1"]})
    async with media_servers(hits) as (port, _), \
            stack(tmp_path, received, media=MediaFetcher(resolver=dns, allowed=loopback_only)) as (api, key), \
            aiohttp.ClientSession() as s:
        for stream in (False, True):
            body = with_image(f"http://media.test:{port}/cat.png") | {"stream": stream}
            async with s.post(api + "/v1/chat/completions", json=body, headers={"api-key": key}) as r:
                assert r.status == 200, await r.text()
                assert b"[DONE]" in await r.read() if stream else (await r.json())["choices"]
    assert hits == ["/cat.png", "/cat.png"]
    assert sent_urls(received) == ["data:image/png;base64," + base64.b64encode(IMAGE).decode()] * 2


async def test_a_request_sent_again_without_a_refused_field_keeps_its_fetched_media(tmp_path: Path) -> None:
    """The miner holds a request's media in the JSON it sent alone; a model server that refuses a field (Mistral's
    ``seed``) is sent that JSON again without it, the picture in it, and the picture is fetched once."""
    received: list = []
    hits: list[str] = []
    dns = ScriptedDNS({"media.test": ["127.0.0.1"]})
    async with media_servers(hits) as (port, _), \
            stack(tmp_path, received, media=MediaFetcher(resolver=dns, allowed=loopback_only),
                  quirks=frozenset({"mistral-422"})) as (api, key), aiohttp.ClientSession() as s:
        status, answer = await post_chat(s, api, key, with_image(f"http://media.test:{port}/cat.png"))
        assert status == 200, answer
    assert hits == ["/cat.png"]
    assert ["seed" in body for body in received] == [True, False]
    assert sent_urls(received) == ["data:image/png;base64," + base64.b64encode(IMAGE).decode()] * 2


async def test_a_name_that_turns_private_after_the_check_is_not_fetched(tmp_path: Path) -> None:
    """DNS rebinding: a name that answers a public address, then a private one. The address refused is the one
    the connection would be made to: the second request is the caller's 400, and the secret is never read."""
    received: list = []
    hits: list[str] = []
    async with media_servers(hits) as (port, inner_port):
        dns = ScriptedDNS({"rebind.test": ["127.0.0.1", "127.0.0.2"]})
        async with stack(tmp_path, received, media=MediaFetcher(resolver=dns, allowed=loopback_only)) as (api, key), \
                aiohttp.ClientSession() as s:
            status, answer = await post_chat(s, api, key, with_image(f"http://rebind.test:{port}/cat.png"))
            assert status == 200, answer
            # the same name, now answering 127.0.0.2, where the "private" server listens on inner_port
            status, answer = await post_chat(s, api, key, with_image(f"http://rebind.test:{inner_port}/secret"))
            assert status == 400, answer
            assert "private address (rebind.test)" in answer["error"]["message"]
    assert hits == ["/cat.png"] and dns.asked == ["rebind.test", "rebind.test"]
    assert all(url.startswith("data:image/png;base64,") for url in sent_urls(received)) and len(received) == 1


async def test_a_redirect_to_a_private_address_is_not_followed(tmp_path: Path) -> None:
    """A public media server's redirect is checked as the URL was: to a private IP address or to a name that
    resolves to one, it is the caller's 400 and nothing is fetched from there; to a public one, it is followed."""
    received: list = []
    hits: list[str] = []
    async with media_servers(hits) as (port, inner_port):
        dns = ScriptedDNS({"media.test": ["127.0.0.1"], "inner.test": ["127.0.0.2"]})
        async with stack(tmp_path, received, media=MediaFetcher(resolver=dns, allowed=loopback_only)) as (api, key), \
                aiohttp.ClientSession() as s:
            for target in (f"http://127.0.0.2:{inner_port}/secret", f"http://inner.test:{inner_port}/secret"):
                for stream in (False, True):
                    url = f"http://media.test:{port}/go?to={target}"
                    status, answer = await post_chat(s, api, key, with_image(url) | {"stream": stream})
                    assert status == 400, (target, answer)
                    assert "private address" in answer["error"]["message"], answer
            status, answer = await post_chat(s, api, key, with_image(
                f"http://media.test:{port}/go?to=http://media.test:{port}/cat.png"))
            assert status == 200, answer
    assert "/secret" not in hits
    assert sent_urls(received) == ["data:image/png;base64," + base64.b64encode(IMAGE).decode()]


async def test_a_large_picture_is_fetched_whole_and_a_request_past_the_limit_is_refused() -> None:
    """A picture that arrives in many reads is sent whole (one read returned what had arrived so far); the
    request's media together past the fetcher's limit are the caller's refusal, read no further."""
    hits: list[str] = []
    dns = ScriptedDNS({"media.test": ["127.0.0.1"]})
    async with media_servers(hits) as (port, _):
        whole = MediaFetcher(resolver=dns, allowed=loopback_only)
        small = MediaFetcher(resolver=dns, allowed=loopback_only, max_bytes=(1 << 20) + 100)
        try:
            body = with_image(f"http://media.test:{port}/large.jpg")
            out = await whole.inline(body)
            assert body == with_image(f"http://media.test:{port}/large.jpg"), "the caller's body is left as it was"
            url = sent_urls([out])[0]
            assert url.startswith("data:image/jpeg;base64,")
            assert base64.b64decode(url.split(",", 1)[1]) == b"".join(bytes([i]) * (64 << 10) for i in range(16))
            assert await small.inline(body)
            body["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": f"http://media.test:"
                                                                                        f"{port}/large.jpg"}})
            with pytest.raises(MediaRefused, match="larger than 1048676 bytes"):
                await small.inline(body)
        finally:
            await whole.close()
            await small.close()


# IPv6 addresses that carry an IPv4 address inside them, and reach it: NAT64 (64:ff9b::/96, AWS's and every
# DNS64 network's prefix: a NAT gateway forwards to the IPv4 address, a VPC's 10.x ones too), 6to4 (2002::/16),
# IPv4-compatible (::a.b.c.d) and IPv4-translated (::ffff:0:a.b.c.d) addresses. Python counts them all "global".
# And IPv6 ranges not globally reachable that Python 3.11 counts global: the local-use NAT64 prefix (RFC 8215: a
# site's own translator), deprecated site-local addresses.
EMBEDDED_PRIVATE = ("64:ff9b::a00:5", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::127.0.0.1", "::ffff:0:a00:5",
                    "64:ff9b:1::a00:5", "fec0::1")


async def test_an_ipv6_address_that_carries_a_private_ipv4_one_is_refused(tmp_path: Path) -> None:
    """Written in the URL or answered by a name's DNS, an IPv6 address whose IPv4 part is private is the caller's
    400 "private address", the same as the IPv4 address itself; one whose IPv4 part is public is let through to
    the connection (a NAT64 network reaches the public IPv4 internet that way)."""
    received: list = []
    async with stack(tmp_path, received) as (api, key), aiohttp.ClientSession() as s:
        for address in EMBEDDED_PRIVATE:
            status, answer = await post_chat(s, api, key, with_image(f"http://[{address}]:8000/a.png"))
            assert status == 400, (address, answer)
            assert "private address" in answer["error"]["message"], (address, answer)
    assert received == [], "the model server was asked about a private URL"
    dns = ScriptedDNS({f"n{i}.test": [address] for i, address in enumerate(EMBEDDED_PRIVATE)})
    fetcher = MediaFetcher(resolver=dns, seconds=5)
    try:
        for i in range(len(EMBEDDED_PRIVATE)):
            with pytest.raises(MediaRefused, match=rf"private address \(n{i}\.test\)"):
                await fetcher.inline(with_image(f"http://n{i}.test/a.png"))
    finally:
        await fetcher.close()
    assert is_public("64:ff9b::808:808") and is_public("2002:808:808::1"), "a public IPv4 inside stays public"


async def test_an_ip_address_in_unicode_digits_or_dots_is_checked_as_the_address_connected_to(tmp_path: Path) -> None:
    """``http://127。0。0。2/`` (ideographic full stops) or fullwidth digits: the URL parser the check used saw a host
    name (checked when resolved), while the HTTP client normalises it (IDNA) to the IP address ``127.0.0.2`` and
    connects to it without resolving anything: the check never ran and the "private" server's secret was fetched.
    The host checked is now the client's own reading of the URL: the caller's 400, nothing fetched."""
    received: list = []
    hits: list[str] = []
    async with media_servers(hits) as (port, inner_port):
        dns = ScriptedDNS({"media.test": ["127.0.0.1"]})
        async with stack(tmp_path, received, media=MediaFetcher(resolver=dns, allowed=loopback_only)) as (api, key), \
                aiohttp.ClientSession() as s:
            for host in ("127\u30020\u30020\u30022", "\uff11\uff12\uff17.\uff10.\uff10.\uff12", "127\uff0e0\uff0e0\uff0e2"):
                for stream in (False, True):
                    url = f"http://{host}:{inner_port}/secret"
                    status, answer = await post_chat(s, api, key, with_image(url) | {"stream": stream})
                    assert status == 400, (host, answer)
                    assert "private address" in answer["error"]["message"], answer
            status, answer = await post_chat(s, api, key, with_image(f"http://127\u30020\u30020\u30021:{port}/cat.png"))
            assert status == 200, answer  # the allowed address, written so, is fetched as it was
    assert "/secret" not in hits, "the private server was asked"
    assert sent_urls(received) == ["data:image/png;base64," + base64.b64encode(IMAGE).decode()]


# Parts a model server fetches though their ``type`` names no media (vLLM's ``chat_utils``): no ``type`` at all (its
# shorthand), a ``uuid`` beside any type (it then reads the part's media keys, whatever the type), an ``input_image``
# (its ``image_url`` is the URL itself). Each passed the API's checks (a part's type defaults to text, extra keys
# pass on) or comes from another validator's API; the miner read parts by type, and handed their URLs on.
def media_without_their_type(url: str) -> dict[str, dict]:
    return {"no type": {"text": "look", "image_url": {"url": url}},
            "no type, video": {"text": "look", "video_url": {"url": url}},
            "a text part with a uuid": {"type": "text", "text": "look", "uuid": "u1", "image_url": {"url": url}},
            "a text part with a uuid, audio as a string": {"type": "text", "text": "look", "uuid": "u1",
                                                             "audio_url": url}}


async def test_a_media_url_in_a_part_whose_type_names_no_media_never_reaches_the_model_server(
        tmp_path: Path) -> None:
    received: list = []
    async with stack(tmp_path, received) as (api, key), aiohttp.ClientSession() as s:
        port = api.rsplit(":", 1)[1]
        for name, part in media_without_their_type(f"http://127.0.0.1:{port}/v1/models").items():
            body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]}
            status, answer = await post_chat(s, api, key, body)
            assert status == 400, (name, answer)
            assert "private address" in answer["error"]["message"], (name, answer)
    assert received == [], "the model server was handed a private URL to fetch"


async def test_every_media_key_of_a_part_is_fetched_and_handed_on_as_bytes() -> None:
    """Whatever a part's type: its media keys carry the fetched bytes (``input_image`` too, which the API does not
    take but another validator's API may send), and the model server is handed no URL to fetch."""
    hits: list[str] = []
    fetched = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
    async with media_servers(hits) as (port, _):
        fetcher = MediaFetcher(resolver=ScriptedDNS({"media.test": ["127.0.0.1"]}), allowed=loopback_only)
        try:
            url = f"http://media.test:{port}/cat.png"
            parts = [*media_without_their_type(url).values(), {"type": "input_image", "image_url": url}]
            body = await fetcher.inline({"messages": [{"role": "user", "content": parts}]})
        finally:
            await fetcher.close()
    out = body["messages"][0]["content"]
    assert [p.get("image_url") or p.get("video_url") or p.get("audio_url") for p in out] == [
        {"url": fetched}, {"url": fetched}, {"url": fetched}, fetched, fetched]
    assert [p.get("uuid") for p in out] == [None, None, "u1", "u1", None]  # the other fields kept
    assert hits == ["/cat.png"] * 5


async def test_private_media_urls_are_fetched_only_when_the_operator_says_so() -> None:
    """A miner (a validator) built from its settings refuses a media URL on 127.0.0.1; ``PRIVATE_MEDIA_URLS=true``
    (a local network, whose callers are all its operator's) fetches it."""
    from neurons.miner.media_urls import fetcher_for
    from shared.settings import MinerSettings, ValidatorSettings

    hits: list[str] = []
    async with media_servers(hits) as (port, _):
        body = with_image(f"http://127.0.0.1:{port}/cat.png")
        for settings, owner in ((MinerSettings(_env_file=None), "miner"),
                                (ValidatorSettings(_env_file=None), "validator")):
            fetcher = fetcher_for(settings, owner)
            try:
                with pytest.raises(MediaRefused, match="private address"):
                    await fetcher.inline(body)
            finally:
                await fetcher.close()
            fetcher = fetcher_for(settings.model_copy(update={"private_media_urls": True}), owner)
            try:
                assert sent_urls([await fetcher.inline(body)]) == [
                    "data:image/png;base64," + base64.b64encode(IMAGE).decode()]
            finally:
                await fetcher.close()
    assert hits == ["/cat.png", "/cat.png"]
