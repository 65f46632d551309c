"""Whether an IP address is public: one a stranger may have this host connect to.

A caller's media URL (``neurons.miner.media_urls``) and a miner's published axon (``shared.metagraph``) are
addresses anyone may write: fetched or called as written, a private one had this host reach what only its own
network reaches (its model server on 127.0.0.1, the cloud metadata address, a 10.x service).
"""

from __future__ import annotations

import ipaddress

from shared.client_address import ip_of

# IPv6 prefixes whose last 32 bits are an IPv4 address the packet reaches: NAT64's well-known prefix (a cloud's NAT
# gateway forwards ``64:ff9b::a00:5`` to 10.0.0.5), IPv4-compatible and IPv4-translated (SIIT) addresses. Python
# counts them "global" whatever the IPv4 address inside (6to4, ``2002::/16``, is ``IPv6Address.sixtofour``).
IPV4_CARRYING = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96"))
# Not globally reachable (IANA's special-purpose registry), though Python before 3.12.4 counts them global: the
# local-use NAT64 prefix (a site's own translator, to its own IPv4 network too), deprecated site-local addresses,
# and the documentation and SRv6 ranges.
NOT_GLOBAL_V6 = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b:1::/48", "fec0::/10", "3fff::/20", "5f00::/16"))


def is_public(address: str) -> bool:
    """Whether ``address`` is a public (global) IP address; an IPv4-mapped IPv6 address as its IPv4 one, and an
    IPv6 address that carries an IPv4 one (NAT64, 6to4, IPv4-compatible) public only when that one is too."""
    ip = ip_of(address)
    if ip is None or not ip.is_global or ip.is_multicast or any(ip in network for network in NOT_GLOBAL_V6):
        return False
    inner = carried_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    return inner is None or (inner.is_global and not inner.is_multicast)


def carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and is routed to (``IPV4_CARRYING``, 6to4), or None."""
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in network for network in IPV4_CARRYING):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None
