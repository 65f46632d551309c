"""Real processes: ``sn1 localnet --fast --miner-profiles honest,honest,refuse,...``.

One local subnet (two honest miners, five fault miners, validator, API) serves
the module, in order: start-up with fault profiles, answers only from honest
miners, SIGKILL of the API under load (no acknowledged key, usage or outbox
payload lost), SIGKILL of the validator (scores and weights restored).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from neurons.localnet import LocalNet, LocalNetConfig
from shared.store.outbox import SQLiteOutbox
from tests.ports import free_ports, pool

PROFILES = ["honest", "honest", "refuse", "stall-headers", "http500", "disconnect", "bad-sse"]
HONEST_UIDS = {"1", "2"}
USAGE_FLUSH = 1.0  # UsageRecorder's flush interval: counts younger than this may die with a SIGKILL
# The API's scoring outbox lease: the API restarted after a SIGKILL delivers what waits once its dead self's lease
# has expired (10 s by default, most of the crash test's time).
OUTBOX_LEASE = "4"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNet]:
    directory: Path = tmp_path_factory.mktemp("faultnet")
    api_port, validator_port = free_ports(2)
    ln = LocalNet(LocalNetConfig(directory=directory, miners=len(PROFILES), api_port=api_port,
                                 validator_port=validator_port, miner_profiles=PROFILES, fast=True,
                                 admin_key="chaos-admin-key-0123456789",
                                 extra_env={"OUTBOX_LEASE_SECONDS": OUTBOX_LEASE}), ports=pool())
    try:
        ln.start(timeout=120)
        yield ln
    finally:
        ln.stop()


def request(url: str, *, data: Any = None, headers: dict[str, str] | None = None, method: str | None = None,
            timeout: float = 15) -> tuple[int, dict, str]:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json",
                                                                         **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def chat(info: dict, seed: int, *, stream: bool = False, timeout: float = 15,
         key: str | None = None, deadline: float = 5) -> tuple[int, dict, str]:
    """``deadline``: the request's own ``timeout``, which the stalling miner holds its race to."""
    return request(info["api_url"] + "/v1/chat/completions", timeout=timeout,
                   headers={"Authorization": f"Bearer {key or info['api_key']}"},
                   data={"model": "default", "seed": seed, "stream": stream, "timeout": deadline,
                         "messages": [{"role": "user", "content": "Hi"}]})


def usage_requests(info: dict, key: str) -> int:
    status, _, text = request(info["api_url"] + "/v1/usage", headers={"Authorization": f"Bearer {key}"})
    assert status == 200, text
    return json.loads(text)["totals"]["requests"]


def outbox_state(net: LocalNet) -> tuple[int, int]:
    async def read() -> tuple[int, int]:
        box = SQLiteOutbox(net.dir / "state" / "api.db")
        try:
            return await box.depth(), await box.dropped()
        finally:
            await box.close()

    return asyncio.run(read())


def sigkill(net: LocalNet, name: str) -> None:
    child = net.child(name)
    os.killpg(child.proc.pid, signal.SIGKILL)
    child.proc.wait(10)


def test_localnet_starts_with_fault_profiles_and_refuse_does_not_block_it(net: LocalNet) -> None:
    assert [m["profile"] for m in net.info["miners"]] == PROFILES
    assert not net.dead_children()


@pytest.mark.parametrize("stream", [False, True])
def test_every_request_is_answered_by_an_honest_miner(net: LocalNet, stream: bool) -> None:
    for seed in range(4):
        status, headers, text = chat(net.info, seed, stream=stream)
        assert status == 200, text
        assert headers["x-sn1-miner-uid"] in HONEST_UIDS, "only honest miners can produce a valid answer"
        if stream:
            assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text
        else:
            assert json.loads(text)["choices"][0]["message"]["content"]


def test_sigkill_api_under_load_loses_no_acknowledged_key_usage_or_outbox_payload(net: LocalNet) -> None:
    info = net.info
    # A key of its own with room for the whole load: six threads outrun localnet's 600/min key.
    status, _, text = request(f"{info['api_url']}/api_management/create-api-key?rate_limit=1000000&name=load",
                              headers={"admin-key": info["admin_key"]}, method="POST")
    assert status == 200, text
    load_key = json.loads(text)["api_key"]
    usage_before = usage_requests(info, load_key)
    stop = threading.Event()
    acked_chats: list[float] = []
    acked_keys: list[str] = []

    def chat_loop(worker: int) -> None:
        seed = worker * 100_000
        while not stop.is_set():
            seed += 1
            try:
                # A 2 s deadline: a race's payload is queued once its stalling miner is cut off at it.
                if chat(info, seed, stream=bool(seed % 2), timeout=10, key=load_key, deadline=2)[0] == 200:
                    acked_chats.append(time.monotonic())
            except OSError:
                return  # the API is gone

    def key_loop() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                status, _, text = request(f"{info['api_url']}/api_management/create-api-key?rate_limit=60&name=k{n}",
                                          headers={"admin-key": info["admin_key"]}, method="POST", timeout=10)
            except OSError:
                return
            if status == 200:
                acked_keys.append(json.loads(text)["api_key"])

    # The validator is frozen meanwhile, so scoring payloads wait in the outbox when the API dies.
    validator = net.child("validator").proc.pid
    os.killpg(validator, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(max_workers=7) as pool:
            futures = [pool.submit(chat_loop, w) for w in range(6)] + [pool.submit(key_loop)]
            # Killed under load, once more than 10 acknowledged chats are old enough that their usage must have
            # been flushed, keys were made, and payloads wait in the outbox (a race's payload is queued once its
            # slowest miner ends: every race waits on the stalling one to its deadline).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    sum(1 for t in acked_chats if t < time.monotonic() - USAGE_FLUSH - 0.5) > 10
                    and len(acked_keys) > 3 and outbox_state(net)[0] > 0):
                time.sleep(0.25)
            sigkill(net, "api")
            killed_at = time.monotonic()
            stop.set()
            for f in futures:
                f.result(timeout=30)
        assert len(acked_chats) > 10 and len(acked_keys) > 3, (len(acked_chats), len(acked_keys))
        depth_at_kill, dropped_at_kill = outbox_state(net)
        assert depth_at_kill > 0, "payloads must have been waiting in the outbox when the API died"
    finally:
        os.killpg(validator, signal.SIGCONT)

    net.restart("api")
    for key in acked_keys:  # every key the API acknowledged exists after the crash
        status, _, text = request(info["api_url"] + "/v1/usage", headers={"Authorization": f"Bearer {key}"})
        assert status == 200, f"acknowledged key lost: {text}"
    durable = sum(1 for t in acked_chats if t < killed_at - USAGE_FLUSH - 0.5)
    assert durable > 10 and usage_requests(info, load_key) - usage_before >= durable
    deadline = time.monotonic() + 30
    while outbox_state(net)[0] and time.monotonic() < deadline:
        time.sleep(0.25)
    depth, dropped = outbox_state(net)
    assert depth == 0, f"{depth_at_kill} payloads were in the outbox at the kill, {depth} still undelivered"
    assert dropped == dropped_at_kill == 0
    assert chat(info, 7)[0] == 200


def test_sigkill_validator_restores_scores_and_weights(net: LocalNet) -> None:
    scores_file = net.dir / "state" / "validator" / "scores.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data = json.loads(scores_file.read_text()) if scores_file.exists() else {}
        if data.get("weights") and data.get("last_weights_set_at"):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the validator never saved scores and weights")
    sigkill(net, "validator")
    saved = json.loads(scores_file.read_text())  # atomic writes: whole even after SIGKILL
    # Restart with scoring and weight setting paused, so what it reports can only come from the file.
    net.restart("validator", overrides={"SYNTHETIC_ENABLED": "false", "WEIGHTS_INTERVAL": "3600"})
    status, _, text = request(net.info["validator_url"] + "/scores")
    assert status == 200, text
    report = json.loads(text)
    assert report["last_weights_set_at"] == saved["last_weights_set_at"]
    by_uid = {str(m["uid"]): m for m in report["miners"]}
    for uid, weight in saved["weights"].items():
        assert by_uid[uid]["weight"] == pytest.approx(weight, abs=1e-6)
    for uid, entry in saved["miners"].items():
        assert by_uid[uid]["tasks"] == pytest.approx(entry["tasks"], abs=1e-6)
    honest = min(by_uid[u]["score"] for u in HONEST_UIDS if u in by_uid)
    faulty = [by_uid[u]["score"] for u in by_uid if u not in HONEST_UIDS]
    assert honest > 0 and all(s < honest for s in faulty), report
