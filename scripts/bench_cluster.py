"""Everything the benchmark runs on 127.0.0.1, started once and always stopped.

The fake upstream, two bare pass-through proxies, and a real local subnet from
``neurons.localnet`` (wallets, metagraph file, 10 miners with ``--backend
openai`` in front of the fake upstream). The measured API is started from the
local network's own env file, with ``VALIDATOR_API`` pointing at a second
instance of the fake upstream, in its own process, whose ``/scoring`` accepts at
once (the real validator is stopped once the
network is up: its scoring work would compete for the same two cores and
its synthetic traffic would hit the miners mid-measurement). ``WORKERS=2`` is
a second API over the same store. Child output goes to ``<out>/run/logs``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from neurons.localnet import LocalNet, LocalNetConfig, free_port, free_ports
from shared.keys_wire import MAX_CONCURRENT
from shared.process import die_with_parent

SCRIPTS = Path(__file__).resolve().parent
BENCH_RATE_LIMIT = 1_000_000  # requests per minute: never throttles the bench
# nor its requests in flight (1,000 open streams), while each still takes its slot: the cost a limited key pays


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {url}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (for the 'how the cores were shared' line)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cluster:
    def __init__(self, directory: Path, *, miners: int = 10, log_level: str = "INFO") -> None:
        self.dir = directory
        self.miners = miners
        self.log_level = log_level
        self.procs: list[subprocess.Popen] = []
        self.net: LocalNet | None = None
        self.urls: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.api_key = ""

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        with open(self.dir / "logs" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                    preexec_fn=die_with_parent())
        self.procs.append(proc)
        self.pids[name] = proc.pid
        return proc

    def start(self) -> None:
        for logs in (self.dir / "logs", self.dir / "net" / "logs"):  # this run's logs only (wallets are kept)
            shutil.rmtree(logs, ignore_errors=True)
        up_port, p1, p2, val_port, api_port, validator_port = free_ports(6)
        upstream = self._spawn("upstream", [str(SCRIPTS / "bench_upstream.py"), "--port", str(up_port)])
        self.urls["upstream"] = self.urls["direct"] = f"http://127.0.0.1:{up_port}"
        wait_http(self.urls["upstream"] + "/health", upstream)
        validator = self._spawn("fake_validator", [str(SCRIPTS / "bench_upstream.py"), "--port", str(val_port)])
        self.urls["validator"] = f"http://127.0.0.1:{val_port}"
        wait_http(self.urls["validator"] + "/health", validator)
        hop2 = self._spawn("bare2", [str(SCRIPTS / "bench_passthrough.py"), "--port", str(p2),
                                     "--target", self.urls["upstream"]])
        hop1 = self._spawn("bare1", [str(SCRIPTS / "bench_passthrough.py"), "--port", str(p1),
                                     "--target", f"http://127.0.0.1:{p2}"])
        wait_http(f"http://127.0.0.1:{p2}/health", hop2)
        wait_http(f"http://127.0.0.1:{p1}/health", hop1)
        self.urls["bare"] = f"http://127.0.0.1:{p1}"
        self.urls["bare2"] = f"http://127.0.0.1:{p2}"
        self.admin_key = secrets.token_urlsafe(24)
        self.net = LocalNet(LocalNetConfig(
            directory=self.dir / "net", miners=self.miners, api_port=api_port, validator_port=validator_port,
            admin_key=self.admin_key, backend="openai", upstream=self.urls["upstream"] + "/v1",
            log_level=self.log_level))
        info = self.net.start(timeout=120)
        for child in self.net.children:
            self.pids[child.name] = child.proc.pid
        self.api_key = self.create_key(info["api_url"])
        for child in self.net.children:
            if child.name in ("validator", "api"):
                child.proc.terminate()
                child.proc.wait(timeout=15)
        self.start_api(1)

    def create_key(self, api_url: str) -> str:
        req = urllib.request.Request(
            f"{api_url}/api_management/create-api-key/?rate_limit={BENCH_RATE_LIMIT}&name=bench"
            f"&max_concurrent_requests={MAX_CONCURRENT}",
            method="POST", headers={"admin-key": self.admin_key})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["api_key"]

    def start_api(self, workers: int) -> str:
        """An API from the local network's env file and store, with ``WORKERS=workers``.

        Named ``sn1`` (pid ``api``) for one worker, ``sn1_workers2`` for two.
        """
        assert self.net is not None
        port = free_port()
        name = "sn1" if workers == 1 else f"sn1_workers{workers}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "MINER_", "ADMIN_KEY", "WORKERS"))}
        env |= {"API_PORT": str(port), "WORKERS": str(workers), "VALIDATOR_API": self.urls["validator"]}
        proc = self._spawn("api" if workers == 1 else name,
                           ["-m", "shared.cli", "api", "--env-file", str(self.net.dir / "api.env")], env)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", proc, timeout=90)
        self.urls[name] = url
        return url

    def stop(self) -> None:
        if self.net is not None:
            self.net.stop()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
