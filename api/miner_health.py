"""Which miners have been failing this API's requests, set aside until a probe finds them answering.

Availability is the validator's poll (``availability.py``): a miner that advertises its models and then fails
every chat (its model server down, a proxy answering 503, an overloaded host timing out) stayed a candidate
at full share, and ``/ready`` said 200 while every chat was a 503. Here each miner request's outcome is
remembered, per API process (each worker learns from its own traffic; nothing is shared through the store):
``failures_to_set_aside`` failures in a row (refused connections, timeouts, 5xx, garbage) set the miner aside
for a cooldown; organic selection skips it; once the cooldown is over, ``probe_forever`` sends it one real
request (a one-token completion, never scored) and an answer puts it back in rotation, a failure sets it
aside again for twice as long (up to ``max_cooldown``). Any answer it gives an organic request meanwhile (one
started before it was set aside) counts the same.

The bookkeeping a request pays is a dict lookup per miner raced (``record``), and selection filters only while
some miner is set aside (``aside`` empty: nothing to do), with one lookup per candidate.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from loguru import logger

from shared.metagraph import Neuron
from shared.store.outage import RECOVERED

# An answer, even one the caller cannot use: the miner is up and talking sense. ``not_served`` (404
# model_not_found: availability's business, per model), ``refused`` (its model server refused the caller's
# request), ``unfit`` (an answer in the wrong format).
ANSWERED_KINDS = frozenset({"not_served", "refused", "unfit"})
# Not the miner's doing: the API stopped the request (shutdown, a caller who left).
IGNORED_KINDS = frozenset({"cancelled"})
# The reasons ``sn1_api_miners_set_aside{reason}`` names (``MinerError.kind``); any other kind is ``other``.
REASONS = ("timeout", "unreachable", "dropped", "http_5xx", "http_4xx", "signature", "bad_response", "too_large",
           "other")
PROBE_EVERY_S = 1.0  # how often the prober looks for miners whose cooldown is over


@dataclass(slots=True)
class Record:
    """A miner that failed its last ``failures`` requests (only failing miners have one)."""

    hotkey: str  # the uid's owner when it failed: a uid that changes hands starts clean
    failures: int = 0
    reason: str = "other"  # the last failure's kind, one of REASONS
    until: float = 0.0  # set aside until this (``clock``); 0: not set aside
    cooldown: float = 0.0  # the length of the current (or last) cooldown
    since: float = 0.0  # when it was set aside (``clock``)
    probing: bool = False  # a probe is in flight: one at a time


class MinerHealth:
    """Consecutive failures per miner, and the miners set aside for them (``failures_to_set_aside`` 0: none)."""

    def __init__(self, failures_to_set_aside: int, cooldown: float, max_cooldown: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures_to_set_aside
        self.cooldown = cooldown
        self.max_cooldown = max(cooldown, max_cooldown)
        self.records: dict[int, Record] = {}  # uid -> its record, for the miners whose last request failed
        self.aside: dict[int, str] = {}  # uid -> hotkey, for those set aside: what selection reads per candidate
        self._clock = clock

    def record(self, neuron: Neuron, kind: str | None) -> None:
        """One request's outcome for ``neuron``: ``kind`` None for an answer, else its failure's
        ``MinerError.kind`` (or the race's ``unfit``, ``cancelled``). O(1): one dict lookup."""
        if not self.threshold or kind in IGNORED_KINDS:
            return
        uid = neuron.uid
        if kind is None or kind in ANSWERED_KINDS:
            if self.records:  # nothing to clear while no miner failed (the hot path's usual case)
                self._answered(uid)
            return
        rec = self.records.get(uid)
        if rec is None or rec.hotkey != neuron.hotkey:
            self.aside.pop(uid, None)
            rec = self.records[uid] = Record(neuron.hotkey)
        rec.failures += 1
        rec.reason = kind if kind in REASONS else "other"
        if rec.failures >= self.threshold:
            self._set_aside(uid, rec)

    def _answered(self, uid: int) -> None:
        rec = self.records.pop(uid, None)
        if rec is not None and self.aside.pop(uid, None) is not None:
            # as every run's end (``shared.store.outage.RECOVERED``): the run's first words, ``uid N set aside``, after it
            logger.info("{}uid {} set aside: it answers again, back in rotation after {:.0f} s", RECOVERED, uid,
                        self._clock() - rec.since)

    def _set_aside(self, uid: int, rec: Record) -> None:
        now = self._clock()
        if rec.until > now:  # set aside already: requests started before it still end, and change nothing
            return
        if rec.until:  # its cooldown was over (a failed probe): longer this time
            rec.cooldown = min(self.max_cooldown, rec.cooldown * 2)
        else:
            rec.cooldown, rec.since = self.cooldown, now
            self.aside[uid] = rec.hotkey
            logger.warning("uid {} set aside: its last {} request(s) failed (last: {}); probed again in {:.0f} s",
                           uid, rec.failures, rec.reason, rec.cooldown)
        rec.until, rec.probing = now + rec.cooldown, False

    def is_aside(self, neuron: Neuron) -> bool:
        """Whether ``neuron`` is set aside: organic requests skip it until a probe finds it answering."""
        return self.aside.get(neuron.uid) == neuron.hotkey

    def answering(self, neurons: list[Neuron]) -> list[Neuron]:
        """Those of ``neurons`` not set aside (the same list while no miner has failed)."""
        aside = self.aside
        if not aside:
            return neurons
        return [n for n in neurons if aside.get(n.uid) != n.hotkey]

    def aside_uids(self, neurons: Iterable[Neuron | None]) -> list[int]:
        """The uids of those of ``neurons`` set aside, lowest first (None: a uid not in the metagraph, never
        set aside)."""
        if not self.aside:
            return []
        return sorted({n.uid for n in neurons if n is not None and self.is_aside(n)})

    def reasons(self, neurons: Iterable[Neuron]) -> Counter[str]:
        """How many of ``neurons`` are set aside, by their last failure's kind."""
        return Counter(self.records[n.uid].reason for n in neurons if self.is_aside(n))

    def next_probe_in(self, neurons: Iterable[Neuron]) -> float:
        """Seconds until the soonest of ``neurons``' cooldowns ends (0: one is due or being probed)."""
        now = self._clock()
        return max(0.0, min((self.records[n.uid].until - now for n in neurons if self.is_aside(n)), default=0.0))

    def due(self) -> list[int]:
        """The uids whose cooldown is over and that no probe is asking yet; each is marked as being probed."""
        now = self._clock()
        out = [uid for uid, rec in self.records.items() if rec.until and rec.until <= now and not rec.probing]
        for uid in out:
            self.records[uid].probing = True
        return out

    def forget(self, uid: int) -> None:
        """Drop ``uid``'s record (it left the metagraph, or changed hands)."""
        self.records.pop(uid, None)
        self.aside.pop(uid, None)

    def probe_ended(self, uid: int) -> None:
        """A probe ended without an outcome (stopped): the next round probes again."""
        rec = self.records.get(uid)
        if rec is not None:
            rec.probing = False


def set_aside_message(health: MinerHealth, neurons: list[Neuron], which: str = "available") -> str:
    """Why every one of ``neurons`` (all set aside) is skipped: for a 503 and ``/ready``. ``which``: what they are
    to the reader (``available``; ``other``: besides the miners a race asked)."""
    reasons = ", ".join(f"{kind} x{n}" for kind, n in sorted(health.reasons(neurons).items()))
    return (f"every one of the {len(neurons)} {which} miner(s) failed its last {health.threshold} request(s) "
            f"from this API ({reasons}): set aside, and probed again within {health.next_probe_in(neurons):.0f} s")


async def probe_forever(health: MinerHealth, by_uid: Callable[[int], Neuron | None],
                        probe: Callable[[Neuron], asyncio.Future[object]], every: float = PROBE_EVERY_S) -> None:
    """Every ``every`` seconds, probe each miner whose cooldown is over (one probe each at a time): ``probe``
    sends it a real request whose outcome ``record`` takes (``api.fanout.start_race`` records every run).
    A uid no longer in the metagraph, or with a new hotkey, is forgotten instead."""
    while True:
        await asyncio.sleep(every)
        for uid in health.due():
            neuron = by_uid(uid)
            rec = health.records.get(uid)
            if neuron is None or rec is None or neuron.hotkey != rec.hotkey or not neuron.axon:
                health.forget(uid)
                continue
            probe(neuron).add_done_callback(lambda _f, uid=uid: health.probe_ended(uid))
