"""Micro figures for the benchmark: the per-call cost of each piece of the hot path.

Sign and verify (btauth/1, sr25519), SSE parsing throughput, and, when the
engineers who own them have written them, the auth + rate-limit and validator
micro benches (``tests/bench/bench_auth.py``, ``tests/bench/bench_validator.py``)
and the scoring outbox's write. Each figure is measured in this process, in a loop, with
nothing else running.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOT_YET = "not available yet"
sys.path.insert(0, str(ROOT / "scripts"))


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def sign_verify_us(n: int = 2000) -> dict[str, float]:
    """Sign with the cached keypair (as the API does), verify as a miner does (fresh nonce each)."""
    from bittensor.sp_core import Keypair

    from shared.signing import Authorizer, RequestVerifier, Signer

    sender, receiver = Keypair.create_from_uri("//BenchValidator"), Keypair.create_from_uri("//BenchMiner")
    signer = Signer(sender)
    body = b'{"model":"bench","messages":[{"role":"user","content":"Hello"}],"stream":true}'
    url = "http://127.0.0.1:1/v1/chat/completions"
    sign_us = per_call_us(lambda: signer.headers("POST", url, body, receiver.ss58_address), n)
    # the verifier first, as a receiver starts before it is sent anything: a nonce signed before its start is
    # refused (SignedBeforeStart), as one its previous process may have taken
    verifier = RequestVerifier(receiver.ss58_address, Authorizer(lambda: {sender.ss58_address}))
    signed = [signer.headers("POST", url, body, receiver.ss58_address) for _ in range(n + 1)]
    it = iter(signed)
    verify_us = per_call_us(
        lambda: verifier.verify(next(it), body, method="POST", path="/v1/chat/completions"), n)
    return {"sign_us": sign_us, "verify_us": verify_us}


def sse_parse_mb_s(megabytes: int = 8, piece: int = 4096) -> float:
    """Feed a realistic chat-completion stream in network-sized pieces."""
    from bench_upstream import stream_bytes

    from shared.sse import SSEParser

    one = stream_bytes()
    data = one * (megabytes * (1 << 20) // len(one))
    pieces = [data[i:i + piece] for i in range(0, len(data), piece)]
    parser = SSEParser()
    t0 = time.perf_counter()
    for p in pieces:
        parser.feed(p)
    parser.close()
    return len(data) / (time.perf_counter() - t0) / 1e6


def outbox_write_us(n: int = 400) -> dict[str, float]:
    """The scoring outbox's write per request (SQLite file, a payload of 20 chunks): one by one and grouped."""
    import asyncio
    import tempfile

    from bench_upstream import chunk_frame

    from shared.store.outbox import SQLiteOutbox

    chunks = [chunk_frame(i)[6:-2].decode() for i in range(20)]
    payload = {"uids": [1], "chunks": {"1": chunks}, "timings": {"1": [0.001 * i for i in range(20)]},
               "errors": {}, "winner": 1, "created_at": time.time(), "kind": "chat", "request_id": "x" * 32,
               "body": {"model": "bench", "messages": [{"role": "user", "content": "Hello"}], "stream": True}}

    async def run() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as d:
            box = SQLiteOutbox(Path(d) / "api.db", max_items=100_000)
            t0 = time.perf_counter()
            for _ in range(n):
                await box.put(payload)
            single = (time.perf_counter() - t0) / n * 1e6
            t0 = time.perf_counter()
            for _ in range(n // 10):
                await box.put_many([payload] * 10)
            grouped = (time.perf_counter() - t0) / (n // 10 * 10) * 1e6
            await box.close()
        return {"one_per_transaction_us": single, "ten_per_transaction_us": grouped}

    return asyncio.run(run())


def client_cost_us(seconds: float = 2.0, concurrency: int = 16) -> dict[str, float]:
    """CPU per streamed request of an HTTP client alone (this process's CPU time / requests): aiohttp's
    ``ClientSession`` as the API and the miner use it, and the raw asyncio protocol of the load generator.

    Every hop of both ``bare`` and ``sn1`` pays aiohttp's figure once; the difference is what a
    hand-written client would save per hop (see the stream budget line of the table).
    """
    import asyncio
    import resource
    import subprocess

    import aiohttp
    import uvloop
    from bench_cluster import free_port, wait_http
    from bench_load import closed_loop
    from bench_measure import body

    port = free_port()
    upstream = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_upstream.py"), "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, payload = f"http://127.0.0.1:{port}/v1/chat/completions", body(True)

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    async def with_aiohttp() -> tuple[int, float]:
        done, c0 = 0, cpu()
        stop = time.perf_counter() + seconds
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < stop:
                    async with session.post(url, data=payload, headers={"Content-Type": "application/json"}) as r:
                        async for _ in r.content.iter_any():
                            pass
                    done += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, cpu() - c0

    async def with_protocol() -> tuple[int, float]:
        c0 = cpu()
        result = await closed_loop(url, payload, {}, concurrency, seconds)
        return result["requests"], cpu() - c0

    try:
        wait_http(f"http://127.0.0.1:{port}/health", upstream)
        out = {}
        for name, fn in (("aiohttp", with_aiohttp), ("protocol", with_protocol)):
            requests, used = uvloop.run(fn())
            out[f"{name}_us"] = used / max(1, requests) * 1e6
        return out
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


def _redis_env() -> None:
    """Let the auth bench measure Redis too when a local server answers (db 12, namespaced by the bench)."""
    import os
    import socket

    if os.environ.get("REDIS_URL"):
        return
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/12"
    except OSError:
        pass


def external_bench(relpath: str) -> Any:
    """Run another engineer's ``main()`` if the file exists; return what it returned or printed."""
    path = ROOT / relpath
    if not path.exists():
        return NOT_YET
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    out = io.StringIO()
    argv, sys.argv = sys.argv, [str(path)]  # its main() must not see our command line
    try:
        with contextlib.redirect_stdout(out):
            spec.loader.exec_module(module)
            result = module.main() if hasattr(module, "main") else None
    except SystemExit as e:
        result = None if e.code in (0, None) else f"exited with {e.code}"
    except Exception as e:  # noqa: BLE001 - a broken external bench is reported, not fatal
        return f"failed: {type(e).__name__}: {e}"
    finally:
        sys.argv = argv
    return result if result is not None else out.getvalue().strip() or NOT_YET


def micro_figures() -> dict[str, Any]:
    figures: dict[str, Any] = dict(sign_verify_us())
    figures["sse_parse_mb_s"] = sse_parse_mb_s()
    figures["outbox_write_us"] = outbox_write_us()
    figures["client_us"] = client_cost_us()
    _redis_env()
    figures["auth_rate_limit"] = external_bench("tests/bench/bench_auth.py")
    figures["validator"] = external_bench("tests/bench/bench_validator.py")
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(micro_figures(), indent=1, default=str))
