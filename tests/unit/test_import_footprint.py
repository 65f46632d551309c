"""What an API on SQLite loads: the Redis client (with the tracing and crypto packages it pulls in, 9 MB of
every worker's memory) only when the store is Redis. A top-level import in api/main.py once loaded it for
every API, and the bench's 1,000 open streams went from 136 to 144 MB of its 150 MB target."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_an_api_on_sqlite_does_not_load_the_redis_client() -> None:
    code = ("import sys, api.main, api.app, shared.cli, shared.store; "
            "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout
