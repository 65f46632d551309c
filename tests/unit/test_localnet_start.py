"""Local-network start-up: distinct ports for every child, and a start that fails fast and says why.

Found by ``make bench``: two of its ten miners were given the same port by successive
``free_port()`` calls. One died with "Address already in use", the other answered its health
check, and the start waited two minutes for the validator to see ten miners up.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from neurons.localnet import Child, free_ports, wait_available
from tests.helpers import serve_app
from tests.ports import free_port


def test_free_ports_are_distinct_and_avoid_the_ports_named() -> None:
    # 300 ports one at a time from ~14,000 collide about 3 times on average; held together, never.
    ports = free_ports(300)
    assert len(set(ports)) == 300
    again = free_ports(300, avoid=ports)
    assert not set(again) & set(ports)


def exited_child(tmp_path: Path) -> Child:
    log = tmp_path / "miner7.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "print('OSError: Address already in use'); raise SystemExit(1)"],
                                stdout=out, stderr=subprocess.STDOUT)
    proc.wait(timeout=30)
    return Child("miner7", proc, "", log)


def test_a_child_that_exits_ends_the_availability_wait_at_once(tmp_path: Path) -> None:
    child = exited_child(tmp_path)
    silent = free_port()  # no validator there: only the dead child can end the wait early
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="miner7 exited with code 1") as caught:
        wait_available(f"http://127.0.0.1:{silent}", 1, timeout=60, children=[child])
    assert time.monotonic() - started < 5
    assert "Address already in use" in str(caught.value)  # the end of its log


async def test_the_timeout_names_the_miners_the_validator_does_not_see(tmp_path: Path) -> None:
    app = web.Application()

    async def availability(_request: web.Request) -> web.Response:
        return web.json_response({"1": {"task_availabilities": {}, "llm_model_availabilities": {}}, "2": None})

    app.router.add_post("/miner_availabilities/miner_availabilities", availability)
    async with serve_app(app) as url:
        with pytest.raises(RuntimeError) as caught:
            await asyncio.to_thread(wait_available, url, 2, timeout=0.5, logs=tmp_path / "logs")
    assert str(caught.value) == (f"timed out waiting for the validator to see 2 miners up; not up: uid 2 "
                                 f"(logs in {tmp_path / 'logs'})")


def test_a_log_past_its_bound_is_started_afresh_keeping_the_last_one(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The local network's logs are appended across runs: under load for days they grew by some 200 MB per
    million requests, for good. Past LOG_KEEP_BYTES at a start the log moves to ``.1`` (one kept)."""
    from neurons import localnet

    monkeypatch.setattr(localnet, "LOG_KEEP_BYTES", 100)
    big, small = tmp_path / "api.log", tmp_path / "miner1.log"
    big.write_bytes(b"x" * 101)
    small.write_bytes(b"y" * 100)
    (tmp_path / "api.log.1").write_bytes(b"older")
    for path in (big, small, tmp_path / "never.log"):
        localnet.rotated(path)
    assert not big.exists() and (tmp_path / "api.log.1").read_bytes() == b"x" * 101
    assert small.read_bytes() == b"y" * 100


KILLED_MID_SET = """
import asyncio, os, signal, sys
from neurons.validator.weights import LedgerWeightSink
replace, renames = os.replace, [int(sys.argv[3])]
def killed_at_a_rename(src, dst):  # killed between a temp file's write and its rename, at the rename asked for
    if renames[0] == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    renames[0] -= 1
    replace(src, dst)
os.replace = killed_at_a_rename
asyncio.run(LedgerWeightSink(sys.argv[1], sys.argv[2], validator_hotkey="v").set_weights([1], [1.0]))
"""


def test_temp_files_left_by_a_validator_killed_mid_set_are_removed_at_the_next_start(tmp_path: Path) -> None:
    """The local network's validator killed while its ledger set weights (after the stop's 10 s, by the kernel when
    ``sn1 localnet`` was killed outright, or by an OOM) left ``.metagraph.json.XXXXXXXX`` or ``.weights.json.XXXXXXXX``
    in ``--dir``, each kill one more under its own name, never removed. The next start removes them (it holds the
    folder's lock, before any process of its own runs)."""
    from neurons.localnet import LocalNet, LocalNetConfig

    net = LocalNet(LocalNetConfig(directory=tmp_path, miners=1, miner_ports=[free_port()]))
    net.prepare()
    for rename in (0, 1, 0):  # the metagraph's rename, the ledger's, the metagraph's
        run = subprocess.run([sys.executable, "-c", KILLED_MID_SET, str(tmp_path / "weights.json"),
                              str(net.metagraph_path), str(rename)],
                             cwd=Path(__file__).resolve().parents[2], capture_output=True, timeout=60)
        assert run.returncode == -9, run.stderr[-2000:]
    left = sorted(p.name.rsplit(".", 1)[0] for p in tmp_path.glob(".*.json.*"))
    assert left == [".metagraph.json", ".metagraph.json", ".weights.json"], left
    net.prepare()
    assert not list(tmp_path.glob(".*.json.*")), "removed at the start"
    assert json.loads(net.metagraph_path.read_text())["block"] == 1


def test_a_health_poll_that_reads_no_http_keeps_waiting(tmp_path: Path) -> None:
    """A poll of a port with nothing bound yet, in the ephemeral range, can connect to itself (TCP's simultaneous
    open) and read its own request back: ``BadStatusLine: GET /health HTTP/1.1`` ended the whole start (a flaky
    ``test_localnet_cli``). Such an answer is a child not up yet, as a refused connection is."""
    import socket
    import threading

    from neurons.localnet import LocalNet, LocalNetConfig

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for answer in (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",  # its own request, as a self-connected poll reads
                       b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"):
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        net = LocalNet(LocalNetConfig(directory=tmp_path))
        net.wait_healthy([Child("miner1", alive, f"http://127.0.0.1:{port}/health", tmp_path / "m.log")], timeout=20)
    finally:
        alive.kill()
        alive.wait()
        listener.close()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the second poll, answered 200, ended the wait"
