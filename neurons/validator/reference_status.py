"""How the reference model has been doing since start, for ``/health``, ``/ready`` and ``/metrics``.

A reference model that is down, refuses the key or does not know the model skips every job it is asked
(``job skipped`` WARNINGs): the scores then stand still, and nothing an operator polls said why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class ReferenceStatus:
    """Counts of the reference model's calls and its last failure (already free of any secret)."""

    kind: str = "deterministic"
    calls: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    failing_since: float | None = None  # the first failure of the run going on (None: the last call answered)
    run: int = 0  # failures in a row, up to the last call

    @property
    def failing(self) -> bool:
        """The last call failed (every job is skipped until one answers)."""
        return self.failing_since is not None

    def ok(self) -> None:
        self.calls += 1
        self.last_ok_at = time.time()
        self.failing_since, self.run = None, 0

    def failed(self, error: Exception) -> None:
        self.calls += 1
        self.failures += 1
        self.run += 1
        self.last_error = str(error)[:500]
        self.last_error_at = time.time()
        if self.failing_since is None:
            self.failing_since = self.last_error_at

    def report(self) -> dict[str, object]:
        return {"kind": self.kind, "calls": self.calls, "failures": self.failures, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "last_ok_at": self.last_ok_at}
