"""How the reference model has been doing since start, for ``/health``, ``/ready`` and ``/metrics``.

A reference model that is down, refuses the key or does not know the model skips every job it is asked
(``job skipped`` WARNINGs): the scores then stand still, and nothing an operator polls said why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.store.outage import START, OutageLog


@dataclass
class ReferenceStatus:
    """Counts of the reference model's calls and its last failure (already free of any secret). The run of
    failures is ``outage``'s alone: the scorer tells it each job it skips, a call that answers ends it."""

    kind: str = "deterministic"
    calls: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    outage: OutageLog = field(default_factory=lambda: OutageLog("reference model failing, jobs skipped",
                                                                back="it answers again"), repr=False, compare=False)

    def ok(self) -> None:
        self.calls += 1
        self.last_ok_at = time.time()
        self.outage.ok()

    def failed(self, error: Exception) -> None:
        self.calls += 1
        self.failures += 1
        self._note(error)

    def start_failed(self, error: Exception) -> None:
        """The start's check could not read the model list: the run of failures begins with it (its WARNING, and
        ``/ready`` failing until a call answers), though no job was skipped (``failures`` counts none)."""
        self._note(error)
        self.outage.failed(error, by=START)

    def _note(self, error: Exception) -> None:
        """``error`` as the last one (``report``'s)."""
        self.last_error, self.last_error_at = str(error)[:500], time.time()

    def report(self) -> dict[str, object]:
        return {"kind": self.kind, "calls": self.calls, "failures": self.failures, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "last_ok_at": self.last_ok_at}
