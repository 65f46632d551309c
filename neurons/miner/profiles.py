"""Miner profiles: how a local-network miner behaves (``MINER_PROFILE``).

``honest`` is the reference behaviour. Quality profiles (for the validator's
scoring) wrap the backend; fault profiles (for the chaos suite) replace the
whole HTTP server with a misbehaving one. ``sn1 localnet --miner-profiles``
assigns one profile per miner.

Registries are filled by the modules that define profiles; ``all_profiles()``
lists every name the CLI accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from neurons.miner.backends.base import Backend

# name -> function(backend, settings) -> Backend   (behaviour at the answer level)
QUALITY_PROFILES: dict[str, Callable[[Backend, Any], Backend]] = {
    "honest": lambda backend, _settings: backend,
}

# names of profiles served by a fault-injecting server instead of the real miner app
FAULT_PROFILES: set[str] = set()


def all_profiles() -> list[str]:
    _load_registries()
    return sorted(set(QUALITY_PROFILES) | FAULT_PROFILES)


def _load_registries() -> None:
    """Import the modules that register profiles (kept lazy: no import-time I/O anywhere)."""
    import importlib

    for module in ("neurons.miner.quality", "neurons.miner.faults"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


def check_profile(name: str) -> None:
    """ValueError naming every profile, for a name that is none of them (checked at start, before the
    backend is built)."""
    if name not in all_profiles():
        raise ValueError(f"unknown profile {name!r}; the profiles are {', '.join(all_profiles())}")


def apply_quality_profile(name: str, backend: Backend, settings: Any) -> Backend:
    check_profile(name)
    if name not in QUALITY_PROFILES:
        raise ValueError(f"{name!r} is a fault profile, served by its own server (neurons/miner/faults.py)")
    return QUALITY_PROFILES[name](backend, settings)
