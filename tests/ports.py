"""The test suite's ports: ``free_port()`` / ``free_ports(n)`` for a server a test (or the child it starts) binds
a moment later, and ``pool()`` for a ``LocalNet``'s miners.

They come from this process's own ``PortPool``, below the kernel's ephemeral range: the kernel's choice
(``neurons.localnet.free_ports``) was closed again before the child bound it, and now and then another xdist
worker's ``bind(0)`` or an outgoing connection took it in between ("Address already in use"). Each xdist
worker (``PYTEST_XDIST_WORKER`` gw0, gw1, ... of ``PYTEST_XDIST_WORKER_COUNT``) has its own slice, so workers
never hand out the same port; within a worker a port comes round again only after the whole slice (~7,500
ports at -n 3). ``TEST_PORTS=lo-hi`` moves the suite's ports to that range (a host running several suites
at once, each given its own).

The pool is made on first use and kept for the process (``functools.cache``): the ~90 places that need a
port are helpers and module-level code as well as fixtures, and a port handed out must not be handed out
again by a second pool in the same process, so there is one per process, as there is one per worker."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from functools import cache

from shared.ports import PortPool, below_ephemeral


def pool_for(env: Mapping[str, str]) -> PortPool:
    """The pool of the test process whose environment is ``env`` (pytest-xdist names its workers there)."""
    span = env.get("TEST_PORTS")
    ports = range(int(span.split("-")[0]), int(span.split("-")[1]) + 1) if span else below_ephemeral()
    worker = env.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):  # one process, no xdist: the whole range
        return PortPool(ports)
    return PortPool.share(int(worker[2:]), int(env.get("PYTEST_XDIST_WORKER_COUNT", "1")), ports)


@cache
def pool() -> PortPool:
    return pool_for(os.environ)


def free_port() -> int:
    return pool().port()


def free_ports(n: int, *, avoid: Collection[int] = ()) -> list[int]:
    """``n`` distinct ports free now, none in ``avoid``, not handed out by this process for a long while."""
    return pool().take(n, avoid=avoid)
