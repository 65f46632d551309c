"""The small soak (``make soak`` runs 20,000): 1,000 requests through honest and faulty miners at
concurrency 64, in its own process so its descriptors, tasks and RSS are its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_soak_1000_requests_all_answered_and_resources_back_to_baseline() -> None:
    """Each reading waits out the last requests' deadline (the faulty miners stall until it): 3 s, not the 5 s
    default, still some ten times what an honest answer takes at this concurrency on a loaded host."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--requests", "1000", "--concurrency", "64",
         "--deadline", "3", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    report = json.loads(lines[-1])
    summary = "\n".join(lines[:-1])
    assert report["statuses"] == {"ok": 1000}, summary
    assert report["after"]["fds"] <= report["before"]["fds"] + 2, summary
    assert report["after"]["tasks"] <= report["before"]["tasks"], summary
    assert report["after"]["rss_mb"] - report["before"]["rss_mb"] < 20, summary
    assert proc.returncode == 0 and report["ok"], summary
    assert "Error handling request" not in proc.stderr, "a cancelled miner request must not log an ERROR"
