"""Who serves what: signed ``POST /availability`` to every serving miner.

Unreachable or malformed miners are recorded as unavailable (``None``), never
silently dropped, so the API and the scorer can tell "down" from "unknown".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from loguru import logger
from pydantic import ValidationError

from shared.metagraph import MetagraphSnapshot, MetagraphView, Neuron
from shared.miner_client import MinerClient, MinerError, redirect_note
from shared.protocol import AvailabilityResponse
from shared.signing import CLOCK_HINT, refused_signature
from shared.store.outage import OutageLog
from shared.unchanged import Unchanged


@dataclass
class AvailabilityBook:
    """uid -> availability (or None when the miner is down), with the hotkey it was learnt for."""

    entries: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    hotkeys: dict[int, str] = field(default_factory=dict)
    updated_at: float = 0.0  # Unix seconds at the last poll that ended (``/health``'s availability_updated_at)
    # ``time.monotonic()`` then, for its age (the readiness check): on the wall clock an NTP step forward failed
    # the check at once, and one back held it passing a minute past its limit
    polled_at: float | None = None
    # At the last poll no miner answered and some refused this validator's signature (HTTP 401/403): its
    # own fault (no validator permit, deregistered, a clock off), not theirs (``poll_all``).
    refused_by_all: bool = False
    # The uids that refused this validator's signature at the last poll that ended (``refused_by_all`` aside):
    # a synthetic job leaves them out while this validator holds no permit (``synthetic.run_cycle``).
    refused: set[int] = field(default_factory=set)
    # Polls that no miner answered: a WARNING at the first, a line a minute while it lasts (it was a WARNING every
    # poll, each AVAILABILITY_INTERVAL), an INFO line once one answers again.
    unreachable: OutageLog = field(default_factory=lambda: OutageLog("availability", back="miners answer the poll "
                                                                     "again"), repr=False, compare=False)
    # Polls that every miner refused (``refused_by_all``): told as a run too, as it was every poll while it lasted
    # (a validator without a permit logged the same WARNING every AVAILABILITY_INTERVAL for hours).
    refused_all: OutageLog = field(default_factory=lambda: OutageLog(
        "availability", back="the miners no longer all refuse this validator"), repr=False, compare=False)
    # Polls that some miners refused while others answered: a run as well (a WARNING at each poll, every
    # AVAILABILITY_INTERVAL, while one miner's allow-list or lagging metagraph left this validator out).
    refused_some: OutageLog = field(default_factory=lambda: OutageLog(
        "availability", back="no miner refuses this validator any more"), repr=False, compare=False)
    # The poll's line: INFO when the miners up, refusing or not answering changed, DEBUG when it says the same (it
    # was INFO every poll, 2,880 alike a day, a miner lost among them)
    told: Unchanged = field(default_factory=Unchanged, repr=False, compare=False)

    def age(self) -> float | None:
        """Seconds since the last poll ended (None: none has)."""
        return None if self.polled_at is None else time.monotonic() - self.polled_at

    def get(self, uids: list[int] | None, snapshot: MetagraphSnapshot | None = None) -> dict[str, dict[str, Any] | None]:
        keys = sorted(self.entries) if uids is None else uids
        return {str(uid): self.current(uid, snapshot) for uid in keys}

    def current(self, uid: int, snapshot: MetagraphSnapshot | None) -> dict[str, Any] | None:
        """``uid``'s entry while the hotkey it was learnt from still holds the uid in ``snapshot``; None
        (unavailable until the next poll) once the uid changed hands or left. Served as it was, the old
        miner's models were the new one's for up to a poll interval, and the API raced it for them."""
        entry = self.entries.get(uid)
        if entry is None or snapshot is None or uid not in self.hotkeys:
            return entry
        neuron = snapshot.by_uid(uid)
        return entry if neuron is not None and neuron.hotkey == self.hotkeys[uid] else None

    def serves(self, uid: int, task: str) -> bool:
        entry = self.entries.get(uid)
        return bool(entry and entry["task_availabilities"].get(task))

    def tasks(self) -> set[str]:
        """The tasks some miner advertises now: a query for one of them is answered, as the API's is."""
        return {t for entry in self.entries.values() if entry for t, ok in entry["task_availabilities"].items() if ok}

    def available(self, task: str | None, model: str | None, snapshot: MetagraphSnapshot | None = None) -> list[int]:
        out = []
        for uid in self.entries:
            entry = self.current(uid, snapshot)
            if entry is None:
                continue
            if task and not entry["task_availabilities"].get(task):
                continue
            if model and not entry["llm_model_availabilities"].get(model):
                continue
            out.append(uid)
        return out


async def poll_one(client: MinerClient, neuron: Neuron, timeout: float,
                   refusals: dict[int, str] | None = None, failures: dict[int, str] | None = None,
                   ) -> dict[str, Any] | None:
    """The miner's availability, or None (down). A miner that refuses our signature is put in ``refusals``
    (uid -> why) for ``poll_all``'s WARNING, any other failure in ``failures``."""
    assert neuron.url
    failures = failures if failures is not None else {}
    try:
        # told its deadline (``x-sn1-deadline``) as every request to a miner is: it can bound its work by it
        status, data = await client.post_json(neuron.url, "/availability", {}, neuron.hotkey, timeout=timeout,
                                              tell_deadline=True)
    except MinerError as e:
        failures[neuron.uid] = f"unreachable at {neuron.axon}: {e}"
        logger.debug("availability uid={} {}", neuron.uid, failures[neuron.uid])
        return None
    if status != 200:
        logger.debug("availability uid={} HTTP {}{}", neuron.uid, status, redirect_note(status))
        refused = refused_signature(status, data)
        if refused is not None and refusals is not None:
            refusals[neuron.uid] = refused
        else:
            failures[neuron.uid] = f"HTTP {status} from {neuron.axon}{redirect_note(status)}"
        return None
    try:
        return AvailabilityResponse.model_validate(data).model_dump()
    except ValidationError:
        failures[neuron.uid] = f"a malformed availability answer from {neuron.axon}"
        logger.debug("availability uid={} malformed answer", neuron.uid)
        return None


async def poll_all(
    client: MinerClient, metagraph: MetagraphView, book: AvailabilityBook, *, timeout: float, concurrency: int
) -> AvailabilityBook:
    neurons = metagraph.snapshot.serving(exclude_hotkey=client.signer.hotkey)
    sem = asyncio.Semaphore(concurrency)

    refusals: dict[int, str] = {}
    failures: dict[int, str] = {}

    async def bounded(n: Neuron) -> tuple[Neuron, dict[str, Any] | None]:
        async with sem:
            return n, await poll_one(client, n, timeout, refusals, failures)

    results = await asyncio.gather(*(bounded(n) for n in neurons))
    refused = len(refusals)
    up = sum(1 for _, e in results if e is not None)
    book.refused_by_all = bool(refused) and not up
    if book.refused_by_all:
        # Every miner down at once for our fault: kept as last known (the API may sign with another hotkey),
        # and the synthetic loops pause; marked down, every miner with a score was sampled and scored 0.
        book.refused_all.failed(refusal_note(refusals, client.signer.hotkey, everyone=True))
        return book
    book.refused_all.ok()
    back = answering_again(book, results)
    book.entries = {n.uid: e for n, e in results}
    book.refused = set(refusals)
    book.hotkeys = {n.uid: n.hotkey for n, _ in results}
    book.updated_at, book.polled_at = time.time(), time.monotonic()
    says = (up, len(results), tuple(sorted(refusals)), tuple(sorted(failures)))
    # none up: the WARNING below says why
    logger.log(book.told.level(says), "availability: {}/{} miners up{}{}{}", up, len(results),
               f", {refused} refused us" if refused else "",
               f"; answering again: uid(s) {listed_uids(back)}" if back else "", down_note(failures) if up else "")
    if refusals:
        book.refused_some.failed(refusal_note(refusals, client.signer.hotkey, everyone=False))
    else:
        book.refused_some.ok()
    if results and not up and not refusals:
        warn_none_reachable(book.unreachable, failures)
    elif up:
        book.unreachable.ok()
    return book


def answering_again(book: AvailabilityBook, results: list[tuple[Neuron, dict[str, Any] | None]]) -> list[int]:
    """The uids that did not answer the last poll and answer this one, under the same hotkey: the line said ``3/3
    miners up`` alone when a miner came back, and which one it was went unsaid."""
    return sorted(n.uid for n, e in results if e is not None and n.uid in book.entries
                  and book.entries[n.uid] is None and book.hotkeys.get(n.uid) == n.hotkey)


def listed_uids(uids: list[int], most: int = 20) -> str:
    """``1,4,7`` for a line, the first ``most`` of them and ``,...`` past those (a subnet has up to 256 uids)."""
    return ",".join(map(str, uids[:most])) + (",..." if len(uids) > most else "")


def down_note(failures: dict[int, str]) -> str:
    """What the poll's INFO line says of the miners that did not answer: their uids and the first one's reason.
    The line said ``3/4 miners up`` alone, the reasons at DEBUG: a miner killed, or one whose port closed, could
    be told from a live one only by ``/miner_availabilities``' ``null``."""
    if not failures:
        return ""
    uids = sorted(failures)
    return f"; not answering: uid(s) {listed_uids(uids)} (uid {uids[0]}: {failures[uids[0]]})"


def warn_none_reachable(told: OutageLog, failures: dict[int, str]) -> None:
    """No serving miner answered, and none for our signature's sake: said only as ``0/N miners up`` at INFO,
    with the reasons at DEBUG, so a validator whose host cannot reach the miners (its firewall, no route, a
    wrong network) looked like one on a subnet of dead miners. One uid's reason tells which it is. Told as a
    run (``told``): its first poll, then a line a minute."""
    uid = min(failures) if failures else None
    told.failed(f"none of {len(failures)} serving miner(s) answered the poll (can this host reach them?)"
                + (f"; uid {uid}: {failures[uid]}" if uid is not None else ""))


# Refusals that point at a clock, by the code a receiver names (``shared.signing``), and how the WARNING counts each:
# a stale nonce (either clock off), and one older than a receiver's start that the MinerClient's one re-signing
# did not cure (this host's clock behind the miner's, which just restarted).
CLOCK_REFUSALS: Mapping[str, str] = MappingProxyType({"StaleRequest": "as stale",
                                                     "SignedBeforeStart": "as signed before their start"})


def clock_note(refusals: dict[int, str], uids: list[int]) -> tuple[str, list[int]]:
    """What the WARNING says of the clock refusals among ``refusals`` ("" for none), and their uids in the order
    counted (the first is the one quoted)."""
    found = {code: [uid for uid in uids if f" {code}:" in refusals[uid]] for code in CLOCK_REFUSALS}
    counted = [(code, found[code]) for code in CLOCK_REFUSALS if found[code]]
    if not counted:
        return "", []
    whose = "this host's clock or theirs is off" if found["StaleRequest"] else "this host's clock is behind theirs"
    counts = " and ".join(f"{len(these)}{' of them' if i == 0 else ''} {CLOCK_REFUSALS[code]} ({code})"
                          for i, (code, these) in enumerate(counted))
    return f"; {counts}: {whose}, {CLOCK_HINT}", [uid for _, these in counted for uid in these]


def refusal_note(refusals: dict[int, str], hotkey: str, *, everyone: bool) -> str:
    """What the WARNING says of the miners that refused our signed requests: it was a DEBUG line each, so a validator
    whose clock had drifted, or that had lost its permit, saw only "0/N miners up" and its miners' scores
    fall. The first refusal is quoted, a clock's first: a ``StaleRequest`` or ``SignedBeforeStart`` says by how
    much the clocks differ. ``everyone``: no miner answered otherwise, so the availability is kept as last known
    and synthetic jobs pause."""
    uids = sorted(refusals)
    why, clock = clock_note(refusals, uids)
    why = why or f"; does hotkey {hotkey} hold a validator permit (or an allow-listing) on their metagraph?"
    then = "; none answered: availability kept as last known, synthetic jobs paused" if everyone else ""
    first = (clock or uids)[0]
    return (f"{len(uids)} miner(s) refused this validator's signed requests (uids {listed_uids(uids)}){why}{then}; "
            f"uid {first}: {refusals[first]}")
