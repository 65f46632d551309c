"""Processes that stop when they should: on a closed terminal, and with the process that started them.

``sn1 localnet`` and the bench start servers in their own sessions (so a terminal's Ctrl-C reaches
only the parent, which stops them in order), and the API's supervisor starts its workers. If the
parent is killed outright (SIGKILL, the OOM killer), nothing would stop them: on Linux the kernel
is asked to send them SIGTERM, a graceful stop, when their parent dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that arms the parent-death signal (Linux), else None.

    ``prctl`` is looked up here, in the parent: the forked child only makes the C call.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    return lambda: _arm(prctl, parent)


def stop_with_parent(parent: int) -> None:
    """The same, armed by the child itself (a ``multiprocessing`` worker, which has no ``preexec_fn``):
    ``parent`` is the pid that started it."""
    if sys.platform.startswith("linux"):
        _arm(ctypes.CDLL(None, use_errno=True).prctl, parent)


def _arm(prctl: Callable[..., int], parent: int) -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a process gracefully (servers, the API's supervisor, ``sn1 localnet``):
    SIGHUP too (a closed terminal would otherwise end it with no cleanup: a server's pending outbox
    group and usage counts, localnet's children), unless it is ignored, as under ``nohup``, where the
    process is meant to outlive the terminal."""
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        return (signal.SIGINT, signal.SIGTERM)
    return (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run a process's main coroutine on uvloop; what it returns (a start-up check's finding)."""
    import uvloop

    return uvloop.run(main())
