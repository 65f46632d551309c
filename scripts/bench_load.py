"""The benchmark's load generators, each run in its own process.

``run``: closed-loop HTTP/1.1 keep-alive load (``--concurrency`` connections,
each sending the next request when the previous answer is complete) for
``--duration`` seconds; prints one JSON line (requests, errors, rps, p50/p99 ms).
It speaks raw HTTP over asyncio protocols on uvloop instead of ``aiohttp``'s
client, which would cap out near the rate of the servers it measures; wrk is
used instead when installed (``wrk_run``).

``hold``: opens ``--streams`` streaming requests at once, prints ``ready N``
once each has received its first bytes, and keeps them open until stdin
closes (the open-streams memory test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)")


class _Conn(asyncio.Protocol):
    """One keep-alive connection: ``send()`` a prebuilt request, await the complete response's status."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.body_start = -1
        self.length = -1  # -1: chunked
        self.pos = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def send(self, request: bytes) -> asyncio.Future[int]:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        if self.buf:  # a response already buffered (it arrived with the previous one)
            self._deliver()
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._deliver()

    def _deliver(self) -> None:
        end = self._complete()
        if end >= 0 and self.waiter and not self.waiter.done():
            del self.buf[:end]
            status = self.status
            self._reset()
            self.waiter.set_result(status)

    def _complete(self) -> int:
        """Index one past the end of the response if it is complete, else -1."""
        buf = self.buf
        if self.body_start < 0:
            idx = buf.find(b"\r\n\r\n")
            if idx < 0:
                return -1
            head = bytes(buf[:idx]).lower()
            self.status = int(head[9:12])
            m = _CONTENT_LENGTH.search(head)
            self.length = int(m.group(1)) if m and b"chunked" not in head else -1
            self.body_start = self.pos = idx + 4
        if self.length >= 0:
            end = self.body_start + self.length
            return end if len(buf) >= end else -1
        while True:  # chunked transfer encoding
            nl = buf.find(b"\r\n", self.pos)
            if nl < 0:
                return -1
            size = int(buf[self.pos:nl].split(b";")[0], 16)
            if size == 0:
                return nl + 4 if len(buf) >= nl + 4 else -1
            nxt = nl + 2 + size + 2
            if len(buf) < nxt:
                return -1
            self.pos = nxt


def build_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    u = urlsplit(url)
    lines = [f"POST {u.path or '/'} HTTP/1.1", f"Host: {u.hostname}:{u.port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
    return u.hostname or "127.0.0.1", u.port or 80, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def closed_loop(url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float) -> dict:
    host, port, request = build_request(url, body, headers)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal errors
        conn: _Conn | None = None
        while time.perf_counter() < stop_at:
            if conn is None or conn.transport is None or conn.transport.is_closing():
                _, conn = await loop.create_connection(_Conn, host, port)
            t0 = time.perf_counter()
            try:
                status = await asyncio.wait_for(conn.send(request), 30.0)
            except (ConnectionError, TimeoutError, ValueError):
                errors += 1
                conn = None
                continue
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors += 1
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    started = time.perf_counter()
    stop_at = started + duration
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "seconds": elapsed, "rps": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "tool": "python"}


async def hold_streams(url: str, bodies: list[bytes], headers: dict[str, str], streams: int) -> None:
    """Open ``streams`` streaming requests (bodies round-robin), report when all have sent bytes, hold."""
    requests = [build_request(url, b, headers) for b in bodies]
    loop = asyncio.get_running_loop()
    first = asyncio.Semaphore(0)
    transports = []

    class Holder(asyncio.Protocol):
        got = False

        def data_received(self, data: bytes) -> None:
            if not self.got and b"data:" in data:
                self.got = True
                first.release()

    sem = asyncio.Semaphore(64)  # open connections at a bounded pace, as real clients arrive

    async def open_one(i: int) -> None:
        host, port, request = requests[i % len(requests)]
        async with sem:
            t, _ = await loop.create_connection(Holder, host, port)
            t.write(request)
            transports.append(t)

    await asyncio.gather(*(open_one(i) for i in range(streams)))
    deadline = time.monotonic() + 60
    ready = 0
    while ready < streams and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(first.acquire(), timeout=max(0.1, deadline - time.monotonic()))
            ready += 1
        except TimeoutError:
            break
    print(f"ready {ready}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for t in transports:
        t.close()


def _wrk_time_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def wrk_run(url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float) -> dict:
    """The same measurement with wrk (a C load generator that is never the bottleneck here)."""
    lua = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body.decode())}",
           'wrk.headers["Content-Type"] = "application/json"']
    lua += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write("\n".join(lua) + "\n")
        script = f.name
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "30s",
             "-s", script, url], capture_output=True, text=True, timeout=duration + 60, check=False).stdout
    finally:
        Path(script).unlink(missing_ok=True)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (total and rps and p50 and p99):
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    errors = int(non2xx.group(1)) if non2xx else 0
    errors += sum(int(g) for g in sock.groups()) if sock else 0
    return {"requests": int(total.group(1)), "errors": errors, "seconds": duration, "rps": float(rps.group(1)),
            "p50_ms": _wrk_time_ms(p50.group(1)), "p99_ms": _wrk_time_ms(p99.group(1)), "tool": "wrk"}


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["run", "hold"])
    p.add_argument("--url", required=True)
    p.add_argument("--body", action="append", required=True, help="request body (hold: several, round-robin)")
    p.add_argument("--header", action="append", default=[], help="name:value")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--streams", type=int, default=1000)
    args = p.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    import uvloop

    if args.mode == "run":
        result = uvloop.run(closed_loop(args.url, args.body[0].encode(), headers, args.concurrency, args.duration))
        print(json.dumps(result), flush=True)
    else:
        uvloop.run(hold_streams(args.url, [b.encode() for b in args.body], headers, args.streams))


if __name__ == "__main__":
    main()
