"""An API whose Redis came back empty says so, once, and ``/ready`` fails until an operator acts.

A Redis run without persistence (no ``appendonly``, no ``save``) that restarts comes back EMPTY: every API key,
usage counter and queued payload is gone, and every request is a 401 ``invalid_api_key`` with only INFO access
lines, while ``/ready`` said "reachable". The store's marker (``StoreMarker``) tells it; ``MarkerWatch`` is one
process's view of it, read at start and by the periodic work (the ``/ready`` store check, the metrics sampler),
never per request: an ERROR when this process first sees the loss, an INFO line when the store is marked again
(a key created or imported: the operator acted). The marker comes with the store's first key, not with the first
process to open it: a process started after a loss, before a running one had noticed it, took the emptied store
for a new one and marked it, and the loss was told by nobody.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from loguru import logger

from shared.store.base import Store, StoreMarker
from shared.store.outage import RECOVERED, Voice


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lost_detail(m: StoreMarker) -> str:
    """``/ready``'s reason, for anyone who can reach it: no server, no namespace (the ERROR line names them)."""
    return (f"the key store lost its data (noticed {_utc(m.since)}): Redis restarted without persistence or was "
            "flushed, and every API key is gone; restore it from a backup or re-create the keys (creating or "
            "importing a key clears this)")


@dataclass(frozen=True)
class Said:
    """What a ``WORKERS`` > 1 start already said of the store's marker (``reach_store``, in the supervisor), handed
    to a worker so that it does not say it again: each worker said "a new, empty key store", and "lost its data"
    after the supervisor had, the same line three times in one start."""

    new: bool = False  # "a new, empty key store" is said (by the supervisor, or by another worker)
    lost_since: float | None = None  # the loss the supervisor told: silent here (``/ready`` still shows it)


class MarkerWatch:
    """This process's view of the store's marker: says each change once (never per check)."""

    def __init__(self, said: Said | None = None, voice: Voice | None = None) -> None:
        # an API fleet's workers each check the marker (every 5 s): a loss in the middle of a run was an ERROR from
        # every worker; the first tells it for all (``api.fleet``), each still answering /ready 503
        self.voice = voice or Voice()
        self.seen = False  # the marker was present at a check from here (its absence is then a loss)
        self.told_new = said is not None and said.new  # the "new, empty key store" WARNING was said (once)
        self.lost: StoreMarker | None = None  # the loss this process has told, until the store is marked again
        self._said_lost = said.lost_since if said is not None else None

    async def check(self, store: Store) -> str | None:
        """``/ready``'s reason while the store has lost its data, else None. Raises ``StoreUnavailable``."""
        m = await store.marker(seen=self.seen)
        if m is None:
            return None
        if m.status == "lost":
            self._tell_lost(m)
            return lost_detail(m)
        self.seen = m.status in ("present", "adopted")
        if self.lost is not None:
            logger.log(self.voice.level("INFO"), "{}STORE_URL: {} (namespace {}) is marked again (a key created or "
                       "imported, a backup restored): GET /ready's store check passes again", RECOVERED, m.where,
                       m.namespace)
            self.lost = None
        elif m.status == "new" and not self.told_new:
            self.told_new = True
            logger.warning("STORE_URL: {} holds nothing in namespace {}: a new, empty key store was started there. "
                           "If this deployment had API keys, Redis lost them before this start (restarted without "
                           "persistence, appendonly/save, or FLUSHALL): restore from backup or re-create keys",
                           m.where, m.namespace)
        elif m.status == "adopted":
            logger.info("STORE_URL: {} holds {} API key(s) in namespace {} and no store marker (made by an earlier "
                        "release): marked now, so a loss of its data is told from here on", m.where, m.keys,
                        m.namespace)
        return None

    def marked(self) -> None:
        """This process created or imported a key, which writes the marker in the same step: it has seen it. A
        Redis emptied before this process's next check (every 5 s) read as a new store, to it as to every other,
        and the loss right after an operator's first key was told by nobody."""
        self.seen = True

    @property
    def store_lost(self) -> bool:
        """The store is judged lost by this process (``sn1_api_store_lost``)."""
        return self.lost is not None

    def _tell_lost(self, m: StoreMarker) -> None:
        if self.lost is not None:
            return
        self.lost = m
        if m.since == self._said_lost:  # the supervisor's start said this one
            return
        logger.log(self.voice.level("ERROR"), "Redis at {} lost its data: restarted without persistence "
                   "(appendonly/save), or FLUSHALL; every API key is gone: restore from backup or re-create keys "
                   "(namespace {}: its store marker is gone, first seen {}). GET /ready answers 503 until a key is "
                   "created or imported (the admin endpoints work){}", m.where, m.namespace, _utc(m.since),
                   self.voice.note)
