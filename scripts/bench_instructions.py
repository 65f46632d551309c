"""Instructions and system calls a request costs the API and a miner: figures the host's speed does not move.

``make bench``'s ratios move 10-15% between runs minutes apart and more between hosts, so a change of a
few percent in our own cost cannot be told from the day (docs/bench-history.md is full of "no change the
bench can see"). This counts instead of timing:

- **instructions** (user space, Valgrind's callgrind): the API and miner 1 are started again under
  ``valgrind --tool=callgrind --instr-atstart=no`` with their own command line and environment; counting
  is switched on (``callgrind_control -i on``) only while ``--requests`` requests are sent, after a warm-up;
- **system calls** (``strace -c -f``, attached to the same processes run normally), which callgrind does
  not see: a SQLite commit's WAL writes and locks are system calls.

The same for ``bare``'s two pass-through hops, whose sum over the API's and miner's (``bare / sn1``) is the
issue's throughput ratio without the host in it, and for each process where its instructions go, by library
(sr25519, SQLite, OpenSSL, orjson: what a pass-through does not run; the rest is the interpreter running Python).
All with one explicit uid (k = 1), the bench's body, non-streaming and streaming, at a low concurrency
(4), so that batching by load does not change what a request costs. Divided by the requests sent, the
figures are per request; run it on two checkouts to compare code (a run takes 5-10 minutes, most of it
Valgrind starting the two processes). Prints a table and writes ``bench/instructions.json``.
Needs ``valgrind`` and ``strace`` (Debian's packages); not part of ``make bench``.
Run: ``.venv/bin/python scripts/bench_instructions.py [--requests 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cluster import Cluster, wait_http  # noqa: E402
from bench_measure import PATH, ROOT, body  # noqa: E402

CONCURRENCY = 4
IDLE_SECONDS = 10.0
MODES = (("non-stream", False), ("stream", True))
TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)
# What a request's instructions are spent in, by the library that ran them (callgrind_annotate names each
# function's object file): the costs a pass-through does not have, apart from the interpreter running our code.
LIBRARIES = (("sr25519", "bittensor_core"), ("SQLite", "libsqlite3"), ("OpenSSL", "libcrypto"), ("orjson", "orjson"))
REST = "Python and the rest"
ANNOTATED = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?:\s+\[([^\]]+)\])?\s*$")


def callgrind_total(dump: bytes) -> int:
    """The instructions a callgrind dump counted (its ``summary:`` line; ``totals:`` in older formats)."""
    found = TOTALS.search(dump)
    if found is None:
        raise ValueError("no summary or totals line in the callgrind dump")
    return int(found.group(1))


def library_shares(annotated: str) -> dict[str, float]:
    """Each of ``LIBRARIES``' share of the instructions in a ``callgrind_annotate --threshold=100`` listing (each
    function's own, by its object file), the rest under ``REST``."""
    spent = dict.fromkeys([name for name, _ in LIBRARIES] + [REST], 0)
    for line in annotated.splitlines():
        found = ANNOTATED.match(line)
        if found is None or "PROGRAM TOTALS" in line:
            continue
        obj = (found.group(3) or "").rsplit("/", 1)[-1]
        name = next((name for name, part in LIBRARIES if part in obj), REST)
        spent[name] += int(found.group(1).replace(",", ""))
    total = sum(spent.values())
    return {name: n / total for name, n in spent.items()} if total else {}


def strace_calls(report: str) -> tuple[int, dict[str, int]]:
    """``strace -c``'s total calls and the calls of each system call (its fourth column, errors or not)."""
    per: dict[str, int] = {}
    total = 0
    for line in report.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit():
            if fields[-1] == "total":
                total = int(fields[3])
            else:
                per[fields[-1]] = int(fields[3])
    return total or sum(per.values()), per


async def send(url: str, key: str, n: int, stream: bool) -> dict[int, int]:
    """``n`` requests, ``CONCURRENCY`` at a time, each read to its end; their statuses counted."""
    import aiohttp

    data = body(stream, uids=[1])
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    left = n
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url + PATH, data=data, headers=headers) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses


def under_valgrind(pid: int, dump: Path, log: Path) -> subprocess.Popen:
    """Stop process ``pid`` and start its command line again, with its environment and folder, under
    callgrind (counting off until ``callgrind_control -i on``)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    environ = Path(f"/proc/{pid}/environ").read_bytes().rstrip(b"\0").split(b"\0")
    env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    cwd = os.readlink(f"/proc/{pid}/cwd")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    args = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={dump}",
            *(a.decode() for a in cmdline)]
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def zero(procs: dict[str, subprocess.Popen]) -> None:
    for proc in procs.values():
        control(proc.pid, "-z")


def dumped(procs: dict[str, subprocess.Popen], out: Path, label: str) -> dict[str, Path]:
    """Each process's dump of the instructions it executed since ``zero``, a second from now: what the answers left
    to do (the outbox's commit, the usage batch) is theirs."""
    time.sleep(1)
    for proc in procs.values():
        control(proc.pid, "-d", label)
    return {name: sorted(out.glob(f"callgrind-{name}.out.*"), key=lambda p: p.stat().st_mtime)[-1] for name in procs}


def annotated(dump: Path) -> str:
    return subprocess.run(["callgrind_annotate", "--threshold=100", str(dump)], check=True, capture_output=True,
                          text=True, timeout=300).stdout


def setups(cluster: Cluster) -> dict[str, tuple[str, dict[str, tuple[int, str]]]]:
    """What is counted: ``sn1`` (the API and miner 1) and ``bare`` (its two pass-through hops, the same number of
    hops with no logic), each its URL and its processes' pids and health URLs."""
    return {"sn1": (cluster.urls["sn1"], {"api": (cluster.pids["api"], cluster.urls["sn1"] + "/health"),
                                          "miner": (cluster.pids["miner1"], cluster.net.child("miner1").health_url)}),
            "bare": (cluster.urls["bare"], {"bare1": (cluster.pids["bare1"], cluster.urls["bare"] + "/health"),
                                            "bare2": (cluster.pids["bare2"], cluster.urls["bare2"] + "/health")})}


def count_setup(url: str, key: str, procs: dict[str, subprocess.Popen], out: Path, requests: int,
                stream: bool, label: str) -> dict[str, dict[str, float]]:
    """One setup's processes' instructions a request in one mode, their idle rate taken off."""
    asyncio.run(send(url, key, 50, stream))  # warm-up, not counted
    for proc in procs.values():
        control(proc.pid, "-i", "on")
    zero(procs)
    t0 = time.monotonic()
    time.sleep(IDLE_SECONDS)
    idle = {name: callgrind_total(dump.read_bytes()) for name, dump in dumped(procs, out, f"idle-{label}").items()}
    idle_rate = {name: n / (time.monotonic() - t0) for name, n in idle.items()}  # dumped's second counted too
    zero(procs)
    t0 = time.monotonic()
    statuses = asyncio.run(send(url, key, requests, stream))
    dumps = dumped(procs, out, label)
    elapsed = time.monotonic() - t0
    busy = {name: callgrind_total(dump.read_bytes()) for name, dump in dumps.items()}
    for proc in procs.values():
        control(proc.pid, "-i", "off")
    if statuses != {200: requests}:
        raise SystemExit(f"{label}: answers {statuses}, not {requests} x 200")
    # what a process does with no request (the API's timers: the outbox, the usage batch, the metagraph) runs as
    # long as the requests take, which Valgrind stretches: taken off at the idle rate
    figures = {}
    for name in procs:
        per_request = (busy[name] - idle_rate[name] * elapsed) / requests
        shares = library_shares(annotated(dumps[name]))  # of the whole dump: the idle part is a few percent
        figures[name] = {"per request": per_request, "idle per s": idle_rate[name],
                         "by library": {lib: share * per_request for lib, share in shares.items()}}
    return figures


def count_instructions(cluster: Cluster, out: Path, requests: int) -> dict[str, dict[str, float]]:
    counted = setups(cluster)
    targets = {name: target for _, processes in counted.values() for name, target in processes.items()}
    procs = {name: under_valgrind(pid, out / f"callgrind-{name}.out", out / f"valgrind-{name}.log")
             for name, (pid, _) in targets.items()}
    try:
        for name, (_, health) in targets.items():
            wait_http(health, procs[name], timeout=900)
        figures: dict[str, dict[str, float]] = {}
        for mode, stream in MODES:
            for setup, (url, processes) in counted.items():
                mine = {name: procs[name] for name in processes}
                for name, counts in count_setup(url, cluster.api_key, mine, out, requests, stream,
                                                f"{setup}-{mode}").items():
                    figures.setdefault(name, {})[mode] = counts["per request"]
                    figures[name][f"{mode} idle per s"] = counts["idle per s"]
                    figures[name][f"{mode} by library"] = counts["by library"]
        return figures
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()


def count_syscalls(cluster: Cluster, out: Path, requests: int) -> dict[str, dict[str, dict]]:
    figures: dict[str, dict[str, dict]] = {}
    for mode, stream in MODES:
        for url, processes in setups(cluster).values():
            asyncio.run(send(url, cluster.api_key, 50, stream))
            spies = {name: subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o",
                                             str(out / f"strace-{name}.txt")], stderr=subprocess.DEVNULL)
                     for name, (pid, _) in processes.items()}
            time.sleep(1)
            statuses = asyncio.run(send(url, cluster.api_key, requests, stream))
            time.sleep(1)
            for spy in spies.values():
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=30)
            if statuses != {200: requests}:
                raise SystemExit(f"{mode}: answers {statuses}, not {requests} x 200")
            for name in processes:
                total, per = strace_calls((out / f"strace-{name}.txt").read_text())
                top = sorted(per.items(), key=lambda kv: -kv[1])[:6]
                figures.setdefault(name, {})[mode] = {"total": total / requests,
                                                       "top": {k: v / requests for k, v in top}}
    return figures


def ratios(instructions: dict[str, dict[str, float]]) -> dict[str, float]:
    """``bare``'s instructions a request over ``sn1``'s, each mode: what ``make bench``'s throughput ratio would be
    if a request's CPU were all that bounded it (both setups share the host's cores, one process a hop), without
    the host's speed or load in it. The system calls are not in it."""
    out = {}
    for mode, _ in MODES:
        try:
            sn1 = instructions["api"][mode] + instructions["miner"][mode]
            bare = instructions["bare1"][mode] + instructions["bare2"][mode]
        except KeyError:
            continue
        out[mode] = bare / sn1
    return out


def report(instructions: dict, syscalls: dict) -> str:
    lines = ["per request (k = 1, concurrency 4)        instructions     system calls (the most made)"]
    for name in ("api", "miner", "bare1", "bare2"):
        for mode, _ in MODES:
            ins = instructions.get(name, {}).get(mode)
            sc = syscalls.get(name, {}).get(mode)
            ins_text = "" if ins is None else f"{ins / 1e6:8.2f} M"
            sc_text = "" if sc is None else f"{sc['total']:6.1f}  " + ", ".join(f"{k} {v:.1f}" for k, v in sc["top"].items())
            lines.append(f"  {name:<6} {mode:<11} {ins_text:>24}   {sc_text}")
    for mode, ratio in ratios(instructions).items():
        lines.append(f"  bare / sn1 instructions, {mode}: {ratio:.2f}x")
    for mode, _ in MODES:
        spent = {name: instructions.get(name, {}).get(f"{mode} by library") for name in ("api", "miner", "bare1")}
        if all(spent.values()):
            lines.append(f"  where a {mode} request's instructions go (K): " + "; ".join(
                f"{name} " + ", ".join(f"{lib} {n / 1e3:.0f}" for lib, n in libs.items() if n >= 1e3)
                for name, libs in spent.items()))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300, help="requests counted per mode (default 300)")
    p.add_argument("--skip", default="", help="instructions or syscalls")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    missing = [tool for tool, part in (("valgrind", "instructions"), ("callgrind_control", "instructions"),
                                       ("strace", "syscalls")) if part not in skip and not shutil.which(tool)]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found (Debian: apt install valgrind strace), or --skip the part")
    out = ROOT / "bench" / "instructions"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    instructions: dict = {}
    syscalls: dict = {}
    if "syscalls" not in skip:
        cluster = Cluster(out / "run-syscalls", miners=2)
        try:
            cluster.start()
            syscalls = count_syscalls(cluster, out, args.requests * 4)
        finally:
            cluster.stop()
    if "instructions" not in skip:
        cluster = Cluster(out / "run-instructions", miners=2)
        try:
            cluster.start()
            instructions = count_instructions(cluster, out, args.requests)
        finally:
            cluster.stop()
    text = report(instructions, syscalls)
    print(text)
    (ROOT / "bench" / "instructions.json").write_text(json.dumps(
        {"requests": args.requests, "concurrency": CONCURRENCY, "instructions": instructions,
         "bare / sn1": ratios(instructions), "syscalls": syscalls},
        indent=2))


if __name__ == "__main__":
    main()
