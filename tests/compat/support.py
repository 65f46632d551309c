"""Shared by the compat tests: availability as the validator would report it; the README's client
examples and the environment they run in."""

from __future__ import annotations

import os
import re
from pathlib import Path

from api.availability import AvailabilityCache
from tests.helpers import ApiUnderTest

MODEL = "sn1/deterministic"
README = Path(__file__).resolve().parents[2] / "README.md"
CLIENTS_START, CLIENTS_END = "<!-- clients:start", "<!-- clients:end -->"


def clients_section() -> str:
    """The README's "Clients" section, whose examples the tests run as written."""
    text = README.read_text()
    return text[text.index(CLIENTS_START):text.index(CLIENTS_END)]


def example_env(localnet: dict) -> dict[str, str]:
    """The environment the README's client examples expect: the local subnet's address and keys."""
    return {**os.environ, "SN1_API": localnet["api_url"], "SN1_BASE_URL": localnet["api_url"] + "/v1",
            "SN1_API_KEY": localnet["api_key"], "SN1_ADMIN_KEY": localnet["admin_key"]}


def serves(models: list[str], tasks: list[str]) -> dict:
    return {"llm_model_availabilities": {m: True for m in models} | {"off/model": False},
            "task_availabilities": {t: True for t in tasks}}


def fresh_cache(api: ApiUnderTest, entries: dict[int, dict | None]) -> AvailabilityCache:
    """A fresh availability cache (no validator needed: the tests run without background refresh)."""
    cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", "validator-hotkey")
    cache.accept(entries)
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
