"""The bench's open-streams memory point alone, in ~40 s: the API's RSS idle and with ``--streams`` open streams
(the upstream drips one chunk a second), and what one stream holds. ``--setup bare`` measures the first bare
aiohttp pass-through instead (a server and a client connection a stream, no logic): the floor ours stands on.

The cluster is ``make bench``'s (``bench_cluster.Cluster``: 10 miners, the API from the local network's env file);
``--warm`` streams are opened and closed first, so that what the first requests set up once is in the idle figure.
Run: ``.venv/bin/python scripts/bench_streams.py [--streams 1000] [--setup sn1|bare]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cluster import Cluster, rss_mb  # noqa: E402
from bench_measure import PATH, ROOT, body  # noqa: E402
from bench_upstream import DRIP_MODEL  # noqa: E402


def hold(cluster: Cluster, setup: str, streams: int) -> subprocess.Popen:
    """``bench_load.py hold``: ``streams`` streams open on ``setup``, spread over the miners (sn1), until stdin closes."""
    bodies = ([body(True, uids=[uid], model=DRIP_MODEL) for uid in range(1, cluster.miners + 1)] if setup == "sn1"
              else [body(True, model=DRIP_MODEL)])
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_load.py"), "hold", "--url", cluster.urls[setup] + PATH,
           "--streams", str(streams), "--header", f"Authorization:Bearer {cluster.api_key}"]
    for b in bodies:
        cmd += ["--body", b.decode()]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def held_for(proc: subprocess.Popen, seconds: float) -> int:
    """How many streams ``proc`` opened (its ``ready N`` line), once they have been open ``seconds``."""
    line = proc.stdout.readline().strip() if proc.stdout else ""
    time.sleep(seconds)
    return int(line.split()[1]) if line.startswith("ready") else 0


def release(proc: subprocess.Popen) -> None:
    if proc.stdin:
        proc.stdin.close()
    proc.wait(timeout=30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--warm", type=int, default=50, help="streams opened and closed before the idle figure")
    p.add_argument("--setup", choices=["sn1", "bare"], default="sn1")
    p.add_argument("--out", default=str(ROOT / "bench" / "streams"))
    args = p.parse_args()
    cluster = Cluster(Path(args.out))
    try:
        cluster.start()
        pid = cluster.pids["api" if args.setup == "sn1" else "bare1"]
        warm = hold(cluster, args.setup, args.warm)
        held_for(warm, 1.0)
        release(warm)
        time.sleep(2.0)
        idle = rss_mb(pid)
        proc = hold(cluster, args.setup, args.streams)
        try:
            ready = held_for(proc, 2.0)
            held = rss_mb(pid)
        finally:
            release(proc)
    finally:
        cluster.stop()
    print(f"{args.setup}: {ready}/{args.streams} open, RSS {idle:.1f} MB idle -> {held:.1f} MB: "
          f"{(held - idle) * 1024 / max(ready, 1):.1f} KB a stream")
    return 0 if ready == args.streams else 1


if __name__ == "__main__":
    sys.exit(main())
