"""Where a worker stands in the API's ``WORKERS`` > 1 fleet, for the runs of failures every worker meets alike.

Each worker runs the same periodic work on the same store and validator: the scoring outbox's delivery pass, the
session sweep, the availability refresh. Redis down, or the validator, each worker told its own run: ``WORKERS=4``
made four WARNINGs at once and four lines a minute, which read as four outages. The first worker tells such a run
for all of them, saying so; the others tell it at DEBUG. The first one always serves while the API does: a worker
that exits stops the fleet (``api.supervisor``).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.store.outage import Voice


@dataclass(frozen=True)
class Fleet:
    worker: int = 0  # this worker's number, 0 the first
    workers: int = 1  # how many the API runs (``WORKERS``)

    def voice(self) -> Voice:
        """How this worker tells a run every worker meets alike: the first one for all (saying so), others at DEBUG."""
        if self.workers <= 1:
            return Voice()
        if self.worker > 0:
            return Voice(quiet=True)
        # "debug" in lower case: a ``grep -v DEBUG`` over the log must not drop the one line that is said
        return Voice(note=f" (said once for all {self.workers} workers: the others log it at debug level)")
