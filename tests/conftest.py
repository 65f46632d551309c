"""Shared fixtures. ``localnet``: a real local subnet (child processes on free ports); ``wall_step``: this
process's wall clock stepped as NTP steps it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from neurons.localnet import LocalNet, LocalNetConfig, free_ports


@pytest.fixture(scope="session")
def localnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A whole local subnet (3 deterministic miners, validator, API) shared by the session's tests."""
    directory: Path = tmp_path_factory.mktemp("localnet")
    api_port, validator_port = free_ports(2)
    net = LocalNet(LocalNetConfig(directory=directory, miners=3, api_port=api_port,
                                  validator_port=validator_port, admin_key="test-admin-key-0123456789"))
    try:
        info = net.start(timeout=120)
        info["dir"] = str(directory)
        yield info
    finally:
        net.stop()


@pytest.fixture
def wall_step(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Step this process's wall clock (``time.time``, ``time.time_ns``) by some seconds, either way, as NTP
    steps a host's: the monotonic clocks (``time.monotonic``, the event loop's) run on untouched. The
    machine's clock is shared with other test runs, so it is simulated here, never set."""
    offset = [0.0]
    real, real_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + int(offset[0] * 1e9))

    def step(seconds: float) -> None:
        offset[0] += seconds

    return step
