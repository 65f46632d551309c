"""The directory where several processes' Prometheus metrics meet (``PROMETHEUS_MULTIPROC_DIR``): the API's
workers each write their values there, and any worker's ``GET /metrics`` reports the fleet. Apart from
``shared.metrics`` so that the API's supervisor, which makes the directory before it forks its workers, loads
neither prometheus_client nor aiohttp."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from loguru import logger

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR_PREFIX = "sn1-api-metrics-"  # a supervisor's own metrics directory: sn1-api-metrics-<its pid>-<random>


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def shared_metrics_dir() -> str | None:
    """Workers record metrics in one directory so any worker's ``/metrics`` reports the fleet.

    Set in the environment before the workers are spawned (prometheus_client reads it at
    import). An operator's own ``PROMETHEUS_MULTIPROC_DIR`` is made if missing and cleared of the
    last run's files (prometheus_client's rule: wipe it between runs; left, every restart's
    workers were summed in with the live ones, and a file per dead worker piled up); else a fresh
    temporary one is made, and removed at exit (returned).
    """
    if own := os.environ.get(MULTIPROC_ENV):
        clear_metrics_dir(Path(own))
        return None
    remove_orphan_metrics_dirs(Path(tempfile.gettempdir()))
    path = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")  # its supervisor's pid: see below
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_orphan_metrics_dirs(tmp: Path) -> None:
    """Remove the temporary metrics directories of supervisors that are gone: one killed outright (SIGKILL, the
    OOM killer) never removed its own, and each restart left another in the temporary directory for good. A
    directory's name carries its supervisor's pid; one whose pid still runs (or is another user's) is left."""
    for path in tmp.glob(f"{METRICS_DIR_PREFIX}*"):
        pid = re.match(r"(\d+)-", path.name[len(METRICS_DIR_PREFIX):])
        if pid is not None and not _running(int(pid.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            logger.info("removed {}, the metrics of an API supervisor that is gone (pid {})", path, pid.group(1))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def clear_metrics_dir(path: Path) -> None:
    """Remove prometheus_client's ``*.db`` files from ``path`` (nothing else in it is touched)."""
    path.mkdir(parents=True, exist_ok=True)
    stale = list(path.glob("*.db"))
    for f in stale:
        f.unlink(missing_ok=True)
    if stale:
        logger.info("cleared {} metric files of an earlier run from {}", len(stale), path)
