"""``WORKERS=2``: the supervisor stops its workers on every stop signal, never dies alone."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.keys.procs import prepare, start_api, wait_ready


def group_members(pgid: int) -> list[str]:
    """Live processes of the group (an exited one waiting for init to reap it does not count)."""
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True)
    return [pid for pid in out.stdout.split() if _state(pid) not in ("Z", None)]


def _state(pid: str) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_to_the_supervisor_alone_stops_every_worker(tmp_path: Path, sig: signal.Signals) -> None:
    """A SIGHUP sent to the supervisor only (``kill -HUP``) used to kill it and leave its workers serving."""
    api = start_api(tmp_path, prepare(tmp_path), store_url=f"sqlite:///{tmp_path / 'api.db'}", workers=2)
    try:
        wait_ready([api], workers=2)  # both workers log "serving on" once a signal stops them gracefully
        assert len(group_members(api.proc.pid)) >= 3  # the supervisor and two workers
        os.kill(api.proc.pid, sig)  # the supervisor only, not its process group
        assert api.proc.wait(timeout=30) == 0
        assert group_members(api.proc.pid) == [], "no worker outlives the supervisor"
        assert api.log.read_text().count("shutting down") == 2, api.log.read_text()[-3000:]
    finally:
        api.kill(signal.SIGKILL)


def test_workers_stop_when_the_supervisor_is_killed_outright(tmp_path: Path) -> None:
    """SIGKILL gives the supervisor no chance to pass anything on: the kernel sends each worker SIGTERM."""
    api = start_api(tmp_path, prepare(tmp_path), store_url=f"sqlite:///{tmp_path / 'api.db'}", workers=2)
    try:
        wait_ready([api], workers=2)
        os.kill(api.proc.pid, signal.SIGKILL)
        api.proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while group_members(api.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(api.proc.pid) == [], "no worker outlives the supervisor"
        assert api.log.read_text().count("shutting down") == 2
    finally:
        api.kill(signal.SIGKILL)
