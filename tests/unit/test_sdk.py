"""``shared.sdk``: the SDK's ``http_auth`` without its ``__init__``, and the whole SDK as soon as anything else of it
is asked for (an encrypted hotkey's ``bt.Wallet``, a chain's ``bt.Client``): the same modules ``import bittensor``
gives, in a fresh process as a role starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = r'''
import sys
import shared.sdk
import bittensor as bt
assert "bittensor.evm" not in sys.modules and "bittensor.http_auth" in sys.modules
assert bt.http_auth is shared.sdk.http_auth
wallet = bt.Wallet  # the rest of the SDK, run now
assert "bittensor.evm" in sys.modules and bt.wallet is wallet and bt.http_auth is shared.sdk.http_auth
from bittensor import Client, SetWeights  # noqa: F401
try:
    bt.axon
except AttributeError as e:
    assert "removed in v11" in str(e), e  # the SDK's own __getattr__, not ours
print("ok")
'''


def test_the_rest_of_the_sdk_loads_at_the_first_name_asked_of_it() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr[-3000:]


def test_a_process_that_imported_the_sdk_first_keeps_it() -> None:
    code = "import bittensor, sys, shared.sdk; assert shared.sdk.http_auth is bittensor.http_auth; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr[-3000:]


THREADS = r'''
import threading
import shared.sdk
import bittensor as bt

names = ["Wallet", "Client", "Subtensor", "SetWeights", "Metagraph", "Balance"] * 2
start, got, failed = threading.Barrier(len(names)), {}, []


def ask(name):
    start.wait()
    try:
        got[name] = getattr(bt, name)
    except AttributeError as e:
        failed.append(f"{name}: {e}")


threads = [threading.Thread(target=ask, args=(n,)) for n in names]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("failed:", failed)
'''


def test_threads_asking_at_once_each_get_the_whole_sdk() -> None:
    """As an import in progress in one thread makes another wait, the SDK's ``__init__`` running in one thread
    makes the others wait for it: none of them is told a name is missing that it defines."""
    done = subprocess.run([sys.executable, "-c", THREADS], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "failed: []", (done.stdout, done.stderr[-3000:])
