"""The listening socket of each server, bound before anything else starts (a port in use stops the start with
one line). Apart from ``shared.http`` so that the API's supervisor, which binds once to check the port before
forking its workers, does not load aiohttp (~0.2 s of CPU) for it."""

from __future__ import annotations

import errno
import socket
import time

from loguru import logger

from shared.settings import SettingsError

# How long a port no server listens on may stay unbindable before the start gives up. Connections of this host
# hold it: SO_REUSEADDR binds past those a server accepted, not past one this host opened from it (the kernel
# hands even ports of 32768-60999 to outgoing connections: after a test suite or any busy client, the API's
# default 42170 among them). One closed from here stays in TIME_WAIT 60 s (Linux's fixed
# TCP_TIMEWAIT_LEN); an idle keep-alive connection is closed within aiohttp's 15 s first.
HELD_PORT_WAIT_S = 75.0
HELD_PORT_POLL_S = 0.5


def bound_socket(host: str, port: int, *, reuse_port: bool = False, settings: str = "",
                 wait_s: float = HELD_PORT_WAIT_S) -> socket.socket:
    """A listening socket; with ``reuse_port`` several worker processes share one port. ``settings`` names
    the host and port settings, so the start error says which to change (``API_HOST/API_PORT: ...``).

    A port a server listens on stops the start at once; one only this host's connections hold (no server
    answers there: ``server_listens``) is waited for, up to ``wait_s``, saying so once: it was "Address already in
    use" right after a test suite, and the same start a minute later worked."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return _bind(host, port, reuse_port)
        except OSError as e:  # a port in use, an address not on this host: one line at start, not a traceback
            held = e.errno == errno.EADDRINUSE and not server_listens(host, port)
            if not held or time.monotonic() >= deadline:
                prefix = f"{settings}: " if settings else ""
                why = (f" (no server listens there: connections of this host still hold it after {wait_s:g} s)"
                       if held else "")
                raise SettingsError(f"{prefix}cannot listen on {host}:{port}: {e.strerror or e}{why}") from None
        if not said:
            logger.warning("{}{}:{} is held by connections of this host, not by a server (closing ones keep it up to "
                           "60 s): waiting up to {:g} s for it", f"{settings}: " if settings else "", host, port,
                           wait_s)
            said = True
        time.sleep(HELD_PORT_POLL_S)


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def server_listens(host: str, port: int, *, timeout: float = 1.0) -> bool:
    """Whether a server accepts connections on ``host:port`` (a wildcard host: on the loopback). Only a refusal
    says no: a connection that is not refused in ``timeout`` (a full backlog) is a server's."""
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        socket.create_connection((target, port), timeout=timeout).close()
    except ConnectionRefusedError:
        return False
    except OSError:
        return True
    return True
