"""``make bench``: the gateway beside the physical limit, on 127.0.0.1 only.

Three setups in front of one fake upstream, measured interleaved (A B C A B C ...),
median of ``--rounds`` rounds:

- ``direct``: client -> upstream (the limit);
- ``bare``:   client -> aiohttp pass-through -> aiohttp pass-through -> upstream (our hop count, no logic);
- ``sn1``:    client -> API (auth, rate limit, selection, signing, race, outbox, usage)
              -> miner (``--backend openai``, signature check) -> upstream, one explicit uid (k = 1).

Then a paced stream (each chunk its own write, 2 ms apart: a model's shape; shown, not a
target), fan-out (k = 1, 3, 5, 10 at concurrency 16), the API's RSS with 1,000 open
streams, ``WORKERS=2`` against one worker, and the micro figures. Prints one
table with PASS/FAIL per target, writes ``bench/results.json`` and
``bench/bench.png``. Everything it starts is stopped, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cluster import Cluster  # noqa: E402
from bench_measure import ROOT, Bench  # noqa: E402
from bench_micro import micro_figures  # noqa: E402
from bench_report import render_chart, render_table  # noqa: E402


def write_docs(results: dict[str, Any], chart: Path) -> None:
    """The committed copy of the latest run (``bench/`` itself is git-ignored)."""
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    shutil.copyfile(chart, docs / "bench.png")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (docs / "bench.md").write_text(
        f"# Latest `make bench` ({when}, {results['elapsed_s']:.0f} s)\n\n"
        f"![sn1 vs bare vs direct](bench.png)\n\n```\n{results['table']}\n```\n"
    )
    print(f"copied the table and chart to {docs / 'bench.md'} and {docs / 'bench.png'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0, help="length of one measurement round (default 8)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--out", default=str(ROOT / "bench"))
    p.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the API, miners and validator")
    p.add_argument("--skip", default="", help="comma list of sections to skip: paced,fanout,streams,workers,micro")
    p.add_argument("--docs", action="store_true",
                   help="also copy the table and chart to docs/bench.md and docs/bench.png (the committed copy)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    started = time.monotonic()
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()},
                               "settings": {"seconds": args.seconds, "rounds": args.rounds,
                                            "log_level": args.log_level}}
    if "micro" not in skip:
        print("micro figures ...", flush=True)
        results["micro"] = micro_figures()
    cluster = Cluster(out / "run", log_level=args.log_level)
    try:
        print("starting upstream, fake validator, 2 pass-through proxies, 10 miners, API ...", flush=True)
        cluster.start()
        bench = Bench(cluster, seconds=args.seconds, rounds=args.rounds, loadgen=args.loadgen)
        results["loadgen"] = "wrk (1 thread, own process)" if bench.use_wrk else "python raw-HTTP (own process)"
        bench.warm_up()
        print(f"measuring ({results['loadgen']}) ...", flush=True)
        results["points"] = bench.points()
        if "paced" not in skip:
            results["paced"] = bench.paced()
        if "fanout" not in skip:
            results["fanout"] = bench.fanout()
        if "streams" not in skip:
            results["open_streams"] = bench.open_streams()
        if "workers" not in skip:
            results["workers"] = bench.workers()
    finally:
        cluster.stop()
    results["elapsed_s"] = time.monotonic() - started
    table, all_pass = render_table(results)
    results["table"] = table
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    render_chart(results, out / "bench.png")
    print(table)
    print(f"wrote {out / 'results.json'} and {out / 'bench.png'} in {results['elapsed_s']:.0f} s")
    if args.docs:
        write_docs(results, out / "bench.png")
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())
