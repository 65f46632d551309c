"""A miner validators never call (its hotkey not registered, no axon published, or published at another port)
said nothing of it: it logged ``serving on ...`` and then nothing at all. It says so now, at start and when it
changes, and ``/health`` lists it. A real ``sn1 miner`` on 127.0.0.1 over a metagraph file rewritten under it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from neurons.miner.standing import standing_problems
from shared.metagraph import MetagraphSnapshot, Neuron, write_metagraph_file
from shared.settings import SETTING_NAMES
from shared.signing import Signer
from shared.wallet import ensure_wallet
from tests.helpers import keypair, snapshot
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR, STRANGER = keypair("//Validator"), keypair("//Stranger")


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        return json.loads(r.read())


def wait_for(check, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got = check()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("not within the time")


def refused_as_stranger(url: str, hotkey: str) -> str:
    """The message of the 403 a request signed by a hotkey without a permit gets."""
    body = b"{}"
    request = urllib.request.Request(url + "/availability", data=body, method="POST",
                                     headers=Signer(STRANGER).headers("POST", "/availability", body, hotkey))
    try:
        urllib.request.urlopen(request, timeout=5).close()
    except urllib.error.HTTPError as e:
        assert e.code == 403
        return json.loads(e.read())["error"]["message"]
    raise AssertionError("a stranger's request was taken")


def test_a_miner_says_when_validators_cannot_call_it_and_when_they_can_again(tmp_path: Path) -> None:
    hotkey = ensure_wallet("miner", "default", tmp_path / "wallets").ss58_address
    port = free_port()
    graph = tmp_path / "mg.json"
    write_metagraph_file(graph, snapshot(VALIDATOR.ss58_address, {}))  # the miner's hotkey not in it
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTING_NAMES} | {
        "PYTHONPATH": str(ROOT), "WALLET_PATH": str(tmp_path / "wallets"), "WALLET_NAME": "miner",
        "METAGRAPH_FILE": str(graph), "METAGRAPH_REFRESH_SECONDS": "0.2", "MINER_HOST": "127.0.0.1",
        "MINER_PORT": str(port)}
    log = tmp_path / "miner.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "miner"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        first = wait_for(lambda: health(url))
        assert first["status"] == "ok" and first["problems"] == [
            f"hotkey {hotkey} is not registered on netuid 1: no validator calls this miner (register it: btcli "
            "subnets register --netuid 1, with this miner's wallet and hotkey; or check NETUID and SUBTENSOR_NETWORK)"]
        assert f"WARNING | miner | metagraph: {first['problems'][0]}" in log.read_text()

        write_metagraph_file(graph, snapshot(VALIDATOR.ss58_address, {1: (hotkey, f"127.0.0.1:{port}")}))
        wait_for(lambda: health(url)["problems"] == [])
        wait_for(lambda: f"metagraph: this miner is now uid 1 on netuid 1, axon 127.0.0.1:{port}" in log.read_text())
        time.sleep(0.5)  # refreshes that change nothing say nothing
        assert refused_as_stranger(url, hotkey) == (
            f"hotkey {STRANGER.ss58_address} holds no validator permit in this miner's metagraph (netuid 1) and is "
            "not in its ALLOWED_HOTKEYS")  # "here": an operator with the wrong NETUID could not tell
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert text.count("metagraph: ") == 2, text  # one line when it went wrong, one when it was right again
    assert "Traceback" not in text


def _own(axon: str | None) -> MetagraphSnapshot:
    return MetagraphSnapshot(netuid=7, block=1, neurons=(Neuron(uid=0, hotkey=VALIDATOR.ss58_address,
                                                                validator_permit=True),
                                                         Neuron(uid=3, hotkey="5Miner", axon=axon)))


@pytest.mark.parametrize(("axon", "expected"), [
    (None, "uid 3 publishes no axon on netuid 7: no validator calls this miner (publish it: btcli tx serve-axon "
           "--netuid 7 --ip <public IP> --port 8091, with this miner's wallet and hotkey)"),
    ("203.0.113.5:8092", "uid 3's axon is published at 203.0.113.5:8092, but this miner listens on port 8091 "
                         "(MINER_PORT): validators call port 8092 (publish port 8091 with btcli tx serve-axon, or "
                         "forward port 8092 to it)"),
    ("203.0.113.5:8091", None),
    ("[2001:db8::1]:8091", None),
], ids=["no-axon", "other-port", "right", "ipv6"])
def test_what_the_metagraph_says_of_the_miners_axon(axon: str | None, expected: str | None) -> None:
    """Only the port is checked: the published address may be one this host does not know it has (a NAT)."""
    assert standing_problems(_own(axon), "5Miner", 8091) == ([expected] if expected else [])


@pytest.mark.parametrize(("axon", "public_only", "private"), [
    ("10.0.0.7:8091", True, True), ("[::ffff:127.0.0.1]:8091", True, True), ("1.1.1.1:8091", True, False),
    ("10.0.0.7:8091", False, False)], ids=["private", "mapped-loopback", "public", "private-chain"])
def test_an_axon_at_a_private_address_is_said_when_validators_skip_it(axon: str, public_only: bool,
                                                                      private: bool) -> None:
    """Validators and APIs call no axon at a private address read from the chain (``PRIVATE_AXONS`` off): a miner
    that published one (its LAN address, ``btcli tx serve-axon --ip 10.0.0.7``) said nothing and was never called."""
    problems = standing_problems(_own(axon), "5Miner", 8091, public_only=public_only)
    assert problems == ([f"uid 3's axon is published at {axon}, a private address: validators and APIs call only "
                         "public ones (publish this host's public IP with btcli tx serve-axon --netuid 7; "
                         "PRIVATE_AXONS=true on every node of a chain whose nodes share a private network)"]
                        if private else [])


async def test_health_says_when_the_model_server_serves_no_model() -> None:
    """``/health`` said ``ok`` with ``"models": []`` when the model server was down at start: a monitor reading
    ``status`` alone saw a healthy miner that answered nothing."""
    import aiohttp

    from neurons.miner.app import create_miner_app
    from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
    from shared.signing import Authorizer, RequestVerifier
    from tests.helpers import serve_app

    port = free_port()
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{port}/v1")  # nothing listens there
    await backend.start()
    verifier = RequestVerifier(keypair("//Miner1").ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
    async with serve_app(create_miner_app(backend, verifier)) as url:
        async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
            body = await r.json()
    assert r.status == 200 and body["status"] == "ok" and body["models"] == []
    # why, as the start's WARNING says it (it was "the model server lists none, or has not answered yet")
    assert [p.rpartition(", since ")[0] for p in body["problems"]] == [f"could not list upstream models at http://127.0.0.1:{port}/v1: cannot connect to the "
                                f"model server at 127.0.0.1:{port} (Connection refused): is it running, and "
                                "UPSTREAM_URL right?; no model is served until its model list is read (asked every 5s)"]
