"""Organic scoring delivery end to end, with real processes: ``sn1 api``, ``sn1 validator`` and two honest
miners (``sn1 localnet``'s), the API's outbox in its SQLite file, the validator's scores read from its log
(``scored organic InferenceTask rid=...``, a line per payload scored).

What an operator notices is whether every organic answer is scored once, whatever stood between the API and
the validator for a while: here, a front end that is not the validator, and a thin link (``TcpProxy.slow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from neurons.localnet import LocalNet, LocalNetConfig
from shared.store.outbox import SQLiteOutbox
from tests.chaos.own_redis import own_redis_server
from tests.chaos.tcp_proxy import TcpProxy
from tests.chaos.test_localnet_faults import chat, request
from tests.ports import free_ports, pool

ROUNDS = 5


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNet]:
    """Two honest miners, both raced each time (``DEFAULT_K=2``: scored), no synthetic work (every line
    scored is organic), a short outbox lease (a restarted API delivers at once)."""
    api_port, validator_port = free_ports(2)
    ln = LocalNet(LocalNetConfig(directory=tmp_path_factory.mktemp("delivery"), miners=2, api_port=api_port,
                                 validator_port=validator_port, admin_key="delivery-admin-key-0123456789",
                                 extra_env={"SYNTHETIC_ENABLED": "false", "DEFAULT_K": "2",
                                            "OUTBOX_LEASE_SECONDS": "2"}), ports=pool())
    try:
        ln.start(timeout=120)
        yield ln
    finally:
        ln.stop()


def scored(net: LocalNet) -> Counter[str]:
    """How many times the validator scored each request id (its log, across its restarts)."""
    text = (net.dir / "logs" / "validator.log").read_text(errors="replace")
    return Counter(re.findall(r"scored organic \S+ rid=(\S+):", text))


def outbox_depth(net: LocalNet) -> int:
    async def read() -> int:
        box = SQLiteOutbox(net.dir / "state" / "api.db")
        try:
            return await box.depth()
        finally:
            await box.close()

    return asyncio.run(read())


def restart_api(net: LocalNet, **overrides: str) -> None:
    """SIGTERM, then ``sn1 api`` again from its env file with ``overrides`` (until its ``/health`` answers)."""
    child = net.child("api")
    child.proc.send_signal(signal.SIGTERM)
    child.proc.wait(20)
    net.restart("api", overrides=overrides)


def answered(net: LocalNet, seeds: range) -> list[str]:
    """The request ids of chats answered with a 200."""
    rids = []
    for seed in seeds:
        status, headers, text = chat(net.info, seed)
        assert status == 200, text
        rids.append(headers["x-request-id"])
    return rids


def wait_scored(net: LocalNet, rids: list[str], timeout: float = 30) -> Counter[str]:
    deadline = time.monotonic() + timeout
    while not all(scored(net)[r] for r in rids) and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(1.0)  # a second scoring of any of them would show by now
    return scored(net)


class PlainHttpToTlsPort(BaseHTTPRequestHandler):
    """What nginx answers a plain-HTTP request on its TLS port: a 400 page, whatever was asked."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        page = b"<html><head><title>400 The plain HTTP request was sent to HTTPS port</title></head></html>"
        self.send_response(400)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def tls_port_spoken_to_in_http() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_ports(1)[0]), PlainHttpToTlsPort)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_400_that_is_not_the_validators_keeps_the_payloads_and_says_so_once(net: LocalNet) -> None:
    """``VALIDATOR_API`` written http:// for a validator behind a TLS front end: every post is its 400 page. It was
    taken for the validator's verdict that the payloads are malformed: each was dropped (a WARNING each), and none
    of the answers served meanwhile was ever scored. Now they are kept, one WARNING names the setting, and once
    ``VALIDATOR_API`` is right again each is scored once."""
    validator_url = net.info["validator_url"]
    with tls_port_spoken_to_in_http() as front:
        log_start = (net.dir / "logs" / "api.log").stat().st_size
        restart_api(net, VALIDATOR_API=front)
        rids = answered(net, range(100, 100 + ROUNDS))
        deadline = time.monotonic() + 10
        while "VALIDATOR_API" not in (net.dir / "logs" / "api.log").read_text()[log_start:] \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # a few delivery passes more
        depth = outbox_depth(net)
        api_log = (net.dir / "logs" / "api.log").read_text()[log_start:]
    assert depth == ROUNDS, f"{ROUNDS} payloads kept, found {depth}:\n{api_log[-3000:]}"
    assert "as malformed" not in api_log
    told = [line for line in api_log.splitlines() if "not in the validator's words" in line]
    assert len(told) == 1 and f"VALIDATOR_API {front}" in told[0] and "HTTP 400" in told[0], told

    restart_api(net, VALIDATOR_API=validator_url)
    counts = wait_scored(net, rids)
    assert {r: counts[r] for r in rids} == dict.fromkeys(rids, 1), "each answer scored once"
    assert outbox_depth(net) == 0


@contextlib.contextmanager
def proxy_to(port: int) -> Iterator[TcpProxy]:
    """A ``TcpProxy`` to ``127.0.0.1:port``, run by an event loop of its own in a thread (the test is not async)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = TcpProxy("127.0.0.1", port)
    asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(5)
    try:
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.cut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_a_large_payload_on_a_thin_link_is_delivered_and_does_not_hold_the_others(net: LocalNet) -> None:
    """A long prompt makes a payload of half a MB; the link to the validator carries 100 kB a second. A post had the
    lease's half (1 s here, 5 s by default) whatever its size: that payload timed out every time, and every
    payload behind it waited for good (the validator up, its /health answering). Now a post has the time its
    body takes at 64 KiB/s, the lease renewed meanwhile: each answer is scored once. (A payload of a MB proved
    the same in twice the time: 10 s on the link.)"""
    validator_url = net.info["validator_url"]
    with proxy_to(int(validator_url.rsplit(":", 1)[1])) as link:
        restart_api(net, VALIDATOR_API=f"http://127.0.0.1:{link.port}")
        link.slow(100_000)
        status, headers, text = request(net.info["api_url"] + "/v1/chat/completions", timeout=60,
                                        headers={"Authorization": f"Bearer {net.info['api_key']}"},
                                        data={"model": "default", "seed": 1,
                                              "messages": [{"role": "user", "content": "word " * 100_000}]})
        assert status == 200, text
        rids = [headers["x-request-id"], *answered(net, range(200, 200 + ROUNDS))]
        counts = wait_scored(net, rids, timeout=60)
        assert {r: counts[r] for r in rids} == dict.fromkeys(rids, 1), "each answer scored once, the large one too"
        assert outbox_depth(net) == 0
    restart_api(net, VALIDATOR_API=validator_url)


PROMPT = 100_000  # characters of prompt: a payload of about 100 kB (a long document asked about, as RAG sends)
ROUNDS_OF_OUTAGE = 200  # chats while the validator is down


def outage_traffic(ln: LocalNet, rounds: int) -> tuple[Counter[int | str], list[str]]:
    """The validator killed, ``rounds`` chats with long prompts: their statuses and the request ids answered."""
    info = ln.start(timeout=120)
    validator = ln.child("validator")
    os.killpg(validator.proc.pid, signal.SIGKILL)
    validator.proc.wait(10)
    statuses: Counter[int | str] = Counter()
    rids = []
    for seed in range(rounds):
        status, headers, _ = request(info["api_url"] + "/v1/chat/completions", timeout=30,
                                     headers={"Authorization": f"Bearer {info['api_key']}"},
                                     data={"model": "default", "seed": seed,
                                           "messages": [{"role": "user", "content": f"w{seed} " * (PROMPT // 4)}]})
        statuses[status] += 1
        if status == 200:
            rids.append(headers["x-request-id"])
    time.sleep(0.5)  # the last payloads' commit
    statuses[f"ready {request(info['api_url'] + '/ready')[0]}"] += 1
    return statuses, rids


async def test_a_long_validator_outage_is_bounded_in_bytes_and_the_api_keeps_serving(tmp_path: Path) -> None:
    """On Redis, the outbox was bounded by count alone (10,000): payloads of long prompts filled Redis's memory
    during a validator outage, and under ``noeviction`` it then refused the API's every write, every request a
    503 ``store_unavailable``. Past ``OUTBOX_MAX_BYTES`` the oldest payloads are dropped now, counted, told in
    one WARNING (not one per commit); the API serves throughout, and what was kept is scored once the
    validator is back. 200 requests of 100 kB (20 MB) against a bound of 2 MiB, on a Redis of 10 MB: unbounded, they
    fill it (400 against 4 MiB and 20 MB took twice as long to prove the same). Its deliveries back off 2 s at most
    (``OUTBOX_RETRY_MAX_SECONDS``): grown to 60 s in the outage, the backoff held the scoring up to a minute after."""
    async with own_redis_server(tmp_path) as server:
        await server.client.config_set("maxmemory", "10mb")
        await server.client.config_set("maxmemory-policy", "noeviction")
        api_port, validator_port = free_ports(2)
        ln = LocalNet(LocalNetConfig(directory=tmp_path / "net", miners=2, api_port=api_port,
                                     validator_port=validator_port, admin_key="bounded-admin-key-0123456789",
                                     store_url=server.url,
                                     extra_env={"SYNTHETIC_ENABLED": "false", "DEFAULT_K": "2",
                                                "OUTBOX_LEASE_SECONDS": "2", "OUTBOX_MAX_BYTES": str(2 << 20),
                                                "OUTBOX_RETRY_MAX_SECONDS": "2"}),
                      ports=pool())
        try:
            statuses, rids = await asyncio.to_thread(outage_traffic, ln, ROUNDS_OF_OUTAGE)
            assert statuses == {200: ROUNDS_OF_OUTAGE, "ready 200": 1}, f"the API served through the outage: {statuses}"
            for _ in range(100):  # the last payloads: stored within moments of their answers
                held = int(await server.client.get("sn1:outbox:bytes") or 0)
                depth = await server.client.xlen("sn1:outbox")
                dropped = int(await server.client.get("sn1:outbox:dropped") or 0)
                if depth + dropped == ROUNDS_OF_OUTAGE:
                    break
                await asyncio.sleep(0.05)
            assert held <= 2 << 20 and depth + dropped == ROUNDS_OF_OUTAGE and 15 < depth < 23, (held, depth, dropped)
            api_log = (ln.dir / "logs" / "api.log").read_text()
            full = [line for line in api_log.splitlines() if "scoring outbox full" in line]
            assert len(full) == 1 and "the oldest payloads are dropped" in full[0], full[:3]
            await asyncio.to_thread(ln.restart, "validator")
            # within 20 s: delivery backs off 2 s at most (OUTBOX_RETRY_MAX_SECONDS), not up to 60 s (the default)
            counts = await asyncio.to_thread(wait_scored, ln, rids[-depth:], 20)
            assert {r: counts[r] for r in rids[-depth:]} == dict.fromkeys(rids[-depth:], 1), "the kept: each once"
            assert not any(counts[r] for r in rids[:-depth]), "the dropped are not scored"
        finally:
            await asyncio.to_thread(ln.stop)
