"""Shared fixtures. ``localnet``: a real local subnet (child processes on free ports)."""

from __future__ import annotations

from collections.abc import Iterator
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
