"""What a started API process has loaded: the SDK's request signing (``bittensor.http_auth``), not the rest of the
SDK, and no JSON Schema validator until a strict schema comes.

``from bittensor import http_auth`` ran the SDK's ``__init__``, which imports its chain client, the EVM and
Ethereum packages, QR codes and imaging (~500 modules): 24 MB of every API worker's memory that no request used,
and the bench's 1,000 open streams reached 150 MB of their 150 MB target. jsonschema (~3 MB) serves callers who
send a strict schema alone (``api.strict_schema``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.keys.procs import prepare
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]

# Loaded by the SDK's __init__ (its chain client, intents, EVM and Ethereum packages, QR codes, imaging) or by the
# strict-schema check: none of them answers a request that has no strict schema.
NOT_SERVING = ("bittensor.evm", "bittensor.intents", "bittensor.client", "bittensor._subtensor", "eth_abi",
               "eth_account", "qrcode", "PIL", "jsonschema", "regex")

# `sn1 api` in this process; once it answers /health and one chat completion (its auth, rate limit and signing
# run), the modules it holds are printed and it is stopped as Ctrl-C stops it.
STARTED = r'''
import json, os, signal, sys, threading, time, urllib.error, urllib.request

import shared.cli

URL, ADMIN = sys.argv[2], sys.argv[3]


def call(path, body=None, headers=None):
    request = urllib.request.Request(URL + path, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def probe():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if call("/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    status, made = call("/api_management/create-api-key/?rate_limit=100&name=t", b"", {"admin-key": ADMIN})
    key = json.loads(made)["api_key"]
    asked = call("/v1/chat/completions", json.dumps({"model": "default", "stream": True,
                                                     "messages": [{"role": "user", "content": "hi"}]}).encode(),
                 {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    print(json.dumps({"created": status, "asked": asked[0], "modules": sorted(sys.modules)}), flush=True)
    os.kill(os.getpid(), signal.SIGINT)


threading.Thread(target=probe, daemon=True).start()
shared.cli.main(["api", "--env-file", sys.argv[1]])
'''


def test_a_started_api_loads_the_sdk_signing_alone_and_no_schema_validator(tmp_path: Path) -> None:
    port = free_port()
    settings = prepare(tmp_path) | {"API_PORT": str(port), "WORKERS": "1",
                                    "STORE_URL": f"sqlite:///{tmp_path / 'api.db'}"}
    env_file = tmp_path / "api.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    script = tmp_path / "started.py"
    script.write_text(STARTED)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "ADMIN_KEY", "STORE_", "WORKERS"))}
    done = subprocess.run([sys.executable, str(script), str(env_file), f"http://127.0.0.1:{port}",
                           settings["ADMIN_KEY"]], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=clean | {"PYTHONPATH": str(ROOT)})
    said = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert said, (done.stdout[-2000:], done.stderr[-3000:])
    seen = json.loads(said[-1])
    assert seen["created"] == 200 and seen["asked"] == 503, seen | {"stderr": done.stderr[-2000:]}  # no miner serves
    modules = set(seen["modules"])
    assert "bittensor.http_auth" in modules  # it signs with the SDK's own btauth/1
    loaded = sorted(m for m in modules if m in NOT_SERVING or m.split(".")[0] in NOT_SERVING)
    assert not loaded, loaded
