"""A run of store failures told in a few log lines, not one per failure.

A store that refuses every write (Redis out of memory under ``noeviction``, a read-only replica, a full
disk, a SQLite file locked elsewhere) fails every request, every usage flush and every outbox commit for
as long as it lasts: each said so in a WARNING of its own, thousands of lines a minute under traffic that
buried everything else in the log (and filled its disk). Each such use of the store now keeps an
``OutageLog``: the first failure of a run is a WARNING with its reason, the run goes on in one line a
minute with how many failed since, and the first success after it is one INFO line saying how long it
lasted (``recovered: <what>: ...``). A failure that needs an operator (``needs_operator``: a SQLite file that
refuses writes) begins its run with an ERROR instead. A run that only traffic tries, tried again by its process
while there is none (``neurons.validator.recheck``), says when it was last tried and by what (``tried_at``,
``tried_by``), and a try of its own that fails is a WARNING at a slowing pace: at the first, then after 1, 2, 4 ...
minutes, at most every ``RETRY_LOG_MAX_S`` (it was DEBUG only: an operator could not tell whether it was still
tried, or why it failed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

OUTAGE_LOG_EVERY_S = 60.0  # while a run of failures lasts, one line at most this often
RETRY_LOG_FIRST_S = 60.0  # a failed retry's line after the first: this long after it, then twice as long each time
RETRY_LOG_MAX_S = 1800.0  # ... up to this: a run of retries that never ends is told twice an hour
# what last tried a run: its own uses (``failed``), a retry of its own, or a check at the process's start
TRAFFIC, RECHECK, START = "traffic", "recheck", "start"
# The first word of every line ending a run: ``recovered: <what>: <what came back> after N s (M failure(s))``, where
# the run's first line was ``<what>: <reason>``. A monitor pairs the two on ``<what>``.
RECOVERED = "recovered: "


@dataclass(frozen=True)
class Voice:
    """How loud a process tells a run: as it is (the default), or at DEBUG (``quiet``) when another process tells the
    same run for it, ``note`` ending the first line of the process that does (an API's ``WORKERS`` > 1 fleet, whose
    workers each meet a store or a validator down in their own periodic work: ``api.fleet``)."""

    quiet: bool = False
    note: str = ""

    def level(self, level: str) -> str:
        return "DEBUG" if self.quiet else level


class OutageTeller:
    """The log lines of a run of failures, wherever the run itself is kept: in the process (``OutageLog``) or
    in a store shared by hosts (``api.delivery_outage``). One teller, so that the two say a run alike: its
    WARNING (an ERROR when an operator must act), a "still failing" line at most every ``every`` seconds of
    this teller's clock, and the INFO line ending it."""

    def __init__(self, what: str, *, back: str, every: float = OUTAGE_LOG_EVERY_S, voice: Voice | None = None) -> None:
        self.what = what  # the start of each line
        self.back = back  # what the INFO line ending a run says came back (the store, the reference model, ...)
        self.every = every
        self.voice = voice or Voice()
        self._told_at: float | None = None  # when a line last spoke of the run (None: not yet, by this teller)
        self._untold = 0  # failures since
        self._retry_told_at: float | None = None  # when a line last spoke of the run's failed retries (None: not yet)
        self._retry_gap = RETRY_LOG_FIRST_S  # how long after it the next one may
        self._retries_untold = 0  # failed retries since

    def began(self, now: float, error: object, hint: str | None = None,
              exception: BaseException | None = None) -> None:
        """The failure that began the run: its one WARNING, or an ERROR with what to fix (``hint``); with
        ``exception`` (a bug's), its traceback, told for the run's first failure alone."""
        self._told_at, self._untold = now, 0
        log = logger.opt(exception=exception) if exception is not None else logger
        if hint:
            log.log(self.voice.level("ERROR"), "{}: {}; {}{}", self.what, error, hint, self.voice.note)
        else:
            log.log(self.voice.level("WARNING"), "{}: {}{}", self.what, error, self.voice.note)

    def again(self, now: float, error: object) -> None:
        """One more failure in the run: the "still failing" line once ``every`` seconds passed since the last
        line. A run this teller did not begin (another worker's) is told from here, a minute on."""
        if self._told_at is None:
            self._told_at, self._untold = now, 1
            return
        self._untold += 1
        if now - self._told_at >= self.every:
            self.still(self._untold, now - self._told_at, error)
            self._told_at, self._untold = now, 0

    def still(self, failures: int, seconds: float, error: object) -> None:
        """The "still failing" line: ``failures`` more in the last ``seconds`` (a run whose pace a store shared by
        workers keeps calls it itself: ``api.scoring_outbox``'s full outbox)."""
        logger.log(self.voice.level("WARNING"), "{}: still failing, {} more time(s) in the last {:.0f} s: {}", self.what,
                   failures, seconds, error)

    def retried(self, now: float, lasted: float, error: object) -> None:
        """A retry of the run's own that failed (``OutageLog.retry_failed``): a WARNING at the first, then once
        ``RETRY_LOG_FIRST_S`` passed, each gap twice the last (at most ``RETRY_LOG_MAX_S``), with how long the run
        has lasted and the latest error. Said at DEBUG alone, a run tried every 30 s looked abandoned."""
        self._retries_untold += 1
        if self._retry_told_at is not None:
            if now - self._retry_told_at < self._retry_gap:
                return
            self._retry_gap = min(self._retry_gap * 2, RETRY_LOG_MAX_S)
        logger.log(self.voice.level("WARNING"), "{}: tried again, still failing {:.0f} s into the run ({} tr(ies) since "
                   "the last such line; the next such line in {:.0f} s): {}", self.what, lasted, self._retries_untold,
                   self._retry_gap, error)
        self._retry_told_at, self._retries_untold = now, 0

    def ended(self, lasted: float, failures: int) -> None:
        """The run is over: the INFO line, with how long it lasted and how many failures it held. It begins with
        ``RECOVERED`` and then the run's ``what``, as its first line did: said as ``what`` alone, a recovery read as
        one more failure (``metagraph cycle failed: a cycle succeeded again ...``), and a log rule matching ``what``
        took the end of an outage for its start."""
        logger.log(self.voice.level("INFO"), "{}{}: {} after {:.1f} s ({} failure(s))", RECOVERED, self.what, self.back,
                   lasted, failures)
        self.forget()

    def forget(self) -> None:
        """This teller no longer speaks of a run (ended elsewhere, or handed on)."""
        self._told_at, self._untold = None, 0
        self._retry_told_at, self._retry_gap, self._retries_untold = None, RETRY_LOG_FIRST_S, 0


class OutageLog:
    """The failures of one use of the store (``what``, the start of each line), told as a run."""

    def __init__(self, what: str, *, every: float = OUTAGE_LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic, back: str = "the store answers again",
                 settle: float = 0.0, needs_operator: Callable[[object], str | None] | None = None,
                 voice: Voice | None = None) -> None:
        self.what = what
        # A failure that will not pass by itself (a file made read-only, a full disk) begins its run with an
        # ERROR and what to fix (the hint it returns), rather than a WARNING: one line per outage to alert on.
        self.needs_operator = needs_operator
        self.teller = OutageTeller(what, back=back, every=every, voice=voice)
        # A success ends the run only this long after its last failure: failures mixed with successes (most
        # requests answered, some not) are one run told once a minute, not a WARNING and an INFO line each.
        self.settle = settle
        self._last_failure = 0.0
        self._clock = clock
        self._began: float | None = None  # when the run of failures began (None: no run)
        self.failures = 0  # in the run (0: no run)
        self.last_error: str | None = None  # the run's latest failure, for a readiness check to quote
        self.tried_at: float | None = None  # Unix seconds of the run's latest try that failed (None: no run)
        self.tried_by: str | None = None  # what made it: ``TRAFFIC`` or ``START`` (``failed``), ``RECHECK`` (``retry_failed``)
        self._tried = 0.0  # ``clock`` at it

    @property
    def failing(self) -> bool:
        return self._began is not None

    @property
    def failing_for(self) -> float:
        """Seconds since the run began (0.0: no run), on ``clock``: a readiness check's "Ns into a run". Told
        from a wall-clock start, an NTP step made it negative or a minute too long."""
        return 0.0 if self._began is None else self._clock() - self._began

    @property
    def quiet_for(self) -> float | None:
        """Seconds since the run's last failure (None: no run): how long nothing has tried and failed. A run kept
        by what only traffic tries (a write, a call) stays on while there is none: ``neurons.validator.recheck``
        tries once itself when it has been quiet."""
        return None if self._began is None else self._clock() - self._last_failure

    @property
    def tried_ago(self) -> float | None:
        """Seconds since the run's latest try (None: no run), on ``clock``."""
        return None if self._began is None else self._clock() - self._tried

    def _tried_now(self, now: float, error: object, by: str) -> None:
        self.last_error = str(error)
        self.tried_at, self.tried_by, self._tried = time.time(), by, now

    def failed(self, error: object, exception: BaseException | None = None, by: str = TRAFFIC) -> None:
        """One more failure: a WARNING if it begins a run or the last line is ``every`` seconds old; the run's
        first line carries ``exception``'s traceback, if given (a bug's: one traceback a run, not one a failure).
        ``by``: what tried (``TRAFFIC``, or ``START``: a check at the process's start)."""
        now = self._clock()
        self.failures += 1
        self._tried_now(now, error, by)
        self._last_failure = now
        if self._began is None:
            self._began = now
            self.teller.began(now, error, self.needs_operator(error) if self.needs_operator is not None else None,
                              exception)
        else:
            self.teller.again(now, error)

    def retry_failed(self, error: object) -> None:
        """A retry of the run's own failed (``neurons.validator.recheck``, while nothing else tries): the run's
        latest try and error, told at a slowing pace (``OutageTeller.retried``), but none of its failures (no
        request or job failed) and no end to its quiet (it is tried again at the next cycle)."""
        if self._began is None:
            return  # the run ended meanwhile (traffic came back): nothing to retry
        now = self._clock()
        self._tried_now(now, error, RECHECK)
        self.teller.retried(now, now - self._began, error)

    def ok(self) -> None:
        """The store answered: a run of failures, if any, ends with an INFO line (costs nothing otherwise)."""
        if self._began is None:
            return
        if self.settle and self._clock() - self._last_failure < self.settle:
            return  # failing on and off: the run goes on
        self.teller.ended(self._clock() - self._began, self.failures)
        self._began, self.failures = None, 0
        self.last_error = self.tried_at = self.tried_by = None
