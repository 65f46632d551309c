"""Redis's persistence: ``appendonly`` and ``save``. A Redis that writes neither (a plain ``redis-server``, many a
container's) comes back empty from a restart, every API key gone; one with RDB snapshots alone (``save``, Redis's
default ``3600 1 300 100 60 10000``) comes back as its last snapshot, up to an hour old: the keys created since are
gone (their callers get 401s), and a key deleted or rotated since works again under its old secret. The store
marker tells the first after the fact and cannot see the second at all (the marker is in the snapshot). Read at
start, where the WARNING names the setting to change, never per request.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Persistence:
    """Redis's ``appendonly`` (``yes``/``no``) and ``save`` (its snapshot schedule; empty: none)."""

    appendonly: str
    save: str


def persistence_risk(p: Persistence) -> str | None:
    """What a restart of this Redis loses of the node's data, with what to set; None with ``appendonly yes``."""
    if p.appendonly == "yes":
        return None
    fix = ("set appendonly yes (CONFIG SET appendonly yes, and in redis.conf so it outlasts a restart), or restore "
           "the keys from a backup after each restart")
    if not p.save.strip():
        return ("keeps nothing on disk (appendonly no, no save): a restart of it loses every API key (each caller "
                f"then gets 401 invalid_api_key), usage count and stored response; {fix}")
    return (f"keeps only RDB snapshots (appendonly no, save {p.save}): a restart of it brings back its last "
            "snapshot, losing the API keys created since its last snapshot (their callers get 401 invalid_api_key) "
            f"and bringing back keys deleted or rotated since; {fix}")
