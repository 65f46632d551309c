"""The listening socket of each server, bound before anything else starts (a port in use stops the start with
one line). Apart from ``shared.http`` so that the API's supervisor, which binds once to check the port before
forking its workers, does not load aiohttp (~0.2 s of CPU) for it."""

from __future__ import annotations

import socket

from shared.settings import SettingsError


def bound_socket(host: str, port: int, *, reuse_port: bool = False, settings: str = "") -> socket.socket:
    """A listening socket; with ``reuse_port`` several worker processes share one port. ``settings`` names
    the host and port settings, so the start error says which to change (``API_HOST/API_PORT: ...``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:  # a port in use, an address not on this host: one line at start, not a traceback
        sock.close()
        prefix = f"{settings}: " if settings else ""
        raise SettingsError(f"{prefix}cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
