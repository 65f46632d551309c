"""Profile the API and a miner under the benchmark's load (py-spy, sampling, no code changes).

Starts the bench cluster, drives ``--setup`` with the load generator while
``py-spy record`` samples the API and miner 1, then prints the functions with
the most samples (self and inclusive) per process, on its event loop's thread.
py-spy pauses the process for each sample (its non-blocking mode cut a third
of the stacks short, which hid where they came from). Raw collapsed stacks are
left in ``bench/profile-*.txt`` (``py-spy`` from PyPI; root or ptrace rights).
Run: ``.venv/bin/python scripts/bench_profile.py --stream --concurrency 64`` (``--paced``: the
upstream's paced stream, a chunk every 2 ms).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cluster import Cluster  # noqa: E402
from bench_measure import ROOT, Bench  # noqa: E402
from bench_upstream import PACED_MODEL  # noqa: E402

MAIN_THREAD_ROOT = "_run_module_as_main"  # every stack of the event loop's thread starts here


def summarize(raw: Path, top: int) -> str:
    """Top frames by self and inclusive samples of the event loop's thread (py-spy's collapsed format).

    Other threads (an idle executor worker that py-spy does not recognise as idle) are counted
    apart: mixed in, they made every share of the loop look smaller than it is.
    """
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = elsewhere = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        if not frames[0].startswith(MAIN_THREAD_ROOT):
            elsewhere += n
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} samples on the event loop's thread ({elsewhere} in other threads, not counted)", "self:"]
    out += [f"  {n * 100 / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["inclusive:"]
    out += [f"  {n * 100 / total:5.1f}%  {f}" for f, n in incl.most_common(top * 2)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", default="sn1")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--paced", action="store_true", help="stream the upstream's paced model (a chunk every 2 ms)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = ROOT / "bench"
    out.mkdir(exist_ok=True)
    cluster = Cluster(out / "run", log_level=args.log_level)
    try:
        cluster.start()
        bench = Bench(cluster, seconds=args.seconds, rounds=1, loadgen="auto")
        bench.warm_up()
        targets = {"api": cluster.pids["api"], "miner": cluster.pids["miner1"]}
        spies = {name: subprocess.Popen([pyspy, "record", "-p", str(pid), "-d", str(int(args.seconds)), "-r", "200",
                                         "-f", "raw", "-o", str(out / f"profile-{name}.txt")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in targets.items()}
        model = {"model": PACED_MODEL} if args.paced else {}
        result = bench.measured(args.setup, args.stream or args.paced, args.concurrency, args.seconds, **model)
        for spy in spies.values():
            spy.wait(timeout=60)
    finally:
        cluster.stop()
    mode = "paced stream" if args.paced else "stream" if args.stream else "non-stream"
    print(f"{args.setup} {mode} c={args.concurrency}: {result['rps']:.0f} req/s "
          f"p50 {result['p50_ms']:.2f} ms, cores {result['cpu_share']}")
    for name in targets:
        print(f"\n=== {name} ===\n" + summarize(out / f"profile-{name}.txt", args.top))


if __name__ == "__main__":
    main()
