"""Media URLs in a caller's messages that the model server must not be sent to fetch.

A chat message may carry an image (``image_url``), and vLLM's and SGLang's servers also take ``video_url`` and
``audio_url`` parts: the model server fetches each URL itself. A caller is anyone with a key on any validator's
API, so a URL on this host or its network (``http://127.0.0.1:8000/...``, ``http://10.0.0.5/...``, the cloud
metadata address ``http://169.254.169.254/...``) or a ``file:`` URL had the miner's own model server fetch
it, from inside the miner's network: a server-side request forgery. Such a request is refused as the model
server would refuse it (``400 model_server_rejected``: the caller's fault, no miner's), before anything is sent.

A host name is resolved here first, and refused when any of its addresses is not a public one. The model
server resolves it again when it fetches (a name that changes its answer in between is not caught here: run
the model server where it reaches no private address, or with its own allow list, e.g. vLLM's
``--allowed-media-domains``, to be sure).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from shared.client_address import ip_of

MEDIA_PARTS = ("image_url", "video_url", "audio_url")  # content parts whose ``{"url": ...}`` a server fetches
FETCHED_SCHEMES = ("http", "https")
RESOLVE_SECONDS = 2.0


def media_urls(body: dict[str, Any]) -> Iterator[str]:
    """Every URL a media part of the body's messages names (``data:`` URLs included: they are checked later)."""
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in MEDIA_PARTS:
                continue
            inner = part.get(part["type"])
            url = inner.get("url") if isinstance(inner, dict) else inner
            if isinstance(url, str):
                yield url


def is_public(address: str) -> bool:
    """Whether ``address`` is a public (global) IP address; an IPv4-mapped IPv6 address as its IPv4 one."""
    ip = ip_of(address)
    return ip is not None and ip.is_global and not ip.is_multicast


async def refused_media_url(body: dict[str, Any]) -> str | None:
    """Why the body's media URLs must not reach the model server (the first refused one), or None."""
    for url in media_urls(body):
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            continue
        if scheme not in FETCHED_SCHEMES:
            return f"a media URL's scheme must be http, https or data, not {scheme[:20]!r}"
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            return "a media URL is not a URL"
        if not host:
            return "a media URL names no host"
        if not await _public_host(host, port or (443 if scheme == "https" else 80)):
            return f"a media URL names a private address ({host[:100]}), which this miner's model server does not fetch"
    return None


async def _public_host(host: str, port: int) -> bool:
    """Whether every address of ``host`` is public; a name that does not resolve here is let through (the model
    server cannot fetch it either, or resolves it elsewhere: see the module's note)."""
    try:
        return is_public(str(ipaddress.ip_address(host)))
    except ValueError:
        pass
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                       RESOLVE_SECONDS)
    except (OSError, TimeoutError, UnicodeError):
        return True
    return all(is_public(str(info[4][0])) for info in infos)
