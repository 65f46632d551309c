"""Required checks whose failure is learnt from traffic, tried again by the validator when there is none.

The ``scoring_inbox`` check knew of the inbox's disk only from the writes ``/scoring`` tried, the
``reference`` check of the reference model only from the jobs that asked it, and the ``scores`` check of the
scores' file only from the saves scored jobs made: after an outage ended with no
traffic (an API stopped or its outbox lost, no organic payload, synthetic jobs off or no miner answering),
``/ready`` said "refused" or "failing" for as long as the validator ran, counting the outage's length from its
start, and an alert on ``sn1_validator_ready`` stayed on for an outage long over. Each cycle, a run of failures
that nothing has tried for ``RECHECK_SECONDS`` is tried once here: the inbox with a write of the size it
refused, the reference model with a short question, the scores with their save (which also keeps, at last,
what was scored while the disk refused it). One that works ends the run (its INFO line, and
``/ready``), one that fails leaves it as it was.
"""

from __future__ import annotations

from neurons.validator.inbox import ScoringInbox
from neurons.validator.reference import CachedReference
from neurons.validator.scores import ScoreBook
from shared.store.outage import OutageLog

RECHECK_SECONDS = 30.0


async def recheck_cycle(inbox: ScoringInbox | None, reference: CachedReference, scores: ScoreBook | None = None, *,
                        quiet: float = RECHECK_SECONDS) -> None:
    """Try the inbox, the reference model and the scores' file again where their run of failures has been
    ``quiet`` that long."""
    if inbox is not None and _quiet(inbox.refused, quiet):
        await inbox.probe()
    if _quiet(reference.status.outage, quiet):
        await reference.probe()
    if scores is not None and _quiet(scores.save_outage, quiet):
        await scores.save_off_loop()  # the scores kept in memory since, saved at last: no probe, the real write


def _quiet(run: OutageLog, seconds: float) -> bool:
    idle = run.quiet_for
    return idle is not None and idle >= seconds
