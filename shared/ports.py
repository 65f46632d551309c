"""Ports for servers a process chooses now and a child binds later (``sn1 localnet``'s miners, the tests').

A port the kernel picks (``bind(("127.0.0.1", 0))``) comes from its ephemeral range, the same ports it gives
every outgoing connection and every other process's ``bind(0)``: closed again to hand it to a child, it was
sometimes taken in the second before the child bound it, and the child died with "Address already in use"
(the test suite's parallel workers, each starting servers and connecting to them, made it happen).
``PortPool`` hands out ports below that range instead, in turn, each once until the whole pool has been
handed out, skipping those in use: nobody's ``bind(0)`` nor outgoing connection takes them, and processes
that share a host take disjoint pools (``PortPool.share``).

The pool is an object its owner keeps and hands in (no module-level cursor): the test suite keeps one per
process, each ``sn1 localnet`` run would keep its own, and two owners of one pool cannot be told apart later.
"""

from __future__ import annotations

import socket
from collections.abc import Collection
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_EPHEMERAL_START = 32768  # Linux's default, and this host's when the file cannot be read
LOWEST_POOL_PORT = 10000  # above the ports well-known services are given to (<= 9999 by custom: 8080, 9090)


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (connections still closing there do not count, as for our servers)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ephemeral_start(path: Path = EPHEMERAL_RANGE_FILE) -> int:
    """The lowest port the kernel hands to ``bind(0)`` and outgoing connections (Linux: the range's file)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return LINUX_EPHEMERAL_START


def below_ephemeral(start: int | None = None) -> range:
    """The ports from ``LOWEST_POOL_PORT`` up to the ephemeral range (10000-32767 on Linux by default)."""
    top = ephemeral_start() if start is None else start
    if top - LOWEST_POOL_PORT < 1000:
        raise RuntimeError(f"the kernel's ephemeral ports start at {top}: too few ports below them for a pool "
                           f"(from {LOWEST_POOL_PORT}); give the pool a range of its own")
    return range(LOWEST_POOL_PORT, top)


class PortPool:
    """Ports of ``ports`` handed out in order, wrapping around: one is handed out again only after every other
    has been, so a child given a port a moment ago still has it to itself when it binds. Ports in use (some
    other program's server) or named in ``avoid`` are skipped."""

    def __init__(self, ports: range) -> None:
        if not ports or ports.step != 1 or not 0 < ports.start < ports.stop <= 65536:
            raise ValueError(f"{ports!r} is not a range of ports")
        self.ports = ports
        self._next = 0  # index in ``ports`` of the next port to try

    @classmethod
    def share(cls, index: int, count: int, ports: range | None = None) -> PortPool:
        """Slice ``index`` (0-based) of ``count`` equal, disjoint slices of ``ports`` (default
        ``below_ephemeral()``): one each for processes that choose ports at the same time on one host."""
        if not 0 <= index < count:
            raise ValueError(f"slice {index} of {count} does not exist")
        span = below_ephemeral() if ports is None else ports
        size = len(span) // count
        return cls(span[index * size:(index + 1) * size])

    def take(self, n: int = 1, *, avoid: Collection[int] = ()) -> list[int]:
        """The next ``n`` ports that are free now and not in ``avoid``; RuntimeError if the pool has fewer."""
        taken: list[int] = []
        for _ in range(len(self.ports)):
            if len(taken) == n:
                break
            port = self.ports[self._next]
            self._next = (self._next + 1) % len(self.ports)
            if port not in avoid and port_is_free(port):
                taken.append(port)
        if len(taken) < n:
            raise RuntimeError(f"{n} ports wanted, {len(taken)} free in {self.ports.start}-{self.ports.stop - 1}")
        return taken

    def port(self) -> int:
        return self.take(1)[0]
