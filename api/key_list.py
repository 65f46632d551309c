"""Which keys ``GET /api_management/api-keys`` answers: those matching its filters, in the order they were made,
one page of them.

The store lists every key (one read on either backend); the usage totals each listed key carries cost a store read
per key, so they are read for the page alone: an operator with thousands of keys pages through them, or asks for
those of one ``name``, without reading every key's usage each time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import invalid_value
from shared.keys_wire import KeyListQuery
from shared.store.base import KeyRecord

KEY_ID = re.compile(r"[0-9a-f]{16}")  # a key's public id (a secret never matches it)


@dataclass(frozen=True)
class KeyPage:
    records: list[KeyRecord]
    has_more: bool


def select_keys(records: list[KeyRecord], query: KeyListQuery, now: float) -> KeyPage:
    """The page ``query`` asks for. ``after`` is placed among every key, not only those matching (a key whose
    name changed since the last page still marks where that page ended); one no key has is a 400: the key was
    deleted since, and where the page ended cannot be told."""
    ordered = sorted(records, key=lambda r: (r.created_at, r.id), reverse=query.order == "desc")
    if query.after is not None:
        ids = [r.id for r in ordered]
        if query.after not in ids:
            shown = f"'{query.after}'" if KEY_ID.fullmatch(query.after) else "given"  # never echo a secret
            raise invalid_value("after", f"no key has the id {shown} (deleted since that page was read?): "
                                         "list again without after")
        ordered = ordered[ids.index(query.after) + 1:]
    matching = [r for r in ordered if _matches(r, query, now)]
    if query.limit is None:
        return KeyPage(matching, False)
    return KeyPage(matching[:query.limit], len(matching) > query.limit)


def _matches(record: KeyRecord, query: KeyListQuery, now: float) -> bool:
    if query.name is not None and record.name != query.name:
        return False
    if query.scope is not None and query.scope not in record.scopes:
        return False
    return query.status is None or (query.status == "expired") == record.expired(now)
