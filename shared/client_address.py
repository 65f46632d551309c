"""Which address a request came from, behind a reverse proxy too.

The API throttles wrong API keys and locks out failed admin logins per client
address. Behind nginx or a load balancer every request arrives from the proxy,
so without this one caller's bad guesses would lock the admin (and throttle
everyone's key mistakes) for every address at once. ``TRUSTED_PROXIES`` names
the proxies whose ``X-Forwarded-For`` is believed; no one else's is, or a
client could pick its own address and guess without limit.

Computed only where an address is needed (a failed key or admin check), not per
request: aiohttp-remotes does the same as a middleware, but clones every request
on the hot path to do it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web
from loguru import logger

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
TRUSTED_PROXIES = web.AppKey("sn1_trusted_proxies", tuple)  # tuple[Network, ...]
PEERS_TOLD = web.AppKey("sn1_unbelieved_peers_told", set)  # throttle keys of peers warned of (``tell_unbelieved``)
MAX_PEERS_TOLD = 8  # a client can send the header from many addresses: the warnings stay a few lines
ADMIN_FAILURES_PER_MINUTE = 10  # failed admin logins one client address may make a minute (api.auth's lockout)


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.0/8", "127.0.0.1"]`` -> networks; ValueError names an entry that is neither."""
    out = []
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network (10.0.0.5, 10.0.0.0/8, ::1)") from None
        address = entry.strip().split("/")[0]
        if network.network_address != ipaddress.ip_address(address):
            # 10.0.0.1/8 was taken as 10.0.0.0/8 without a word: every address of the /8 could then name the
            # client in X-Forwarded-For, where one proxy was meant (or the whole network was, and says so)
            raise ValueError(f"{entry!r} has host bits set: write the network ({network}) or the proxy's own "
                             f"address ({address})")
        out.append(network)
    return tuple(out)


def ip_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``address`` names (without an IPv6 ``%zone``), an IPv4-mapped IPv6 one (``::ffff:10.0.0.1``
    from a dual-stack socket) as its IPv4 address; None when it names none."""
    try:
        ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    """Whether ``address`` is one of ``proxies`` (an IPv4-mapped IPv6 address as its IPv4 one)."""
    ip = ip_of(address) if proxies else None
    return ip is not None and any(ip in network for network in proxies)


def address_key(address: str | None) -> str | None:
    """The bucket an address is counted in (connection caps, key and admin guessing): the IPv4 address, an IPv6
    address's /64 (``::ffff:`` mapped addresses as IPv4); ``None`` when it is no IP (a Unix socket). One host
    owns a whole /64: counted per address, it had 2**64 fresh budgets to guess keys from."""
    ip = ip_of(address) if address else None
    if ip is None:
        return None
    return str(ipaddress.IPv6Network((ip, 64), strict=False)) if ip.version == 6 else str(ip)


def forwarded_client(peer: str | None, forwarded_for: Iterable[str], proxies: tuple[Network, ...]) -> str:
    """The client address: the peer, unless it is a trusted proxy; then the nearest address in
    ``X-Forwarded-For`` (read right to left, as each proxy appends) that is not a trusted proxy.

    A client may write anything into the header's left part, so only entries added by trusted
    proxies are skipped: the first one that is not was written by the last trusted proxy, which
    saw it as its peer.
    """
    if peer is None or not proxies or not is_trusted(peer, proxies):
        return peer or "unknown"
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, proxies):
            return hop[:64]  # a header value, not an address we checked: bounded before it names a bucket
    return hops[0][:64] if hops else peer


def client_address(request: web.Request) -> str:
    """``forwarded_client`` for this request, with the app's ``TRUSTED_PROXIES``; an ``X-Forwarded-For`` from a
    peer they do not name is warned of (``tell_unbelieved``)."""
    proxies = request.app.get(TRUSTED_PROXIES, ())
    forwarded = request.headers.getall("X-Forwarded-For", ())
    if forwarded and request.remote is not None and not is_trusted(request.remote, proxies):
        tell_unbelieved(request.app, request.remote)
    return forwarded_client(request.remote, forwarded, proxies)


def tell_unbelieved(app: web.Application, peer: str) -> None:
    """One WARNING per peer (of the first ``MAX_PEERS_TOLD``) whose ``X-Forwarded-For`` is not believed: a reverse
    proxy missing from ``TRUSTED_PROXIES`` makes every caller one address, so anyone's failed admin logins lock the
    admin out for all, and nothing said so. A client may send the header itself: the line says "if"."""
    told = app.get(PEERS_TOLD)
    bucket = throttle_key(peer)
    if told is None or bucket in told or len(told) >= MAX_PEERS_TOLD:
        return
    told.add(bucket)
    logger.warning("X-Forwarded-For from {}, which TRUSTED_PROXIES does not name, is not believed: failed API keys "
                   "and admin logins are counted against {} itself. If it is your reverse proxy, every caller behind "
                   "it is that one address, and anyone's {} failed admin logins a minute lock the admin out for all: "
                   "name it in TRUSTED_PROXIES", peer, peer, ADMIN_FAILURES_PER_MINUTE)


def throttle_key(address: str) -> str:
    """The client a request's failed key or admin guesses are counted against, from its ``client_address``: the
    address's bucket (``address_key``: an IPv6 client's /64), or the address as given when it is no IP."""
    return address_key(address) or address
