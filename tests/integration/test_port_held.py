"""A port no server listens on, held only by this host's own connections (a test suite's, closing in TIME_WAIT for
60 s; an outgoing connection the kernel gave it as its local port): ``make run`` right after the test suite
refused it ("the API port ... is in use"), and the API's own bind failed with "Address already in use", though
the same start a minute later worked. A port a server listens on is still refused at once, naming the setting."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from neurons.localnet import LocalNet, LocalNetConfig, port_is_free
from shared.listen import bound_socket
from shared.settings import SettingsError
from tests.keys.procs import ApiProcess, prepare, wait_ready
from tests.ports import free_port


@contextlib.contextmanager
def outgoing_connection() -> Iterator[tuple[int, socket.socket, socket.socket]]:
    """An open connection from a port of this host (its local port), and its two ends: the accepted end closed
    first, then the client's, free the port at once (no TIME_WAIT on the client's side)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.socket()
        client.bind(("127.0.0.1", 0))
        client.connect(server.getsockname())
        accepted, _ = server.accept()
        try:
            yield client.getsockname()[1], client, accepted
        finally:
            accepted.close()
            client.close()


def closing_connection_on() -> int:
    """A port left in TIME_WAIT by a connection this host opened from it and closed first (as a client does): a
    server's SO_REUSEADDR bind does not pass it for 60 s."""
    with outgoing_connection() as (port, client, _accepted):
        client.close()  # the client first: its side, the port, waits in TIME_WAIT
        time.sleep(0.1)
    return port


def test_the_localnet_takes_a_port_in_time_wait_and_refuses_one_a_server_listens_on(tmp_path: Path) -> None:
    port = closing_connection_on()
    assert not port_is_free(port), "the kernel lets no server bind it yet"
    net = LocalNet(LocalNetConfig(directory=tmp_path, miners=1, api_port=port, validator_port=free_port()))
    net.check_ports()  # was RuntimeError: the API port ... is in use
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        net = LocalNet(LocalNetConfig(directory=tmp_path, miners=1, api_port=free_port(),
                                      validator_port=busy.getsockname()[1]))
        with pytest.raises(RuntimeError, match=f"the validator port {busy.getsockname()[1]} is in use on 127.0.0.1 "
                                               ".* pick another with --validator-port"):
            net.check_ports()


def test_a_port_a_server_listens_on_stops_the_start_at_once_naming_the_setting() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SettingsError, match=f"^API_HOST/API_PORT: cannot listen on 127.0.0.1:{port}: "
                                                "Address already in use$"):
            bound_socket("127.0.0.1", port, settings="API_HOST/API_PORT")
        assert time.monotonic() - started < 3, "no wait for a server's port"


def test_a_port_held_past_the_wait_is_one_line_saying_no_server_listens_there() -> None:
    with outgoing_connection() as (port, _client, _accepted), pytest.raises(SettingsError) as caught:
        bound_socket("127.0.0.1", port, settings="API_HOST/API_PORT", wait_s=1.0)
    assert str(caught.value) == (f"API_HOST/API_PORT: cannot listen on 127.0.0.1:{port}: Address already in use "
                                 "(no server listens there: connections of this host still hold it after 1 s)")


def test_the_api_waits_for_a_port_held_by_a_connection_of_this_host_then_serves(tmp_path: Path) -> None:
    """A real ``sn1 api`` whose port an outgoing connection of this host holds (as the test suite's did): it says
    so once, waits, and serves as soon as the connection is gone, where it stopped with "Address already in use"."""
    env = prepare(tmp_path)
    with outgoing_connection() as (port, client, accepted):
        settings = env | {"API_PORT": str(port), "STORE_URL": f"sqlite:///{tmp_path / 'api.db'}"}
        (env_file := tmp_path / "api.env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        log = tmp_path / "api.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "WORKERS", "STORE_"))}
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "api", "--env-file", str(env_file)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=clean,
                                    start_new_session=True)
        api = ApiProcess(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
        try:
            deadline = time.monotonic() + 60
            while "is held by connections of this host" not in log.read_text():
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
            accepted.close()  # the peer first: the port is free at once
            client.close()
            wait_ready([api])
            said = [line for line in log.read_text().splitlines() if "held by connections" in line]
            assert len(said) == 1 and f"API_HOST/API_PORT: 127.0.0.1:{port} is held" in said[0], said
        finally:
            api.kill()
