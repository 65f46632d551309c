"""``sn1 localnet``: a whole subnet on 127.0.0.1 with no chain and no GPU.

Real sr25519 wallets in ``--dir``, a metagraph file, N miners, one validator and
one API as child processes; it waits until all answer ``/health``, creates (or
reuses) an API key, prints the endpoints and writes ``<dir>/localnet.json``.
Ctrl-C or SIGTERM stops every child cleanly. ``LocalNet`` is also what the
integration tests start.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from neurons.localnet_checks import StartCancelled, check_store, lock_directory
from shared.listen import server_listens
from shared.ports import PortPool, port_is_free
from shared.process import die_with_parent, stop_signals
from shared.settings import SETTING_NAMES

# SETTING_NAMES: every name a setting is read from; the children's environment must not carry one (``_spawn``).

VALIDATOR_WALLET = "validator"


LOG_KEEP_BYTES = 64 << 20  # a process's log past this at start is moved to ``<name>.log.1`` (one kept)


def rotated(log_path: Path) -> None:
    """Start a log afresh when it has grown past ``LOG_KEEP_BYTES``, keeping the last one as ``.1``: the logs
    are appended across runs (the end of the last run's is what a failed start shows), and a network run
    for days under load grew them by hundreds of MB per million requests, for good."""
    try:
        if log_path.stat().st_size > LOG_KEEP_BYTES:
            log_path.replace(log_path.with_name(log_path.name + ".1"))
    except FileNotFoundError:
        pass


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int, *, avoid: Collection[int] = ()) -> list[int]:
    """``n`` distinct ports that are free on 127.0.0.1 now, none of them in ``avoid``: the kernel's choice,
    from its ephemeral range (the test suite takes its own from a ``shared.ports.PortPool``: ``tests/ports.py``).

    Every socket is held until all are chosen: ``free_port()`` called twice can return the same
    port (the kernel may hand a just-closed port out again), and the second child given it dies
    with "Address already in use" while the first answers its health checks for it.
    """
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        # At most len(avoid) ports are skipped: a held port is never handed out twice.
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in avoid:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def first_model(base_url: str) -> str | None:
    """The first chat model an OpenAI-compatible server lists (``GET /models``), or None if it lists none:
    the model the miners answer ``default`` with (``OpenAICompatibleBackend``), so the reference is the
    same. Ollama's list of nothing (``"data": null``) was a TypeError; its embedding model, listed
    first, became the reference that no chat request can be asked of."""
    from neurons.miner.backends.openai_compatible import NOT_CHAT, listed_models

    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=5) as r:
            models = listed_models(json.loads(r.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return next((m for m in models if not NOT_CHAT.search(m)), None)


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The environment a child process gets: the caller's, without any setting. The env file is the
    child's whole configuration, and a setting exported in the caller's shell (an operator's
    WALLET_NAME after the real-chain steps, say) would override it, as the environment overrides env
    files: every miner loaded the validator's wallet."""
    return {k: v for k, v in parent.items() if k.upper() not in SETTING_NAMES}


@dataclass
class LocalNetConfig:
    directory: Path
    miners: int = 3
    api_port: int = 42170
    validator_port: int = 8094
    admin_key: str | None = None
    backend: str = "deterministic"
    upstream: str | None = None
    model: str = "sn1/deterministic"
    log_level: str = "INFO"
    miner_profiles: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    fast: bool = False
    dataset: str | None = None
    corpus: str | None = None
    store_url: str | None = None  # the API's STORE_URL (None: a SQLite file in the folder)
    # Miners registered in the metagraph but run by someone else ("HOTKEY@HOST:PORT", ``external_miner``): a
    # third party's own miner on the local network, after the built-in ones' uids. Never started nor waited for.
    external_miners: list[str] = field(default_factory=list)
    miner_ports: list[int] = field(default_factory=list)  # the first miners' ports (``--miner-port``), in uid order


def check_miner_ports(config: LocalNetConfig) -> None:
    """``--miner-port``s a start could not keep: refused before anything starts (ValueError, the CLI's line)."""
    if len(config.miner_ports) > config.miners:
        raise ValueError("--miner-port is given more times than --miners")
    named = [*config.miner_ports, config.api_port, config.validator_port]
    if len(set(named)) < len(named):
        raise ValueError(f"--miner-port {config.miner_ports}: each miner needs a port of its own, not the API's "
                         "nor the validator's")


# What polling a child that is not up yet may raise: nothing listening (URLError, OSError), or an answer that is no
# HTTP (http.client's BadStatusLine): a poll of a port in the ephemeral range with nothing bound yet can connect to
# itself (TCP's simultaneous open) and read back its own request, ``GET /health HTTP/1.1``, which ended the start.
NOT_UP_YET = (urllib.error.URLError, OSError, http.client.HTTPException)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    health_url: str
    log_path: Path
    log_start: int = 0  # the log's size when this child started: what comes after is this run's

    def log_tail(self, size: int = 3000) -> str:
        """The end of what this child wrote (earlier runs' lines in the same file are not its story)."""
        with self.log_path.open("rb") as f:
            f.seek(max(self.log_start, self.log_path.stat().st_size - size))
            return f.read().decode(errors="replace")


class LocalNet:
    def __init__(self, config: LocalNetConfig, *, ports: PortPool | None = None) -> None:
        """``ports``: where the miners' ports come from. None (``sn1 localnet``): ports the kernel picks now
        (``free_ports``), as distinct from another ``sn1 localnet``'s as the kernel's choice is; a test suite
        that starts several networks at once hands in its process's own ``PortPool``, so that no outgoing
        connection nor another worker's ``bind(0)`` takes a miner's port before the miner binds it."""
        if config.miners < 1:
            raise ValueError("--miners must be at least 1")
        if config.backend == "openai" and not config.upstream:
            raise ValueError("--backend openai needs --upstream URL")
        if len(config.miner_profiles) > config.miners:
            raise ValueError("--miner-profiles lists more profiles than --miners")
        from neurons.miner.profiles import all_profiles

        check_miner_ports(config)
        unknown = set(config.miner_profiles) - set(all_profiles())
        if unknown:
            raise ValueError(f"unknown miner profile(s) {sorted(unknown)}; known: {', '.join(all_profiles())}")
        self.cfg = config
        self.ports = ports
        self.dir = config.directory.resolve()
        self.children: list[Child] = []
        self.info: dict[str, Any] = {}
        self.lock: IO[str] | None = None  # ``<dir>/localnet.lock``, held from start to stop

    # --- set-up -----------------------------------------------------------------
    @property
    def wallet_path(self) -> Path:
        return self.dir / "wallets"

    @property
    def ledger_path(self) -> Path:
        """The validator's weights ledger (``WEIGHTS_LEDGER_FILE``)."""
        return self.dir / "weights.json"

    def _admin_key(self) -> str:
        if self.cfg.admin_key:
            return self.cfg.admin_key
        path = self.dir / "admin_key"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    def _previous(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / "localnet.json").read_text())
        except (OSError, ValueError):
            return {}

    def prepare(self) -> None:
        from shared.metagraph import MetagraphSnapshot, Neuron, remove_temp_files, write_metagraph_file
        from shared.wallet import coldkey_address, ensure_wallet

        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        validator = ensure_wallet(VALIDATOR_WALLET, "default", self.wallet_path)
        neurons = [Neuron(uid=0, hotkey=validator.ss58_address,
                          coldkey=coldkey_address(VALIDATOR_WALLET, self.wallet_path),
                          axon=None, stake=10_000.0, incentive=0.0, validator_permit=True)]
        self.miner_specs = []
        external = [spec.split("@", 1) for spec in self.cfg.external_miners]
        share = 1.0 / (self.cfg.miners + len(external))
        taken = {int(address.rpartition(":")[2]) for _, address in external}
        named = self.cfg.miner_ports
        avoid = (self.cfg.api_port, self.cfg.validator_port, *taken, *named)
        pick = self.ports.take if self.ports else free_ports
        ports = [*named, *pick(self.cfg.miners - len(named), avoid=avoid)]
        for i, port in enumerate(ports, start=1):
            name = f"miner{i}"
            hk = ensure_wallet(name, "default", self.wallet_path)
            neurons.append(Neuron(uid=i, hotkey=hk.ss58_address, coldkey=coldkey_address(name, self.wallet_path),
                                  axon=f"127.0.0.1:{port}", stake=0.0, incentive=share))
            profile = self.cfg.miner_profiles[i - 1] if i <= len(self.cfg.miner_profiles) else "honest"
            self.miner_specs.append({"uid": i, "hotkey": hk.ss58_address, "port": port, "wallet": name,
                                     "profile": profile})
        self.external_specs = []
        for uid, (hotkey, address) in enumerate(external, start=self.cfg.miners + 1):
            neurons.append(Neuron(uid=uid, hotkey=hotkey, axon=address, stake=0.0, incentive=share))
            self.external_specs.append({"uid": uid, "hotkey": hotkey, "url": f"http://{address}",
                                        "backend": "external", "profile": "-"})
        self.corpus_path = Path(self.cfg.corpus).resolve() if self.cfg.corpus else self.dir / "corpus.jsonl"
        if not self.cfg.corpus:  # the network's web as a file: a miner of one's own can search what is checked
            from shared.corpus import builtin_corpus

            self.corpus_path.write_text("".join(json.dumps({"url": d.url, "title": d.title, "content": d.content}) + "\n"
                                                for d in builtin_corpus().documents))
        self.validator_hotkey = validator.ss58_address
        self.metagraph_path = self.dir / "metagraph.json"
        # what a validator killed in a ledger write left (each kill one more file): none of our processes runs yet
        for written in (self.metagraph_path, self.ledger_path):
            remove_temp_files(written)
        write_metagraph_file(self.metagraph_path, MetagraphSnapshot(netuid=1, block=1, neurons=tuple(neurons)))

    def _common_env(self, wallet: str) -> dict[str, str]:
        return {
            "WALLET_NAME": wallet,
            "WALLET_HOTKEY": "default",
            "WALLET_PATH": str(self.wallet_path),
            "NETUID": "1",
            "METAGRAPH_FILE": str(self.metagraph_path),
            "METAGRAPH_REFRESH_SECONDS": "5",
            "LOG_LEVEL": self.cfg.log_level,
        } | ({"CORPUS_FILE": str(Path(self.cfg.corpus).resolve())} if self.cfg.corpus else {})

    def api_env(self, validator_url: str, admin_key: str) -> dict[str, str]:
        """The API's settings: its store is ``--store`` (Redis, say, to try a fleet's store), else a SQLite
        file in the network's folder."""
        return self._common_env(VALIDATOR_WALLET) | {
            "API_HOST": "127.0.0.1",
            "API_PORT": str(self.cfg.api_port),
            "VALIDATOR_API": validator_url,
            "ADMIN_KEY": admin_key,
            "STORE_URL": self.cfg.store_url or f"sqlite:///{self.dir / 'state' / 'api.db'}",
            "AVAILABILITY_REFRESH_SECONDS": "5",
        }

    def _validator_extra_env(self, *, progress: bool = False) -> dict[str, str]:
        from neurons.validator.presets import FAST_ENV

        env = dict(FAST_ENV) if self.cfg.fast else {}
        if self.cfg.dataset:
            env["DATASET_FILE"] = str(Path(self.cfg.dataset).resolve())
        if self.cfg.backend == "openai" and self.cfg.upstream:
            # The miners answer with this model: judged against the deterministic model instead, every
            # honest answer would score 0. The reference is then the same server (similarity rewards).
            env["REFERENCE_LLM_URL"] = self.cfg.upstream
            model = first_model(self.cfg.upstream)
            if model:
                env["REFERENCE_LLM_MODEL"] = model
            elif progress:
                say(f"  warning: {self.cfg.upstream.rstrip('/')}/models lists no model (is the model server up?): "
                    "the miners will fail every request until it answers")
        return env

    def _write_env(self, name: str, env: dict[str, str]) -> Path:
        path = self.dir / f"{name}.env"
        path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        path.chmod(0o600)
        return path

    def _spawn(self, name: str, role: str, env: dict[str, str], health_url: str) -> None:
        env_file = self._write_env(name, env | self.cfg.extra_env)
        log_path = self.dir / "logs" / f"{name}.log"
        rotated(log_path)
        log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        log_start = log.tell()
        child_env = child_environment(os.environ)
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", role, "--env-file", str(env_file)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env,
            start_new_session=True, preexec_fn=die_with_parent(),
        )
        log.close()
        self.children.append(Child(name, proc, health_url, log_path, log_start))

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def restart(self, name: str, *, overrides: dict[str, str] | None = None, timeout: float = 60.0) -> Child:
        """Start ``name`` again from its env file (after it crashed or was killed); wait for /health."""
        old = self.child(name)
        if old.proc.poll() is None:
            raise RuntimeError(f"{name} is still running")
        self.children.remove(old)
        lines = (self.dir / f"{name}.env").read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines if "=" in line)
        self._spawn(name, "miner" if name.startswith("miner") else name, env | (overrides or {}), old.health_url)
        self.wait_healthy(self.children[-1:], timeout=timeout)
        return self.children[-1]

    # --- lifecycle ----------------------------------------------------------------
    def check_ports(self) -> None:
        """Another server on the API's or the validator's port would answer our health checks as if it were ours
        (a second localnet's API took the new admin key as wrong: "HTTP Error 401"): refused before spawning. A
        port no server listens on, held by this host's connections (a test suite's, closing), is not: the child
        waits for it (``bound_socket``), where this refused it right after a test suite."""
        for name, port in (("API", self.cfg.api_port), ("validator", self.cfg.validator_port)):
            if not port_is_free(port) and server_listens("127.0.0.1", port):
                raise RuntimeError(f"the {name} port {port} is in use on 127.0.0.1 (another sn1 localnet?): "
                                   f"stop it, or pick another with --{name.lower()}-port")

    def start(self, *, timeout: float = 90.0, progress: bool = False,
              cancelled: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Start the network and wait until it serves. ``cancelled``: asked while waiting; once true, the start
        ends with ``StartCancelled`` (Ctrl-C was taken only once the start had finished, up to minutes later,
        and the network then said "Local subnet is up ... Press Ctrl-C to stop" to someone who had)."""
        self.check_ports()
        check_store(self.cfg.store_url)
        self.lock = self.lock or lock_directory(self.dir)  # after the checks: a refused start leaves no folder
        self.prepare()
        admin_key = self._admin_key()
        validator_env = self._validator_extra_env(progress=progress)
        for spec in self.miner_specs:
            # A ``refuse`` miner never listens, so there is no /health to wait for.
            health = "" if spec["profile"] == "refuse" else f"http://127.0.0.1:{spec['port']}/health"
            self._spawn(f"miner{spec['uid']}", "miner", self._miner_env(spec, validator_env), health)
        validator_url = f"http://127.0.0.1:{self.cfg.validator_port}"
        self._spawn("validator", "validator", self._common_env(VALIDATOR_WALLET) | {
            "SCORING_API_HOST": "127.0.0.1",
            "SCORING_API_PORT": str(self.cfg.validator_port),
            "STATE_DIR": str(self.dir / "state" / "validator"),
            "WEIGHTS_LEDGER_FILE": str(self.ledger_path),
            "AVAILABILITY_INTERVAL": "5",
        } | validator_env, f"{validator_url}/health")
        self.wait_healthy([c for c in self.children], timeout=timeout, progress=progress, cancelled=cancelled)
        # The API trusts the validator's availability: do not start it before the validator has
        # seen the miners up, or the first requests fail with 503 "no miner available".
        listening = sum(1 for s in self.miner_specs if s["profile"] != "refuse")
        wait_available(validator_url, listening, timeout=timeout, children=self.children, logs=self.dir / "logs",
                       cancelled=cancelled)
        api_url = f"http://127.0.0.1:{self.cfg.api_port}"
        self._spawn("api", "api", self.api_env(validator_url, admin_key), f"{api_url}/health")
        self.wait_healthy(self.children[-1:], timeout=timeout, progress=progress, cancelled=cancelled)
        self.info = self._info(api_url, validator_url, admin_key, self._api_key(api_url, admin_key))
        path = self.dir / "localnet.json"
        path.write_text(json.dumps(self.info, indent=2))
        path.chmod(0o600)
        return self.info

    def _miner_env(self, spec: dict[str, Any], validator_env: dict[str, str]) -> dict[str, str]:
        """A miner's settings: its wallet, port, backend, model and profile (``validator_env``: the validator's own,
        whose deadline the slow profile answers by)."""
        env = self._common_env(spec["wallet"]) | {
            "MINER_HOST": "127.0.0.1",
            "MINER_PORT": str(spec["port"]),
            "MINER_BACKEND": self.cfg.backend,
            "MINER_MODEL": self.cfg.model,
            "MINER_PROFILE": spec["profile"],
        }
        if "SYNTHETIC_TIMEOUT" in validator_env:  # the slow profile answers at 80 % of the tasks' deadline
            env["SLOW_PROFILE_DEADLINE"] = validator_env["SYNTHETIC_TIMEOUT"]
        if self.cfg.upstream:
            env["UPSTREAM_URL"] = self.cfg.upstream
        return env

    def _info(self, api_url: str, validator_url: str, admin_key: str, api_key: str) -> dict[str, Any]:
        """What ``localnet.json`` tells a script of the network that is up: its URLs, keys, wallet and miners."""
        return {
            "api_url": api_url,
            "validator_url": validator_url,
            "admin_key": admin_key,
            "api_key": api_key,
            "validator_hotkey": self.validator_hotkey,
            "wallet_path": str(self.wallet_path),
            "metagraph_file": str(self.metagraph_path),
            "corpus_file": str(self.corpus_path),
            "miners": [
                {"uid": s["uid"], "hotkey": s["hotkey"], "url": f"http://127.0.0.1:{s['port']}",
                 "backend": self.cfg.backend, "profile": s["profile"]}
                for s in self.miner_specs
            ] + self.external_specs,
        }

    def _api_key(self, api_url: str, admin_key: str) -> str:
        previous = self._previous().get("api_key")
        if previous and _key_works(api_url, previous):
            return previous
        req = urllib.request.Request(f"{api_url}/api_management/create-api-key/?rate_limit=600&name=localnet",
                                     method="POST", headers={"admin-key": admin_key})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["api_key"]

    def wait_healthy(self, children: list[Child], *, timeout: float, progress: bool = False,
                     cancelled: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + timeout
        pending = [c for c in children if c.health_url]
        while pending:
            raise_if_cancelled(cancelled)
            raise_if_exited(pending)
            for child in list(pending):
                try:
                    with urllib.request.urlopen(child.health_url, timeout=1) as r:
                        if r.status == 200:
                            pending.remove(child)
                            if progress:
                                say(f"  up: {child.name:<10} {child.health_url.rsplit('/', 1)[0]}")
                except NOT_UP_YET:
                    pass
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise RuntimeError(f"timed out waiting for {names} to become healthy (logs in {self.dir / 'logs'})")
            if pending:
                time.sleep(0.2)

    def dead_children(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is not None]

    def stop(self, *, timeout: float = 10.0) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        self.children.clear()
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def __enter__(self) -> LocalNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def raise_if_cancelled(cancelled: Callable[[], bool]) -> None:
    if cancelled():
        raise StartCancelled


def raise_if_exited(children: Iterable[Child]) -> None:
    """Start-up fails at once, with the end of its log, when a child has exited."""
    for child in children:
        code = child.proc.poll()
        if code is not None:
            tail = child.log_tail()
            raise RuntimeError(f"{child.name} exited with code {code} during start-up:\n{tail}")


def wait_available(validator_url: str, expected: int, *, timeout: float, children: Iterable[Child] = (),
                   logs: Path | None = None, cancelled: Callable[[], bool] = lambda: False) -> None:
    """Wait until the validator's availability lists ``expected`` miners as up.

    A child that exits meanwhile ends the wait at once: its port taken by another process, a miner
    can die after something else answered its health check, and the wait would run to its timeout.
    """
    deadline = time.monotonic() + timeout
    url = f"{validator_url}/miner_availabilities/miner_availabilities"
    seen: dict[str, Any] = {}
    while True:
        raise_if_cancelled(cancelled)
        raise_if_exited(children)
        try:
            req = urllib.request.Request(url, data=b"", method="POST")
            with urllib.request.urlopen(req, timeout=2) as r:
                answer = json.loads(r.read())
            seen = answer if isinstance(answer, dict) else {}
            if sum(1 for entry in seen.values() if entry) >= expected:
                return
        except (*NOT_UP_YET, ValueError, AttributeError):
            pass
        if time.monotonic() > deadline:
            down = [str(uid) for uid, entry in seen.items() if not entry]
            raise RuntimeError(f"timed out waiting for the validator to see {expected} miners up"
                               + (f"; not up: uid {', '.join(down)}" if down else "")
                               + (f" (logs in {logs})" if logs else ""))
        time.sleep(0.2)


def _key_works(api_url: str, key: str) -> bool:
    """A cheap check that a saved key is still known to the API (401 means it is not)."""
    req = urllib.request.Request(f"{api_url}/v1/chat/completions", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5):
            return True
    except urllib.error.HTTPError as e:
        return e.code != 401
    except (urllib.error.URLError, OSError):
        return False


def summary(info: dict[str, Any], directory: Path) -> str:
    api, key = info["api_url"], info["api_key"]
    miners = "\n".join(f"    uid {m['uid']}: {m['url']}  ({m['backend']}, {m['profile']})  {m['hotkey']}"
                       for m in info["miners"])
    return f"""
Local subnet is up.
  API:        {api}
  Validator:  {info['validator_url']}
  Miners:
{miners}
  Admin key:  {info['admin_key']}
  API key:    {key}
  Details:    {directory / 'localnet.json'}   Logs: {directory / 'logs'}

Try it:
  curl -s {api}/v1/chat/completions -H 'Authorization: Bearer {key}' \\
    -H 'Content-Type: application/json' \\
    -d '{{"model": "default", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

Press Ctrl-C to stop.
"""


def run_localnet(args: argparse.Namespace) -> int:
    config = LocalNetConfig(
        directory=Path(args.dir), miners=args.miners, api_port=args.api_port, validator_port=args.validator_port,
        admin_key=args.admin_key, backend=args.backend, upstream=args.upstream, model=args.model,
        log_level=args.log_level, fast=args.fast, dataset=args.dataset, corpus=args.corpus, store_url=args.store,
        external_miners=args.external_miner, miner_ports=args.miner_port,
        miner_profiles=[p.strip() for p in args.miner_profiles.split(",") if p.strip()] if args.miner_profiles else [],
    )
    try:
        net = LocalNet(config)
    except ValueError as e:
        print(f"sn1 localnet: {e}", file=sys.stderr)
        return 2
    stop = {"requested": False}

    def request_stop(signum: int, _frame: object) -> None:
        stop["requested"] = True

    for sig in stop_signals():  # a closed terminal too: it must stop the children, not orphan them
        signal.signal(sig, request_stop)
    say(f"Starting a local subnet in {net.dir} ({config.miners} miners, backend {config.backend}) ...")
    code = 0
    try:
        try:
            info = net.start(progress=True, cancelled=lambda: stop["requested"])
        except StartCancelled:
            info = None
        except (RuntimeError, OSError, urllib.error.URLError) as e:
            say(f"sn1 localnet: {e}", err=True)
            return 1
        if info is not None:
            say(summary(info, net.dir))
            code = watch(net, lambda: stop["requested"])
        say("Stopping the local subnet ...")
    finally:  # whatever ends the loop (a signal, a closed pipe, a bug), no child outlives us
        net.stop()
    say("Stopped.")
    return code


def watch(net: LocalNet, stopping: Callable[[], bool]) -> int:
    """Wait for a stop signal (0) or a child's exit (1, saying which and how)."""
    while not stopping():
        dead = net.dead_children()
        if dead:
            for c in dead:
                say(f"sn1 localnet: {c.name} {how_it_ended(c.proc.returncode)}; see {c.log_path}", err=True)
            return 1
        time.sleep(0.5)
    return 0


def how_it_ended(returncode: int) -> str:
    """``exited with code 1``, or ``was killed by SIGKILL`` for a signal (it read "exited with code -9")."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def say(text: str, *, err: bool = False) -> None:
    """Print, and carry on if nobody reads any more (``sn1 localnet | head``, a closed terminal):
    a failed print must not skip stopping the children."""
    try:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
    except (BrokenPipeError, OSError):
        pass
