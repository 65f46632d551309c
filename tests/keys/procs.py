"""Real API processes (``sn1 api``) on free ports for the fleet tests: one wallet, one metagraph, any store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from shared.metagraph import MetagraphSnapshot, Neuron, write_metagraph_file
from shared.wallet import ensure_wallet
from tests.helpers import hangup_as
from tests.ports import free_port, free_ports

ADMIN = "fleet-admin-key-0123456789"


@dataclass
class ApiProcess:
    url: str
    proc: subprocess.Popen
    log: Path

    def kill(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal the whole process group (the supervisor and its workers) and reap it."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def prepare(directory: Path, miners: dict[int, tuple[str, str]] | None = None) -> dict[str, str]:
    """A validator wallet and a metagraph with no miners (enough for keys, limits and usage), or with
    ``miners`` (uid -> (hotkey, "ip:port")) for APIs that race them."""
    wallets = directory / "wallets"
    hk = ensure_wallet("validator", "default", wallets)
    meta = directory / "metagraph.json"
    served = tuple(Neuron(uid=uid, hotkey=hotkey, axon=axon) for uid, (hotkey, axon) in sorted((miners or {}).items()))
    write_metagraph_file(meta, MetagraphSnapshot(netuid=1, block=1, neurons=(
        Neuron(uid=0, hotkey=hk.ss58_address, axon=None, stake=1.0, validator_permit=True), *served)))
    return {"WALLET_NAME": "validator", "WALLET_HOTKEY": "default", "WALLET_PATH": str(wallets),
            "METAGRAPH_FILE": str(meta), "NETUID": "1", "ADMIN_KEY": ADMIN, "API_HOST": "127.0.0.1",
            "VALIDATOR_API": f"http://127.0.0.1:{free_port()}", "LOG_LEVEL": "INFO"}


def start_api(directory: Path, env: dict[str, str], *, store_url: str, workers: int = 1,
              namespace: str = "sn1", name: str = "api") -> ApiProcess:
    (port,) = free_ports(1, avoid=(int(env["VALIDATOR_API"].rsplit(":", 1)[1]),))  # not the (dead) validator's
    env_file = directory / f"{name}-{port}.env"
    settings = env | {"API_PORT": str(port), "WORKERS": str(workers), "STORE_URL": store_url,
                      "STORE_NAMESPACE": namespace}
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    log = directory / f"{name}-{port}.log"
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "ADMIN_KEY", "STORE_", "WORKERS"))}
    # its temporary files (a WORKERS>1 supervisor's metrics directory) in the test's directory: one killed
    # outright left its own in /tmp for good
    (tmp := directory / "tmp").mkdir(exist_ok=True)
    clean_env["TMPDIR"] = str(tmp)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "api", "--env-file", str(env_file)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=clean_env,
                                start_new_session=True, preexec_fn=hangup_as())
    return ApiProcess(url=f"http://127.0.0.1:{port}", proc=proc, log=log)


def wait_ready(apis: list[ApiProcess], *, workers: int = 1, timeout: float = 60.0) -> None:
    """Wait until every API answers /health (and, with several workers, until all of them have started)."""
    deadline = time.monotonic() + timeout
    for api in apis:
        while True:
            if api.proc.poll() is not None:
                raise RuntimeError(f"api exited {api.proc.returncode}:\n{api.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(api.url + "/health", timeout=1) as r:
                    if r.status == 200 and api.log.read_text().count("serving on") >= workers:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"api not ready:\n{api.log.read_text()[-3000:]}")
            time.sleep(0.1)


def stop_on_redis(apis: list[ApiProcess], url: str, namespace: str) -> None:
    """Stop API processes that shared a Redis store, then drop their test namespace (tests never touch
    anything else in Redis)."""
    for api in apis:
        api.kill()
    import redis

    client = redis.Redis.from_url(url)
    for name in client.scan_iter(match=f"{namespace}:*"):
        client.delete(name)
    client.close()
