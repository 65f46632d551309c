"""Several API workers: with ``PROMETHEUS_MULTIPROC_DIR`` (what ``sn1 api`` sets when WORKERS > 1),
a scrape answered by any worker reports the whole fleet's counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.compat.support import sample

WORKER = """
from shared.metrics import ApiMetrics
m = ApiMetrics()
m.http.observe("/v1/chat/completions", "POST", 200, 0.1)
m.http.observe("/v1/chat/completions", "POST", 429, 0.01)
m.outbox_failures.set(2)
"""
SCRAPE = """
from shared.metrics import ApiMetrics, exposition
print(exposition(ApiMetrics().registry).decode())
"""


def test_counts_from_every_worker_are_summed(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):  # two workers, one after the other (each leaves its values in the directory)
        subprocess.run([sys.executable, "-c", WORKER], env=env, check=True, timeout=60)
    text = subprocess.run([sys.executable, "-c", SCRAPE], env=env, check=True, timeout=60, capture_output=True,
                          text=True).stdout
    chat = {"route": "/v1/chat/completions", "method": "POST"}
    assert sample(text, "sn1_api_http_requests_total", status="200", **chat) == 2
    assert sample(text, "sn1_api_rate_limited_total", route="/v1/chat/completions") == 2
    assert sample(text, "sn1_api_http_request_duration_seconds_count", **chat) == 4
