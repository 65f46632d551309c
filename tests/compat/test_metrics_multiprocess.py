"""Several API workers: with ``PROMETHEUS_MULTIPROC_DIR`` (what ``sn1 api`` sets when WORKERS > 1),
a scrape answered by any worker reports the whole fleet's counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_an_operators_own_directory_starts_each_run_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus_client's directory must be wiped between runs: left, the last run's workers were
    summed in with the new ones (a restart did not reset a counter) and a file per dead worker piled up."""
    from shared.metrics_dir import shared_metrics_dir

    metrics = tmp_path / "metrics"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    metrics.mkdir()
    subprocess.run([sys.executable, "-c", WORKER], env=env, check=True, timeout=60)  # the last run's worker
    (metrics / "README").write_text("the operator's own file")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics))
    assert shared_metrics_dir() is None, "an operator's directory is theirs: not removed at exit"
    assert sorted(p.name for p in metrics.iterdir()) == ["README"]
    text = subprocess.run([sys.executable, "-c", SCRAPE], env=env, check=True, timeout=60, capture_output=True,
                          text=True).stdout
    assert sample(text, "sn1_api_http_requests_total", route="/v1/chat/completions", method="POST",
                  status="200") == 0

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "not-yet"))
    shared_metrics_dir()
    assert (tmp_path / "not-yet").is_dir(), "made when missing (the workers would fail on their first metric)"
