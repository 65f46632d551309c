"""Whether the model server answers: what the miner advertises rides on it.

A model server that went down after the start (crashed, out of memory, restarted by hand) left the miner
advertising the models it listed last: validators and APIs kept sending it requests that it could only fail
(a 502 each, a 0 each, and the APIs set it aside), and its ``/models`` was asked again only once a minute.
``ServerWatch`` keeps the state of its probes (the ``/models`` listing): a listing that fails while models are
served is asked again at once (``confirm``: a kept-alive connection the server had just closed is no outage),
and a second failure takes the server as down: the miner advertises nothing and answers a chat with a ``503``
until a listing succeeds; it is asked every ``down_every`` seconds meanwhile. A chat request the model server
failed wakes the probe early (``failed_chat``), so an outage is seen at the first failed request, not a minute later.
Each change is logged once (a WARNING as it goes down, an INFO line when it answers again), never per probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

from loguru import logger

DOWN_PROBE_S = 5.0  # seconds between listings while the model server is down (or lists nothing to serve)
CONFIRM_S = 1.0  # seconds before a failed listing is asked again, and the least between two probes
# Seconds after a chat request it answered during which its listings' timeouts and error statuses are not an outage:
# a server that lists its models only between answers (single-threaded, under load) would lose the traffic it serves.
ANSWERING_S = 30.0


def clock_time(at: float) -> str:
    """Unix seconds as ``HH:MM:SS UTC``, as ``/health`` and the log say when something began."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(at))


class ServerWatch:
    """The model server's listing failures in a row, and since when it is down (None: it answers)."""

    def __init__(self, shown_url: str, *, down_every: float = DOWN_PROBE_S) -> None:
        self.shown_url = shown_url
        self.down_every = down_every
        self.confirm = min(CONFIRM_S, down_every)
        self.failures = 0  # listings failed in a row
        self.down_since: float | None = None  # Unix seconds when it was taken as down
        self.why = ""  # the last failure's words, as logged (``failed``)
        self.last_answer = -math.inf  # monotonic: when it last answered a chat request (its status 200)
        self._wake = asyncio.Event()
        self._last_probe = 0.0  # monotonic

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, why: str, *, serving: list[str], refused: bool = False) -> None:
        """A listing failed (``why``). A first failure while ``serving`` models does not take the server as down
        (asked again in ``confirm`` seconds); a second does, and stops their advertising, unless it may be busy rather
        than gone: it answered a chat request in the last ``ANSWERING_S`` (and failed none since), and did not refuse
        the connection (``refused``: nothing listens there, or its name or TLS fails; a timeout or an error status is
        not). A WARNING when it goes down or its reason changes, once."""
        self.failures += 1
        busy = not refused and time.monotonic() - self.last_answer < ANSWERING_S
        if serving and (self.failures < 2 or busy):
            logger.debug("{} (asked again in {:g}s{})", why, self.confirm, "; it answers chat requests" if busy else "")
            return
        words = self._words(why)
        if serving:
            words += f": {', '.join(serving)} no longer advertised"
        if not self.down or why != self.why:
            logger.warning("{}", words)
        self.why = why
        self.down_since = self.down_since or time.time()

    def answered(self, models: list[str]) -> None:
        """A listing succeeded: ``models`` are served (advertised) again. An INFO line if it was down."""
        if self.down_since is not None:
            logger.info("the model server at {} answers again after {:.0f} s (down since {}): advertising {}",
                        self.shown_url, time.time() - self.down_since, clock_time(self.down_since),
                        ", ".join(models) or "no model")
        self.failures, self.down_since, self.why = 0, None, ""

    def answered_chat(self) -> None:
        """It answered a chat request (a 200): up, whatever a listing it failed meanwhile says (``failed``)."""
        self.last_answer = time.monotonic()

    def problem(self) -> str | None:
        """``/health``'s words while down (None while it answers)."""
        if self.down_since is None:
            return None
        return f"{self._words(self.why)}, since {clock_time(self.down_since)}"

    def _words(self, why: str) -> str:
        """A failure's words (``why``) with what it means, as the log and ``/health`` say it."""
        return f"{why}; no model is served until its model list is read (asked every {self.down_every:g}s)"

    def delay(self, refresh: float, *, serving: bool) -> float:
        """Seconds until the next listing: ``refresh`` while models are served and the last listing answered,
        ``confirm`` after its first failure, ``down_every`` while none is served (or its server is busy)."""
        if self.failures == 1 and serving:
            return self.confirm
        if self.failures and serving:
            return self.down_every
        return refresh if serving else self.down_every

    def failed_chat(self) -> None:
        """A chat request the model server failed: list its models now (within ``confirm`` of the last listing), and
        no chat it answered before excuses a listing that fails (``failed``)."""
        self.last_answer = -math.inf
        self._wake.set()

    async def wait(self, delay: float) -> None:
        """Until the next listing is due: ``delay`` seconds, or a ``failed_chat`` (no sooner than ``confirm`` after the
        last listing: a burst of failed requests is one probe)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        self._wake.clear()
        if (gap := self._last_probe + self.confirm - time.monotonic()) > 0:
            await asyncio.sleep(gap)
        self._last_probe = time.monotonic()
