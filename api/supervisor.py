"""``WORKERS`` > 1: the process that starts the API's workers, passes stop signals on, and exits
when they have. It never outlives them, and it never hides one that died: a worker that exits on
its own stops the rest, and the supervisor exits 1 so that pm2 or systemd restarts the whole API."""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess

from loguru import logger

from shared.process import stop_signals


class Supervisor:
    def __init__(self, workers: list[BaseProcess]) -> None:
        self.workers = workers
        self.stopping = False

    def run(self) -> int:
        """Start the workers and wait for every one to end; the exit status (1: one ended on its own)."""
        for sig in stop_signals():  # as a worker stops: a supervisor dying alone would orphan its workers
            signal.signal(sig, self._on_signal)
        self._start_ignoring_sigint()
        ended = self._first_to_end()
        crashed = not self.stopping
        if crashed:  # a crash, or a store it could not open: serving on with fewer workers would hide it
            logger.error("api worker pid {} exited with code {} on its own; stopping the other workers",
                         ended.pid, ended.exitcode)
            self._stop_workers()
        for w in self.workers:
            w.join()
        return 1 if crashed else 0

    def _start_ignoring_sigint(self) -> None:
        """Ctrl-C in a terminal reaches every process of the group. A worker that got it while its interpreter
        was still starting printed "Fatal Python error: init_import_site ... KeyboardInterrupt" (or a traceback
        from its imports): spawned with SIGINT ignored (an ignored signal stays ignored across exec), a starting
        worker stops on the supervisor's SIGTERM instead, and takes SIGINT again once it serves
        (``serve_until_signal``).

        Blocked as well as ignored meanwhile: ignored alone, a Ctrl-C while the workers spawned (each spawn
        waits for the worker's interpreter to read its start-up data: seconds on a loaded host) was lost, and
        the API went on to serve. A blocked signal is kept pending though its action is to ignore it, and is
        taken by ``_on_signal`` as the spawning ends. The workers inherit the mask too: one that got the Ctrl-C
        while starting takes it once it serves (``serve_until_signal`` unblocks it)."""
        # multiprocessing starts its resource tracker with the first spawn, and unblocks SIGINT after it: started
        # first, it is left alone
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # before SIG_IGN, which discards a pending one
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for w in self.workers:
                w.start()
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.stopping = True
        self._stop_workers()

    def _stop_workers(self) -> None:
        for w in self.workers:
            if w.is_alive():
                os.kill(w.pid, signal.SIGTERM)  # type: ignore[arg-type]  # started, so it has a pid

    def _first_to_end(self) -> BaseProcess:
        """Block until a worker ends: all of them after a stop signal, one when it crashes."""
        ready = multiprocessing.connection.wait([w.sentinel for w in self.workers])
        ended = next(w for w in self.workers if w.sentinel in ready)
        ended.join()  # reaped, so its exit code is known
        return ended
