"""``WORKERS=2``: the supervisor stops its workers on every stop signal, never dies alone."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import until_empty
from tests.keys.procs import ApiProcess, prepare, start_api, stop_on_redis, wait_ready
from tests.ports import free_port


@contextlib.contextmanager
def two_workers(tmp_path: Path) -> Iterator[ApiProcess]:
    """An API with ``WORKERS=2``, both serving; its whole process group is killed after the test."""
    api = start_api(tmp_path, prepare(tmp_path), store_url=f"sqlite:///{tmp_path / 'api.db'}", workers=2)
    try:
        wait_ready([api], workers=2)  # both workers log "serving on" once a signal stops them gracefully
        yield api
    finally:
        api.kill(signal.SIGKILL)


def group_members(pgid: int) -> list[str]:
    """Live processes of the group (an exited one waiting for init to reap it does not count)."""
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True)
    return [pid for pid in out.stdout.split() if _state(pid) not in ("Z", None)]


def gone_within(pgid: int, seconds: float) -> list[str]:
    """The group's live members once it is empty or ``seconds`` have passed (with their command lines)."""
    return [f"{pid}: {_cmdline(pid)}" for pid in until_empty(lambda: group_members(pgid), seconds)]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def _state(pid: str) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_to_the_supervisor_alone_stops_every_worker(tmp_path: Path, sig: signal.Signals) -> None:
    """A SIGHUP sent to the supervisor only (``kill -HUP``) used to kill it and leave its workers serving."""
    with two_workers(tmp_path) as api:
        assert len(group_members(api.proc.pid)) >= 3  # the supervisor and two workers
        os.kill(api.proc.pid, sig)  # the supervisor only, not its process group
        assert api.proc.wait(timeout=30) == 0
        # multiprocessing's resource tracker (same group) exits when it reads the supervisor's pipe
        # close, a moment after the supervisor: allow that moment, not a worker that keeps serving.
        assert gone_within(api.proc.pid, 5.0) == [], "no worker outlives the supervisor"
        assert api.log.read_text().count("shutting down") == 2, api.log.read_text()[-3000:]


def test_workers_stop_when_the_supervisor_is_killed_outright(tmp_path: Path) -> None:
    """SIGKILL gives the supervisor no chance to pass anything on: the kernel sends each worker SIGTERM. Its
    metrics directory stays (it cannot remove it); the next API's supervisor removes it, and its own at its end
    (each restart after a SIGKILL or the OOM killer left one in the temporary directory for good)."""
    metrics = lambda: sorted(p.name for p in (tmp_path / "tmp").glob("sn1-api-metrics-*"))  # noqa: E731
    with two_workers(tmp_path) as api:
        os.kill(api.proc.pid, signal.SIGKILL)
        api.proc.wait(timeout=10)
        assert gone_within(api.proc.pid, 20.0) == [], "no worker outlives the supervisor"
        assert api.log.read_text().count("shutting down") == 2
    left = metrics()
    assert [name.split("-")[3] for name in left] == [str(api.proc.pid)], left
    with two_workers(tmp_path) as again:
        assert left[0] not in metrics() and len(metrics()) == 1, metrics()
        assert f"the metrics of an API supervisor that is gone (pid {api.proc.pid})" in again.log.read_text()
        os.kill(again.proc.pid, signal.SIGTERM)
        assert again.proc.wait(timeout=30) == 0
    assert metrics() == [], "a supervisor that stops removes its own"


def test_a_worker_that_dies_on_its_own_stops_the_api_with_status_1(tmp_path: Path) -> None:
    """Serving on with fewer workers hid a crashed one; exiting non-zero lets pm2 or systemd restart."""
    with two_workers(tmp_path) as api:
        workers = [pid for pid in group_members(api.proc.pid) if int(pid) != api.proc.pid
                   and "spawn_main" in _cmdline(pid)]
        assert len(workers) == 2, workers
        os.kill(int(workers[0]), signal.SIGKILL)
        assert api.proc.wait(timeout=30) == 1
        assert gone_within(api.proc.pid, 5.0) == [], "the other worker stopped too"
        log = api.log.read_text()
        assert f"api worker pid {workers[0]} exited with code -9 on its own" in log, log[-3000:]
        assert log.count("shutting down") == 1, "the surviving worker shut down gracefully"


def start_once(env_file: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``sn1 api`` with these settings alone (none from the test's environment), run to its exit."""
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "WORKERS", "STORE_"))}
    return subprocess.run([sys.executable, "-m", "shared.cli", "api", "--env-file", str(env_file)],
                          capture_output=True, text=True, timeout=60, env=clean)


def test_a_second_api_on_a_port_in_use_stops_at_start_with_one_line(tmp_path: Path) -> None:
    """Workers share the port with SO_REUSEPORT, and so did a second API's (an old copy still running, pm2
    and systemd both starting it): both served, splitting the traffic between two versions."""
    with two_workers(tmp_path) as first:
        port = first.url.rsplit(":", 1)[1]
        second = start_once(tmp_path / "second.env", prepare(tmp_path / "second") | {
            "API_PORT": port, "WORKERS": "2", "API_HOST": "127.0.0.1", "STORE_URL": f"sqlite:///{tmp_path / 'second.db'}"})
    assert second.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in second.stderr and "Traceback" not in second.stderr, second.stderr


def test_a_start_up_error_in_the_workers_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """With WORKERS > 1, a bad STORE_URL (or metagraph file) gave each spawned worker's traceback."""
    out = start_once(tmp_path / "api.env", prepare(tmp_path) | {
        "WORKERS": "2", "API_PORT": str(free_port()), "STORE_URL": f"sqlite:///{tmp_path}"})  # a directory
    assert out.returncode != 0
    assert "sn1 api: STORE_URL: cannot open" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert f"{tmp_path} is a directory: name a file in it ({tmp_path / 'api.db'})" in out.stderr, out.stderr


def test_a_store_sqlite_cannot_write_beside_says_what_to_fix(tmp_path: Path) -> None:
    """A store file in a directory its user cannot write (a unit's ``User=sn1``, a directory made by root) stopped
    the start on SQLite's own words alone, "unable to open database file", for a file that is there and readable.
    Here SQLite cannot make its -wal file (a directory by that name: what root, who may write anywhere, meets)."""
    store = tmp_path / "state" / "api.db"
    store.parent.mkdir()
    sqlite3.connect(store).execute("CREATE TABLE t (a)").connection.close()
    Path(f"{store}-wal").mkdir()
    out = start_once(tmp_path / "api.env", prepare(tmp_path) | {
        "API_PORT": str(free_port()), "STORE_URL": f"sqlite:///{store}"})
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"sn1 api: STORE_URL: cannot open sqlite:///{store}: sqlite: unable to open database file; the file and its "
        f"directory, {store.parent}, must be writable by this process's user ({pwd.getpwuid(os.geteuid()).pw_name}): "
        "SQLite writes api.db-wal and api.db-shm beside the file")


def test_a_new_sqlite_store_is_said_once_at_start(tmp_path: Path) -> None:
    """A mistyped STORE_URL path made a new, empty key store without a word: every key answered 401."""
    env = prepare(tmp_path)
    store = f"sqlite:///{tmp_path / 'typo' / 'api.db'}"
    logs = []
    for _ in range(2):
        api = start_api(tmp_path, env, store_url=store)
        try:
            wait_ready([api])
            logs.append(api.log.read_text())
        finally:
            api.kill()
    assert f"{tmp_path / 'typo' / 'api.db'} did not exist; a new, empty key store was created there" in logs[0]
    assert "four slashes" not in logs[0]  # an absolute path: no hint about relative ones
    assert "a new, empty key store" not in logs[1], "the second start opened the store it made: no warning"
    for name in ("api.db", "api.db-wal", "api.db-shm"):  # users' prompts and answers: its owner's alone
        found = tmp_path / "typo" / name
        assert not found.exists() or found.stat().st_mode & 0o777 == 0o600, (name, oct(found.stat().st_mode))


def spawned_workers(api: ApiProcess, count: int, seconds: float = 30.0) -> list[str]:
    """The pids of the supervisor's spawned workers, as soon as ``count`` exist (polled every millisecond)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if api.proc.poll() is not None:
            raise RuntimeError(f"api exited {api.proc.returncode}:\n{api.log.read_text()[-3000:]}")
        workers = [pid for pid in group_members(api.proc.pid) if "spawn_main" in _cmdline(pid)]
        if len(workers) >= count:
            return workers
        time.sleep(0.001)
    raise RuntimeError(f"no {count} workers:\n{api.log.read_text()[-3000:]}")


def _ignores_sigint(pid: str) -> bool:
    """Whether the process ignores SIGINT (its ``SigIgn`` mask in ``/proc``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(mask & (1 << (signal.SIGINT - 1)))


def test_ctrl_c_while_the_workers_start_stops_the_api_cleanly(tmp_path: Path) -> None:
    """Ctrl-C in a terminal reaches the whole process group. A worker that got it while its interpreter was
    still starting printed "Fatal Python error: init_sys_streams ... KeyboardInterrupt", or a
    KeyboardInterrupt traceback from its imports; the workers now start with SIGINT ignored, and stop on
    the SIGTERM the supervisor sends them."""
    api = start_api(tmp_path, prepare(tmp_path), store_url=f"sqlite:///{tmp_path / 'api.db'}", workers=2)
    try:
        for pid in spawned_workers(api, 2):
            assert _ignores_sigint(pid), "a starting worker ignores SIGINT (the supervisor's SIGTERM stops it)"
        os.killpg(api.proc.pid, signal.SIGINT)
        assert api.proc.wait(timeout=30) == 0
        assert gone_within(api.proc.pid, 5.0) == []
    finally:
        api.kill(signal.SIGKILL)
    log = api.log.read_text()
    for sign in ("Fatal Python error", "KeyboardInterrupt", "Traceback"):
        assert sign not in log, log[-3000:]


CTRL_C_DURING_SPAWN = '''
import os, signal, sys, time
import multiprocessing as mp
from api.supervisor import Supervisor

def worker():
    time.sleep(20)  # a worker still starting: it stops on the supervisor's SIGTERM, or ends on its own

class CtrlCDuringStart(mp.get_context("spawn").Process):
    def start(self):
        super().start()
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches the supervisor while it spawns

if __name__ == "__main__":
    started = time.monotonic()
    code = Supervisor([CtrlCDuringStart(target=worker), CtrlCDuringStart(target=worker)]).run()
    print(f"exit={code} after={time.monotonic() - started:.1f}")
'''


def test_a_ctrl_c_while_the_supervisor_spawns_its_workers_is_not_lost(tmp_path: Path) -> None:
    """The supervisor ignored SIGINT while it spawned its workers (so that they start ignoring it): a Ctrl-C
    then was lost, and the API went on to serve. Spawning a worker waits for its interpreter to start (its
    start-up data goes through a pipe it reads), so under load that took seconds, and a Ctrl-C pressed early
    did nothing. The signal is now held (blocked) while the supervisor spawns, and taken as it ends."""
    script = tmp_path / "ctrl_c_during_spawn.py"
    script.write_text(CTRL_C_DURING_SPAWN)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script)], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    code, after = (part.split("=")[1] for part in done.stdout.split())
    assert code == "0" and float(after) < 15, f"the Ctrl-C was lost: the workers ended on their own ({done.stdout})"


LOADED_WHEN_FORKING = '''
import sys
import shared.cli
from api.supervisor import Supervisor

HEAVY = ("bittensor", "aiohttp", "prometheus_client", "api.app", "api.worker", "shared.miner_client",
         "shared.metagraph", "shared.http", "redis")

def loaded_instead_of_forking(self):
    print("loaded:", sorted(name for name in HEAVY if name in sys.modules))
    return 0

Supervisor.run = loaded_instead_of_forking  # the moment the supervisor would start its workers
shared.cli.main(["api", "--env-file", sys.argv[1]])
'''


def test_the_supervisor_checks_the_settings_and_forks_without_loading_the_app(tmp_path: Path) -> None:
    """With WORKERS > 1 the supervisor imported the whole app and the SDK (~1.1 s of CPU; bittensor's ``__init__``
    alone ~0.3 s, for its EVM packages) before starting a worker, and each worker imported it all again: every
    start and restart waited that long more. Its checks (the hotkey, the store, the port) run without them."""
    env_file = tmp_path / "api.env"
    settings = prepare(tmp_path) | {"WORKERS": "2", "API_PORT": str(free_port()),
                                    "STORE_URL": f"sqlite:///{tmp_path / 'api.db'}"}
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    script = tmp_path / "loaded_when_forking.py"
    script.write_text(LOADED_WHEN_FORKING)
    root = Path(__file__).resolve().parents[2]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "WORKERS", "STORE_"))}
    done = subprocess.run([sys.executable, str(script), str(env_file)], cwd=root, capture_output=True, text=True,
                          timeout=60, env=clean | {"PYTHONPATH": str(root), "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "api supervisor starting 2 workers" in done.stderr, done.stderr[-3000:]
    assert done.stdout.strip() == "loaded: []", done.stdout


@pytest.mark.parametrize(("hotkey", "workers"), [("not a key", 2), ("missing", 2), ("a directory", 2),
                                                ("a directory", 1)])
def test_a_bad_hotkey_stops_the_api_before_any_worker_with_one_line(tmp_path: Path, hotkey: str, workers: int) -> None:
    """The supervisor checks the hotkey file without the SDK; it still refuses one the workers could not load,
    with the same line as one worker, before it starts any. A directory in the hotkey's place was a traceback."""
    env = prepare(tmp_path)
    key = tmp_path / "wallets" / "validator" / "hotkeys" / "default"
    key.unlink()
    if hotkey == "a directory":
        key.mkdir()
    elif hotkey == "not a key":
        key.write_text(hotkey)
    out = start_once(tmp_path / "api.env", env | {"WORKERS": str(workers), "API_PORT": str(free_port()),
                                                  "STORE_URL": f"sqlite:///{tmp_path / 'api.db'}"})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "sn1 api: WALLET_NAME/WALLET_HOTKEY/WALLET_PATH: cannot load hotkey 'default' of wallet 'validator'" \
        in out.stderr, out.stderr[-3000:]
    assert "workers on port" not in out.stderr, out.stderr[-3000:]


def encrypt_hotkey(wallets: Path, password: str = "correct horse") -> None:
    """The wallet's hotkey ``validator/default`` made again, encrypted by the SDK (as btcli does with a password)."""
    import bittensor as bt

    bt.Wallet("validator", "default", path=str(wallets)).create_new_hotkey(
        hotkey_password=password, overwrite=True, suppress=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_an_encrypted_hotkey_stops_the_api_before_any_worker_with_one_line(tmp_path: Path, workers: int) -> None:
    """The SDK asks an encrypted hotkey's password on the terminal: each spawned worker asked at once (none has a
    terminal: a traceback each, or a wait on a closed input), as one worker did under pm2. Refused at start with a
    line that says what to do, before any worker starts."""
    env = prepare(tmp_path)
    encrypt_hotkey(tmp_path / "wallets")
    out = start_once(tmp_path / "api.env", env | {"WORKERS": str(workers), "API_PORT": str(free_port()),
                                                  "STORE_URL": f"sqlite:///{tmp_path / 'api.db'}"})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert (f"sn1 api: WALLET_NAME/WALLET_HOTKEY/WALLET_PATH: hotkey 'default' of wallet 'validator' in "
            f"{tmp_path / 'wallets'} is encrypted (password-protected)") in out.stderr, out.stderr[-3000:]
    assert "btcli wallet regen-hotkey -w validator -H default" in out.stderr, out.stderr[-3000:]
    assert "Enter password" not in out.stderr, out.stderr[-3000:]  # the SDK's prompt
    assert len([line for line in out.stderr.splitlines() if "encrypted" in line]) == 1, out.stderr[-3000:]
    assert "workers on port" not in out.stderr, out.stderr[-3000:]


def test_a_port_in_use_is_the_first_line_a_fleet_start_says(tmp_path: Path) -> None:
    """``WORKERS=2`` on a port another process holds (a copy of the API still running): the supervisor checked the
    store first, so a Redis not up yet put its WARNING (after a wait) above the line that says why the start failed.
    The port is checked first now, as one worker checks it: the port's line is all the start says."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port := free_port()))
        taken.listen()
        settings = prepare(tmp_path) | {"API_PORT": str(port), "WORKERS": "2",
                                        "STORE_URL": f"redis://127.0.0.1:{free_port()}/0"}  # no Redis there
        (env := tmp_path / "api.env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "ADMIN_KEY", "STORE_", "WORKERS"))}
        out = subprocess.run([sys.executable, "-m", "shared.cli", "api", "--env-file", str(env)],
                             capture_output=True, text=True, timeout=60, env=clean)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.splitlines() == [f"sn1 api: API_HOST/API_PORT: cannot listen on 127.0.0.1:{port}: "
                                       "Address already in use"], out.stderr[-2000:]


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_new_empty_key_store_is_said_once_by_a_fleet(tmp_path: Path, store: str) -> None:
    """``WORKERS=2`` on a store with no keys yet: its WARNING ("a new, empty key store ...", which tells an operator
    whose keys are gone where to look) was said by each worker, the same line twice or more in one start."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    namespace = f"marker-{os.getpid()}-{time.monotonic_ns()}"
    store_url = f"sqlite:///{tmp_path / 'api.db'}" if store == "sqlite" else url
    api = start_api(tmp_path, prepare(tmp_path), store_url=store_url, namespace=namespace, workers=2)
    try:
        wait_ready([api], workers=2)
    finally:
        stop_on_redis([api], url, namespace) if store == "redis" else api.kill(signal.SIGKILL)
    log = api.log.read_text()
    assert log.count("a new, empty key store was") == 1, log[-3000:]


def test_a_sqlite_store_whose_directory_cannot_be_made_is_only_its_error_in_a_fleet(tmp_path: Path) -> None:
    """``WORKERS=2`` and a STORE_URL file whose directory cannot be made (a file in its place here; a directory this
    user cannot write did the same): the supervisor said "a new, empty key store was created there" first, then
    the workers "cannot open". The supervisor makes the file now: the start says only why it cannot."""
    (blocker := tmp_path / "state").write_text("a file where the store's directory should be")
    store = blocker / "api" / "api.db"
    out = start_once(tmp_path / "api.env", prepare(tmp_path) | {
        "WORKERS": "2", "API_PORT": str(free_port()), "STORE_URL": f"sqlite:///{store}"})
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "was created there" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.splitlines() == [f"sn1 api: STORE_URL: cannot open sqlite:///{store}: [Errno 20] Not a "
                                       f"directory: '{store.parent}'"], out.stderr[-3000:]


def ready_statuses(api: ApiProcess, times: int = 12) -> list[tuple[int, str]]:
    """``/ready``'s status and body, each on a new connection (the kernel spreads them over the workers)."""
    import urllib.error
    import urllib.request

    got = []
    for _ in range(times):
        try:
            with urllib.request.urlopen(api.url + "/ready", timeout=5) as r:
                got.append((r.status, r.read().decode()))
        except urllib.error.HTTPError as e:
            got.append((e.code, e.read().decode()))
    return got


def test_a_store_that_lost_its_data_is_one_error_for_a_fleet_start(tmp_path: Path) -> None:
    """``WORKERS=2`` on a Redis whose loss an earlier run recorded: the ERROR "lost its data" was said by the
    supervisor's check and by each worker, three times in one start. The supervisor says it; each worker's
    ``/ready`` still answers 503 with the reason."""
    import redis

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    namespace = f"lost-{os.getpid()}-{time.monotonic_ns()}"
    with redis.Redis.from_url(url) as client:
        client.set(f"{namespace}:store_lost", repr(time.time() - 60))
    api = start_api(tmp_path, prepare(tmp_path), store_url=url, namespace=namespace, workers=2)
    try:
        wait_ready([api], workers=2)
        answers = ready_statuses(api)
    finally:
        stop_on_redis([api], url, namespace)
    log = api.log.read_text()
    assert log.count("lost its data: restarted without persistence") == 1, log[-3000:]
    assert "| api |" in next(line for line in log.splitlines() if "lost its data" in line), log[-3000:]
    assert all(status == 503 and "the key store lost its data" in body for status, body in answers), answers


def test_a_redis_that_did_not_answer_the_supervisor_is_no_new_store_per_worker(tmp_path: Path) -> None:
    """``WORKERS=2`` and a Redis not up yet at start (a reboot: the API before Redis): the supervisor warned it
    cannot reach it, then, once Redis answered, each worker said "a new, empty key store" (the supervisor had not
    read the marker to say it once). One worker says it now, once."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not on PATH: the test runs a Redis of its own")
    port = free_port()
    api = start_api(tmp_path, prepare(tmp_path), store_url=f"redis://127.0.0.1:{port}/0", workers=2)
    server = None
    try:
        wait_ready([api], workers=2)
        assert "STORE_URL: cannot reach" in api.log.read_text()
        server = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                   "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while any("store:" in body for _, body in ready_statuses(api, 4)):  # each worker reads the marker
            assert time.monotonic() < deadline, (ready_statuses(api, 1), api.log.read_text()[-3000:])
            time.sleep(0.2)
        time.sleep(6)  # and every worker's periodic check (every 5 s) has run since
    finally:
        api.kill(signal.SIGKILL)
        if server is not None:
            server.terminate()
            server.wait(10)
    log = api.log.read_text()
    assert log.count("STORE_URL: cannot reach") == 1, log[-3000:]
    assert log.count("a new, empty key store was") == 1, log[-3000:]
