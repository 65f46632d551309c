"""Shared by the compat tests: availability as the validator would report it."""

from __future__ import annotations

import re
import time

from api.availability import AvailabilityCache
from tests.helpers import ApiUnderTest

MODEL = "sn1/deterministic"


def serves(models: list[str], tasks: list[str]) -> dict:
    return {"llm_model_availabilities": {m: True for m in models} | {"off/model": False},
            "task_availabilities": {t: True for t in tasks}}


def fresh_cache(api: ApiUnderTest, entries: dict[int, dict | None]) -> AvailabilityCache:
    """A fresh availability cache (no validator needed: the tests run without background refresh)."""
    cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", "validator-hotkey")
    cache.entries, cache.updated_at = entries, time.time()
    return cache


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
