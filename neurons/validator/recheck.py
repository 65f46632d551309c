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
``/ready``); one that fails leaves it on, as its latest try (``OutageLog.retry_failed``): ``/ready`` says when
the check was last tried and by what, and the log says so at a slowing pace (it was DEBUG only: an operator of a
validator stuck "not ready" could not tell whether it was still tried, or why it failed). Each try is counted in
``sn1_validator_rechecks_total{check,outcome}`` (``observe``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from neurons.validator.inbox import ScoringInbox
from neurons.validator.reference import CachedReference
from neurons.validator.scores import ScoreBook
from shared.store.outage import OutageLog

RECHECK_SECONDS = 30.0


async def recheck_cycle(inbox: ScoringInbox | None, reference: CachedReference, scores: ScoreBook | None = None, *,
                        quiet: float = RECHECK_SECONDS, observe: Callable[[str, bool], None] | None = None) -> None:
    """Try the inbox, the reference model and the scores' file again where their run of failures has been
    ``quiet`` that long; ``observe(check, ok)`` is told each try, by its ``/ready`` check's name."""
    if inbox is not None:
        await _try("scoring_inbox", inbox.refused, inbox.probe, quiet, observe)
    await _try("reference", reference.status.outage, reference.probe, quiet, observe)
    if scores is not None and not scores.saving:  # the scores kept in memory since, saved at last: no probe, the
        # real write; not while a save runs already (a try of its own, which tells its outcome: this one returned
        # at once, counted failed). Read once the other tries are done, as a save may have started meanwhile.
        await _try("scores", scores.save_outage, functools.partial(scores.save_off_loop, retry=True), quiet, observe)


async def _try(check: str, run: OutageLog, attempt: Callable[[], Awaitable[object]], quiet: float,
               observe: Callable[[str, bool], None] | None) -> None:
    """One check's try, if its run of failures has been ``quiet`` that long, told to ``observe``."""
    if _quiet(run, quiet):
        await attempt()
        if observe is not None:
            observe(check, not run.failing)


def _quiet(run: OutageLog, seconds: float) -> bool:
    idle = run.quiet_for
    return idle is not None and idle >= seconds
