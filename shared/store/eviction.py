"""Redis's ``maxmemory-policy``: one that can evict drops keys this node needs, without an error to anyone.

Under ``allkeys-*`` a Redis at its ``maxmemory`` deletes any key to make room: an API key (its caller gets a 401
``invalid_api_key``), the store marker (a false "lost its data" alarm, and ``/ready`` 503 on every host), queued
scoring payloads (never scored). Under ``volatile-*`` it deletes keys that carry a TTL: a key's rate-limit
window (the key gets past its limit), stored responses and conversations before their retention, the scoring
outbox's delivery lease (two forwarders send the same payloads). Under ``noeviction`` a full Redis refuses
writes instead: requests get a 503 and ``/ready`` says why, and nothing is lost. Read at start and by ``/ready``,
never per request.
"""

from __future__ import annotations

UNKNOWN = "unknown"  # CONFIG refused (a managed Redis may disable or rename it)

ANY_KEY = ("API keys (their callers get 401), the store marker (a false 'lost its data' alarm) and queued "
           "scoring payloads")
TTL_KEYS = ("keys with a TTL: rate-limit windows (a key gets past its limit), stored responses and "
            "conversations before their retention, the scoring outbox's delivery lease")


def eviction_risk(policy: str) -> str | None:
    """What ``policy`` may drop of this node's keys when Redis is full; None for ``noeviction`` or unknown."""
    if policy.startswith("allkeys-"):
        return f"any key: {ANY_KEY}, and {TTL_KEYS}"
    if policy.startswith("volatile-"):
        return TTL_KEYS
    return None


def eviction_detail(policy: str) -> str:
    """One line for ``/ready`` and the start's WARNING: the policy, what it may drop, what to set instead."""
    risk = eviction_risk(policy)
    if risk is None:
        if policy == UNKNOWN:
            return "maxmemory-policy unknown (this Redis refuses CONFIG GET): make sure it is noeviction"
        return f"maxmemory-policy {policy}"
    return (f"Redis's maxmemory-policy is {policy}: when full it silently evicts {risk}; set "
            "maxmemory-policy noeviction (a full Redis then refuses writes, told as a 503, and loses nothing)")
