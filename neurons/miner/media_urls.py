"""Media URLs in a caller's messages: fetched by the miner itself, never by its model server.

A chat message may carry an image (``image_url``), and vLLM's and SGLang's servers also take ``video_url`` and
``audio_url`` parts: a model server fetches each URL itself, from inside the miner's network. A caller is anyone
with a key on any validator's API, so a URL on this host or its network (``http://127.0.0.1:8000/...``,
``http://10.0.0.5/...``, the cloud metadata address ``http://169.254.169.254/...``) or a ``file:`` URL had the
miner's own model server fetch it: a server-side request forgery.

Checking the URL's address first and then handing the URL on was not enough: the model server resolved the name
again (a name that answers a public address to the check and ``127.0.0.1`` to the fetch, DNS rebinding), and
followed redirects (a public server's ``302`` to the metadata address). So the miner fetches each media URL
itself, through a resolver that refuses a private answer at the moment of connecting (``PublicResolver``: the
address checked is the address connected to), each redirect checked the same way, and hands the model server the
bytes as a ``data:`` URL. A URL refused, or that cannot be fetched, is the caller's ``400 model_server_rejected``
(no miner's fault), and the model server is never asked.

The fetched bytes are held until the model server's answer ends, as base64 (a third larger) in the JSON body sent,
its one copy (``encoded``: the body with the ``data:`` URLs, held beside it, doubled them): each request's own cap
bounded nothing across requests, and 64 requests with 20 MiB of pictures each held gigabytes. A fetcher given
``in_flight`` (the miner's ``MEDIA_BYTES_IN_FLIGHT``) counts every byte as it is read against one budget for all
requests and gives a request's back when its upstream call ends, however it ends; a byte past the budget ends that
request's fetch at once (``MediaBusy``: the miner's ``503 server_busy``). It does not wait for room: room comes back
only as model servers answer (seconds), a request holding half its pictures while waiting would hold them from the
others, and the API races each request to several miners, so another miner's answer is what the caller gets.

The validator fetches an organic request's media with this same fetcher before its reference model re-answers the
request (``neurons.validator.reference``), within its own ``MEDIA_BYTES_IN_FLIGHT``: there a full budget leaves the
job unscored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from shared.byte_budget import ByteBudget
from shared.jsonutil import dumpb
from shared.public_address import is_public

MEDIA_PARTS = ("image_url", "video_url", "audio_url")  # a part's keys whose URL (``{"url": ...}``) a server fetches
FETCHED_SCHEMES = ("http", "https")
# What the miner fetches for one request: its media together (OpenAI takes images up to 20 MB), within this many
# seconds (and the caller's deadline), following at most this many redirects.
MAX_MEDIA_BYTES = 20 << 20
FETCH_SECONDS = 15.0
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*$")  # a Content-Type's type/subtype
UNKNOWN_TYPE = "application/octet-stream"

AddressPolicy = Callable[[str], bool]  # whether the miner may connect to an IP address


class MediaRefused(Exception):
    """A caller's media URL the miner does not fetch, or could not: the caller's 400 (its message says why)."""


class MediaBusy(Exception):
    """The media of requests in flight fill the fetcher's budget (``in_flight``): this one's are not fetched."""


class Holding:
    """The bytes of the budget one request's media hold (none without a budget), given back all at once."""

    def __init__(self, budget: ByteBudget | None, owner: str = "miner") -> None:
        self._budget = budget
        self._owner = owner  # who holds the budget, for the refusal's message
        self.size = 0

    def take(self, size: int) -> None:
        """Count ``size`` more bytes; MediaBusy when the budget has no room for them (nothing taken)."""
        if self._budget is not None and not self._budget.try_take(size):
            raise MediaBusy(f"callers' media fill this {self._owner}'s budget ({self._budget.capacity} bytes held at "
                            "once); retry shortly")
        self.size += size

    def release(self) -> None:
        if self._budget is not None and self.size:
            self._budget.give(self.size)
        self.size = 0


class Made(contextlib.AbstractAsyncContextManager):
    """A block that holds nothing, around ``value`` made already (``MediaFetcher.encoded`` of a body with no media
    URL to fetch)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    async def __aenter__(self) -> Any:
        return self.value

    async def __aexit__(self, *_exc: object) -> None:
        return None


class PrivateAddress(OSError):
    """A host name resolved to an address the miner does not connect to (``PublicResolver``)."""


def _media_parts(body: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """Each media URL of the body's messages: a part and its media key (``MEDIA_PARTS``) carrying a URL string,
    whatever the part's ``type`` says. vLLM fetches a part's ``image_url``, ``video_url`` or ``audio_url`` when
    the part has no ``type`` (its shorthand), or has a ``uuid`` whatever its type (``{"type": "text", "uuid": ...,
    "image_url": ...}``), and an ``input_image``'s ``image_url`` string: read by ``type`` alone, such a part went
    to the model server with its URL, which fetched it."""
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            for key in MEDIA_PARTS:
                if isinstance(_part_url(part, key), str):
                    yield part, key


def _fetched_parts(body: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The media parts of ``body`` whose URL is fetched here: all but ``data:`` ones."""
    return [(p, key) for p, key in _media_parts(body) if scheme_of(_part_url(p, key)) != "data"]


def _part_url(part: dict[str, Any], key: str) -> Any:
    """The URL under ``key`` in ``part``: ``{"url": ...}`` or the string itself (vLLM's shorthand)."""
    inner = part.get(key)
    return inner.get("url") if isinstance(inner, dict) else inner


def scheme_of(url: str) -> str:
    return url.split(":", 1)[0].lower() if ":" in url else ""


def refused_url(url: str, allowed: AddressPolicy = is_public) -> str | None:
    """Why the miner does not fetch ``url`` as it is written (its scheme, no host, an IP address not
    ``allowed``), or None. A host name is checked when it is resolved, at connection time (``PublicResolver``)."""
    scheme = scheme_of(url)
    if scheme not in FETCHED_SCHEMES:
        return f"a media URL's scheme must be http, https or data, not {scheme[:20]!r}"
    try:  # read as the HTTP client reads it: ``127。0。0。1`` was a name to ``urlsplit``, an IP address to yarl (IDNA)
        host = URL(url).raw_host
    except (ValueError, TypeError):
        return "a media URL is not a URL"
    if not host:
        return "a media URL names no host"
    try:
        literal = str(ipaddress.ip_address(host))
    except ValueError:
        return None
    return None if allowed(literal) else private(host)


def private(host: str) -> str:
    return f"a media URL names a private address ({host[:100]}), which is never fetched"


class PublicResolver(AbstractResolver):
    """Resolves with ``inner`` and refuses (``PrivateAddress``) an answer with any address not ``allowed``: the
    addresses checked are the ones the connection is then made to, so a name that answers differently each
    time (DNS rebinding) cannot slip a private address past the check. An IP address in a URL is never
    resolved (aiohttp connects to it as it is): ``refused_url`` checks it."""

    def __init__(self, inner: AbstractResolver, allowed: AddressPolicy = is_public) -> None:
        self._inner = inner
        self._allowed = allowed

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not results or not all(self._allowed(r["host"]) for r in results):
            raise PrivateAddress(private(host))
        return results

    async def close(self) -> None:
        await self._inner.close()


def any_address(address: str) -> bool:
    """Every address: ``PRIVATE_MEDIA_URLS``, for a network whose callers are all the operator's own."""
    return True


def fetcher_for(settings: Any, owner: str = "miner") -> MediaFetcher:
    """The fetcher a miner's openai backend or a validator's reference model uses, from its settings: within
    ``MEDIA_BYTES_IN_FLIGHT``, public addresses only unless ``PRIVATE_MEDIA_URLS``."""
    return MediaFetcher(in_flight=settings.media_bytes_in_flight, owner=owner,
                        allowed=any_address if settings.private_media_urls else is_public)


class MediaFetcher:
    """Fetches a request's media URLs and puts their bytes in its place as ``data:`` URLs (``inline``).

    ``resolver`` and ``allowed``: how names are resolved and which addresses may be connected to (the system's
    resolver and public addresses only; tests give their own). ``in_flight``: the bytes all requests' media may
    hold at once (``budget``; 0: no bound), which caps one request's too. ``owner``: whose budget it is (the miner's,
    the validator's reference model's), as a full budget's refusal names it."""

    def __init__(self, *, resolver: AbstractResolver | None = None, allowed: AddressPolicy = is_public,
                 max_bytes: int = MAX_MEDIA_BYTES, seconds: float = FETCH_SECONDS, in_flight: int = 0,
                 owner: str = "miner") -> None:
        self._owner = owner
        self._resolver = resolver
        self._allowed = allowed
        self._max_bytes = min(max_bytes, in_flight) if in_flight else max_bytes  # more would never fit: a 400
        self.budget = ByteBudget(in_flight) if in_flight else None
        self._seconds = seconds
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open its connection pool (once: it is opened at its first use otherwise)."""
        if self._session is not None:
            return
        resolver = PublicResolver(self._resolver or ThreadedResolver(), self._allowed)
        # no proxy from the environment (trust_env is off): the address checked must be the one connected to
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver, limit=64),
                                              cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def inline(self, body: dict[str, Any], *, deadline: float | None = None) -> dict[str, Any]:
        """``body`` with its media inlined (``encoded``'s rules), their bytes given back to the budget at once (a
        caller with no upstream call to wait for)."""
        async with self._holding(body, None, deadline, lambda inlined: inlined) as out:
            return out

    def encoded(self, body: dict[str, Any], build: Callable[[dict[str, Any]], dict[str, Any]], *,
                deadline: float | None = None) -> contextlib.AbstractAsyncContextManager[bytes]:
        """The JSON of ``build(b)`` (the body sent upstream), ``b`` being ``body`` with each media URL (but ``data:``
        ones) replaced by the fetched bytes as a ``data:`` URL, fetched within ``deadline`` (loop time) at most;
        ``body`` itself is left as it was. The JSON is the one copy of the media held until the block ends (the
        body with the ``data:`` URLs held beside it took as much again), and their bytes count against ``budget``
        until then, however it ends. MediaRefused: a URL refused or not fetched (a private address, a scheme not
        http or https, an error status, more than ``max_bytes``); MediaBusy: the budget is full. A body with no
        media URL to fetch, nearly every one, holds nothing: its JSON is made at once, in a block that costs a
        request no generator."""
        parts = _fetched_parts(body)
        if not parts:
            return Made(dumpb(build(body)))
        return self._holding(body, parts, deadline, lambda inlined: dumpb(build(inlined)))

    @contextlib.asynccontextmanager
    async def _holding(self, body: dict[str, Any], parts: list[tuple[dict[str, Any], str]] | None,
                       deadline: float | None, make: Callable[[dict[str, Any]], Any]) -> AsyncIterator[Any]:
        """``make`` of the body with its media inlined (``parts``: its media parts to fetch, ``_fetched_parts``,
        when known), their bytes held in the budget until the block ends. No name here keeps the inlined body:
        once ``make`` returns, only what it made holds the media."""
        parts = _fetched_parts(body) if parts is None else parts
        if not parts:
            yield make(body)
            return
        await self.start()
        held = Holding(self.budget, self._owner)
        try:
            yield make(await self._fetch_all(body, parts, deadline, held))
        finally:
            held.release()

    async def _fetch_all(self, body: dict[str, Any], parts: list[tuple[dict[str, Any], str]], deadline: float | None,
                         held: Holding) -> dict[str, Any]:
        fetched: dict[tuple[int, str], str] = {}
        seconds = self._seconds
        if deadline is not None:
            seconds = min(seconds, deadline - asyncio.get_running_loop().time())
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                for part, key in parts:
                    fetched[(id(part), key)] = await self._fetch(_part_url(part, key), held)
        except TimeoutError:
            raise MediaRefused(f"a media URL was not fetched within {seconds:.1f}s") from None
        return _with_urls(body, fetched)

    async def _fetch(self, url: str, held: Holding) -> str:
        """One URL's bytes as a ``data:`` URL, counted in ``held`` (the request's, at most ``max_bytes``); each
        redirect checked as the URL was (at most ``MAX_REDIRECTS``)."""
        assert self._session is not None  # ``_holding`` started it
        for _ in range(MAX_REDIRECTS + 1):
            if (why := refused_url(url, self._allowed)) is not None:
                raise MediaRefused(why)
            try:
                async with self._session.get(url, allow_redirects=False) as r:
                    if r.status in REDIRECTS and "Location" in r.headers:
                        url = urljoin(url, r.headers["Location"])
                        continue
                    if r.status != 200:
                        raise MediaRefused(f"a media URL answered HTTP {r.status}")
                    kind = r.content_type.lower() if MEDIA_TYPE.match(r.content_type.lower()) else UNKNOWN_TYPE
                    return data_url(kind, await self._read(r, held))
            except aiohttp.ClientConnectorError as e:
                if isinstance(e.os_error, PrivateAddress):
                    raise MediaRefused(str(e.os_error)) from None
                raise MediaRefused(f"a media URL could not be fetched: {type(e).__name__}") from None
            except aiohttp.ClientError as e:
                raise MediaRefused(f"a media URL could not be fetched: {type(e).__name__}") from None
        raise MediaRefused(f"a media URL redirected more than {MAX_REDIRECTS} times")

    async def _read(self, response: aiohttp.ClientResponse, held: Holding) -> bytearray:
        """The whole body, each piece counted in ``held`` as it arrives (a server may declare no length, or a false
        one); MediaRefused once the request's media pass ``max_bytes``. ``read(n)`` returns what has arrived, not
        ``n`` bytes: the body is read to its end."""
        raw = bytearray()
        async for piece in response.content.iter_any():
            if held.size + len(piece) > self._max_bytes:
                raise MediaRefused(f"the request's media are larger than {self._max_bytes} bytes")
            held.take(len(piece))
            raw += piece
        return raw


def data_url(kind: str, raw: bytearray) -> str:
    """``raw`` as a ``data:`` URL of type ``kind``, with at most two copies alive at once: the fetched bytes are let
    go once encoded (a copy of them, the base64, the text and the URL were all alive at once: six times a picture's
    size, for a moment)."""
    encoded = base64.b64encode(raw)
    raw.clear()
    joined = f"data:{kind};base64,".encode("ascii") + encoded
    del encoded
    return joined.decode("ascii")


def _with_urls(body: dict[str, Any], fetched: dict[tuple[int, str], str]) -> dict[str, Any]:
    """A copy of ``body`` whose media parts (by ``id`` and media key) carry the ``fetched`` URLs (their other
    fields kept)."""
    def part_of(part: Any) -> Any:
        if not isinstance(part, dict):
            return part
        out = part
        for key in MEDIA_PARTS:
            url = fetched.get((id(part), key))
            if url is not None:
                inner = part[key]
                out = {**out, key: {**inner, "url": url} if isinstance(inner, dict) else url}
        return out

    messages = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            message = {**message, "content": [part_of(p) for p in content]}
        messages.append(message)
    return {**body, "messages": messages}
