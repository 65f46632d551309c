"""The test suite's ports (``tests/ports.py``, a ``shared.ports.PortPool`` per process): a port the kernel
picked (``bind(0)``), closed and handed to a child that bound it a second later, was now and then taken in
between by another xdist worker's ``bind(0)`` or an outgoing connection, and the test failed with "Address
already in use". Pool ports are below the kernel's ephemeral range, each worker's its own, each handed out
once before any comes round again, and a port in use is skipped."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from neurons.localnet import LocalNet, LocalNetConfig
from shared.ports import PortPool, below_ephemeral, port_is_free
from tests.ports import free_port, free_ports, pool, pool_for

RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def worker(name: str, count: int = 2) -> PortPool:
    return pool_for({"PYTEST_XDIST_WORKER": name, "PYTEST_XDIST_WORKER_COUNT": str(count)})


@pytest.mark.skipif(not RANGE_FILE.exists(), reason="Linux's ephemeral range file")
def test_two_workers_hand_out_distinct_ports_below_the_ephemeral_range_none_twice() -> None:
    lowest_ephemeral = int(RANGE_FILE.read_text().split()[0])
    gw0, gw1 = worker("gw0"), worker("gw1")
    first = [gw0.port() for _ in range(300)] + gw0.take(300)
    second = gw1.take(300) + [gw1.port() for _ in range(300)]
    assert max(first + second) < lowest_ephemeral  # nobody's bind(0) nor outgoing connection takes them
    assert len(set(first)) == len(first) and len(set(second)) == len(second), "none handed out twice"
    assert not set(first) & set(second), "the workers' ports never meet"
    assert this_process_pool_is_this_workers()


def this_process_pool_is_this_workers() -> bool:
    """``free_port()`` takes from the slice of the worker this test runs in (the whole range without xdist)."""
    port, own = free_port(), pool().ports
    return port in own and set(free_ports(3)) <= set(own) and own.start >= below_ephemeral().start


def test_a_port_in_use_is_skipped_and_ports_come_round_again_only_after_all_others() -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert not port_is_free(port)
        lone = PortPool(range(port, port + 1))
        with pytest.raises(RuntimeError, match=f"1 ports wanted, 0 free in {port}-{port}"):
            lone.take()
        wider = PortPool(range(port, port + 40))
        assert wider.port() > port, "the server's port was skipped"
    assert lone.take() == [port], "free again once its server is gone"
    ring = PortPool(range(port, port + 3))
    assert ring.take(3) == [port, port + 1, port + 2] and ring.port() == port
    assert ring.take(1, avoid=(port + 1,)) == [port + 2]


def test_slices_of_the_test_ports_named_in_the_environment() -> None:
    env = {"TEST_PORTS": "20000-20999", "PYTEST_XDIST_WORKER_COUNT": "3"}
    slices = [pool_for(env | {"PYTEST_XDIST_WORKER": f"gw{i}"}).ports for i in range(3)]
    assert slices == [range(20000, 20333), range(20333, 20666), range(20666, 20999)]
    assert pool_for({"TEST_PORTS": "20000-20999"}).ports == range(20000, 21000), "one process: the whole range"


def test_a_localnets_miners_take_their_ports_from_the_pool_handed_in(tmp_path: Path) -> None:
    api_port, validator_port = free_ports(2)
    net = LocalNet(LocalNetConfig(directory=tmp_path, miners=2, api_port=api_port, validator_port=validator_port),
                   ports=pool())
    net.prepare()
    assert all(spec["port"] in pool().ports for spec in net.miner_specs)
    assert len({spec["port"] for spec in net.miner_specs}) == 2

