"""The benchmark's measurements: setups, load, rounds interleaved, medians.

``Bench`` drives the cluster (``bench_cluster``) with the load generator
(``bench_load``: wrk when installed, else the raw-HTTP one) in its own process
and records, per measurement, requests/s, p50/p99 and the CPU each process used.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_cluster import Cluster, cpu_seconds, rss_mb
from bench_load import have_wrk, wrk_run
from bench_upstream import PACED_MODEL

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ("direct", "bare", "sn1")
PATH = "/v1/chat/completions"


def body(stream: bool, *, uids: list[int] | None = None, model: str = "bench") -> bytes:
    payload: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "stream": stream}
    if uids is not None:
        payload["uids"] = uids
    return json.dumps(payload, separators=(",", ":")).encode()


class Bench:
    def __init__(self, cluster: Cluster, *, seconds: float, rounds: int, loadgen: str) -> None:
        self.c = cluster
        self.seconds = seconds
        self.rounds = rounds
        self.use_wrk = loadgen == "wrk" or (loadgen == "auto" and have_wrk())
        self.cpu_share: dict[str, dict[str, float]] = {}

    def target(self, setup: str, stream: bool, uids: list[int] | None = None,
               model: str = "bench") -> tuple[str, bytes, dict[str, str]]:
        if setup.startswith("sn1"):
            headers = {"Authorization": f"Bearer {self.c.api_key}"}
            return self.c.urls[setup] + PATH, body(stream, uids=uids or [1], model=model), headers
        return self.c.urls[setup] + PATH, body(stream, model=model), {}

    def load(self, url: str, payload: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> dict:
        """One measurement by the load generator in its own process; also its CPU seconds."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        if self.use_wrk:
            result = wrk_run(url, payload, headers, concurrency, seconds)
        else:
            cmd = [sys.executable, str(ROOT / "scripts" / "bench_load.py"), "run", "--url", url,
                   "--body", payload.decode(), "--concurrency", str(concurrency), "--duration", str(seconds)]
            cmd += [a for k, v in headers.items() for a in ("--header", f"{k}:{v}")]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["loadgen_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return result

    def measured(self, setup: str, stream: bool, concurrency: int, seconds: float, **kw: Any) -> dict:
        pids = self.setup_pids(setup)
        cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
        result = self.load(*self.target(setup, stream, **kw), concurrency, seconds)
        share = {n: (cpu_seconds(p) - cpu0[n]) / seconds for n, p in pids.items()}
        share["load generator"] = result["loadgen_cpu_s"] / seconds
        result["cpu_share"] = share
        return result

    def setup_pids(self, setup: str) -> dict[str, int]:
        p = self.c.pids
        return {"direct": {"upstream": p["upstream"]},
                "bare": {"bare1": p["bare1"], "bare2": p["bare2"], "upstream": p["upstream"]},
                }.get(setup, {"api": p["api"], "miner": p["miner1"], "upstream": p["upstream"],
                              "fake validator": p["fake_validator"]})

    def warm_up(self) -> None:
        for setup in SETUPS:
            for stream in (False, True):
                r = self.load(*self.target(setup, stream), 8, 1.0)
                if r["errors"]:
                    raise RuntimeError(f"warm-up: {setup} stream={stream} answered {r['errors']} errors; "
                                       f"see {self.c.dir / 'logs'} and {self.c.dir / 'net' / 'logs'}")

    def interleaved(self, stream: bool, concurrency: int, seconds: float, **kw: Any) -> dict[str, dict]:
        """Setups interleaved A B C per round, ``rounds`` rounds: the median run per setup."""
        runs: dict[str, list[dict]] = {s: [] for s in SETUPS}
        for _ in range(self.rounds):
            for setup in SETUPS:
                runs[setup].append(self.measured(setup, stream, concurrency, seconds, **kw))
        return {setup: median_run(rs) for setup, rs in runs.items()}

    def points(self) -> list[dict]:
        """Each (mode, concurrency) point: setups interleaved A B C per round, median per setup."""
        out = []
        for stream in (False, True):
            for concurrency in (1, 64):
                point = {"stream": stream, "concurrency": concurrency,
                         **self.interleaved(stream, concurrency, self.seconds)}
                out.append(point)
                self._progress(point)
        return out

    def paced(self) -> dict[str, Any]:
        """Streaming at c=64 with each chunk its own write, 2 ms apart (the upstream's ``bench-paced``):
        the shape of a model's stream, where every hop pays per chunk. Not one of the issue's targets
        (its upstream has no delays); shown beside them. Rounds of half the main points' length."""
        point = self.interleaved(True, 64, self.seconds / 2, model=PACED_MODEL)
        cells = "  ".join(f"{s}: {point[s]['rps']:.0f}/s" for s in SETUPS)
        print(f"  paced stream c=64 {cells}", flush=True)
        return point

    def fanout(self) -> dict[str, dict]:
        ks = (1, 3, 5, 10)
        runs: dict[int, list[dict]] = {k: [] for k in ks}
        for _ in range(max(2, self.rounds - 1)):
            for k in ks:
                runs[k].append(self.measured("sn1", False, 16, self.seconds / 2, uids=list(range(1, k + 1))))
        result = {str(k): median_run(rs) for k, rs in runs.items()}
        print("  fan-out  " + "  ".join(f"k={k}: {result[str(k)]['rps']:.0f}/s" for k in ks), flush=True)
        return result

    def open_streams(self, streams: int = 1000) -> dict[str, Any]:
        """API RSS with ``streams`` open streams (the upstream drips one chunk a second)."""
        api_pid = self.c.pids["api"]
        idle = rss_mb(api_pid)
        url = self.c.urls["sn1"] + PATH
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_load.py"), "hold", "--url", url, "--streams", str(streams),
               "--header", f"Authorization:Bearer {self.c.api_key}"]
        for uid in range(1, self.c.miners + 1):  # spread over the miners: each pool stays under its per-host cap
            cmd += ["--body", body(True, uids=[uid], model="bench-drip").decode()]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline().strip() if proc.stdout else ""
            ready = int(line.split()[1]) if line.startswith("ready") else 0
            time.sleep(2.0)
            held = rss_mb(api_pid)
        finally:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=30)
        result = {"streams": streams, "ready": ready, "idle_rss_mb": idle, "rss_mb": held}
        print(f"  open streams: {ready}/{streams} open, API RSS {idle:.0f} MB idle -> {held:.0f} MB", flush=True)
        return result

    def workers(self) -> dict[str, Any]:
        self.c.start_api(2)
        runs: dict[str, list[dict]] = {"1": [], "2": []}
        for _ in range(max(2, self.rounds - 1)):
            for setup, key in (("sn1", "1"), ("sn1_workers2", "2")):
                runs[key].append(self.measured(setup, False, 64, self.seconds))
        result = {k: median_run(rs) for k, rs in runs.items()}
        result["cpus"] = os.cpu_count() or 1
        print(f"  workers: 1 -> {result['1']['rps']:.0f}/s, 2 -> {result['2']['rps']:.0f}/s", flush=True)
        return result

    @staticmethod
    def _progress(point: dict) -> None:
        mode = "stream" if point["stream"] else "non-stream"
        cells = "  ".join(f"{s}: {point[s]['rps']:.0f}/s p50 {point[s]['p50_ms']:.2f} ms" for s in SETUPS)
        print(f"  {mode:<10} c={point['concurrency']:<3} {cells}", flush=True)


def median_run(runs: list[dict]) -> dict:
    """Median of each figure across rounds (errors summed, CPU shares from the median round)."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    mid = ordered[len(ordered) // 2]
    return {"rps": statistics.median(r["rps"] for r in runs), "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "requests": sum(r["requests"] for r in runs), "rounds": [round(r["rps"], 1) for r in runs],
            "p50_rounds": [round(r["p50_ms"], 3) for r in runs],
            "cpu_share": mid.get("cpu_share", {}), "tool": mid.get("tool")}
