"""A conversation's last stored turn, as its record names it (the conversation store's ``last``).

A turn of a ``conversation`` is stored as a part after the conversation's last
stored response (``responses_state.last_turn``). Finding that response and
checking that the conversation still begins with exactly its conversation and
output read that response's whole chain each turn: about as much again as the
conversation read itself. So a stored turn names itself on the conversation
record as its items are added: its response id, how many items its conversation
and output are, and a digest of their stored forms. The next turn checks the
digest against the conversation's first items (read anyway) and continues that
response without reading it.

The digest is what makes a name written by any worker safe to trust: an item
deleted or changed before it, a turn withdrawn, two turns racing, or a worker of
an earlier release adding turns or deleting items without touching the name all
change the items it covers, and a name that does not match (or none, on a record
written before 2026-12-07) is passed over for the lookup by item ids, as before.
A name whose response is gone (deleted, expired, or never stored) is found so
when the part is written: the store refuses it (``PreviousGone``), and the turn
is stored whole.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

START = ""  # the digest of no items
# What a background turn writes as its conversation's last stored turn: none. Its items are added just before it is
# settled, and a cancel may come first (its record then never holds its output): named, a turn reading the
# conversation meanwhile could continue it. Unnamed, the next turn looks it up (``responses_state.last_turn``), and
# finds it once it is settled; the name before it is taken away, or a run of background turns would each continue it
# (keeping all the turns since: N² / 2 again).
UNNAMED = ""


def step(digest: str, encoded: str) -> str:
    """The digest of items, from that of all but the last (``digest``) and the last's stored form: a turn's name
    extends its history's digest by its own items, without going over the conversation again."""
    return hashlib.sha256(f"{digest}\n{encoded}".encode()).hexdigest()


def folded(digest: str, encoded: Iterable[str]) -> str:
    """``digest`` extended by each of ``encoded`` in turn."""
    for one in encoded:
        digest = step(digest, one)
    return digest


def listed_size(encoded: Sequence[str]) -> int:
    """``responses.list_size`` of items, from their stored forms (``encode_item``'s, the same JSON text): ``[``,
    ``]`` and a comma between each two."""
    return 2 + sum(len(one.encode()) for one in encoded) + max(len(encoded) - 1, 0)


@dataclass(frozen=True)
class LastStored:
    """The stored response of a conversation's last stored turn, and the first ``count`` items of the conversation
    (its conversation and its output) whose digest is ``digest``."""

    response_id: str
    count: int
    digest: str

    def text(self) -> str:
        """Its form on the conversation record."""
        return json.dumps({"id": self.response_id, "count": self.count, "digest": self.digest},
                          separators=(",", ":"))

    @classmethod
    def read(cls, text: str | None) -> LastStored | None:
        """From its form on the record; None for none, or one this release cannot read (a later one's: the lookup
        is used then, as for none)."""
        try:
            data = json.loads(text) if text else None
            if not isinstance(data, dict):
                return None
            found = cls(data["id"], data["count"], data["digest"])
        except (ValueError, KeyError, TypeError):
            return None
        ok = isinstance(found.response_id, str) and isinstance(found.count, int) and isinstance(found.digest, str)
        return found if ok and found.count > 0 else None


def digests(encoded: Sequence[str], at: int) -> tuple[str | None, str]:
    """The digest of the first ``at`` items (their stored forms; None when there are fewer) and of them all, in one
    pass."""
    digest, first = START, None
    for n, one in enumerate(encoded):
        if n == at:
            first = digest
        digest = step(digest, one)
    return (digest if at == len(encoded) else first), digest
