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
m.errors.observe("/v1/chat/completions", 429, "token_limit_exceeded")
m.outbox_failures.catch_up(2)
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
    assert sample(text, "sn1_api_errors_total", route="/v1/chat/completions", code="token_limit_exceeded") == 2
    assert sample(text, "sn1_api_http_request_duration_seconds_count", **chat) == 4


def test_readiness_is_the_worst_workers(tmp_path: Path) -> None:
    """``sn1_api_ready`` and ``sn1_api_check_ok``: one worker whose store check fails makes the host's scrape 0
    (a load balancer sends the host's traffic to whichever worker answers), one sample per check, no pid label."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for ok in (1, 0, 1):
        worker = ("from shared.metrics import ApiMetrics\nm = ApiMetrics()\n"
                  f"m.ready.set({ok})\nm.check_ok('store').set({ok})\nm.check_ok('miners').set(1)\n")
        subprocess.run([sys.executable, "-c", worker], env=env, check=True, timeout=60)
    text = subprocess.run([sys.executable, "-c", SCRAPE], env=env, check=True, timeout=60, capture_output=True,
                          text=True).stdout
    assert sample(text, "sn1_api_ready") == 0 and sample(text, "sn1_api_check_ok", check="store") == 0
    assert sample(text, "sn1_api_check_ok", check="miners") == 1
    assert sorted(line for line in text.splitlines() if line.startswith("sn1_api_check_ok{")) == [
        'sn1_api_check_ok{check="miners"} 1.0', 'sn1_api_check_ok{check="store"} 0.0']


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


def test_the_outboxs_counts_do_not_fall_when_a_worker_is_replaced(tmp_path: Path) -> None:
    """The API's supervisor replaces a worker that died and marks it dead. The scoring outbox's counts were
    ``livesum`` gauges: the fleet's sum fell by the dead worker's count, and the alerts' ``increase()`` took the
    fall for a counter's reset and the sum after it for a rise (SN1ScoringPayloadsRejected fired with nothing
    rejected). As counters, a dead worker's count stays in the sum: it only grows."""
    from prometheus_client import multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def worker(rejected: int) -> int:
        code = ("import os\nfrom shared.metrics import ApiMetrics\nm = ApiMetrics()\n"
                f"m.outbox_rejected.catch_up({rejected})\nm.outbox_delivered.catch_up(10)\nprint(os.getpid())\n")
        done = subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60, capture_output=True,
                              text=True)
        return int(done.stdout)

    def scrape() -> str:
        return subprocess.run([sys.executable, "-c", SCRAPE], env=env, check=True, timeout=60, capture_output=True,
                              text=True).stdout

    dead = worker(3)
    assert sample(scrape(), "sn1_api_outbox_rejected_total") == 3
    multiprocess.mark_process_dead(dead, str(tmp_path))  # what api/main.py does when it replaces a worker
    worker(1)  # its replacement rejects one
    text = scrape()
    assert sample(text, "sn1_api_outbox_rejected_total") == 4, "the dead worker's 3 stay counted"
    assert sample(text, "sn1_api_outbox_delivered_total") == 20
