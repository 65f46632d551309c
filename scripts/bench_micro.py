"""Micro figures for the benchmark: the per-call cost of each piece of the hot path.

Sign and verify (btauth/1, sr25519), SSE parsing throughput, and, when the
engineers who own them have written them, the auth + rate-limit and validator
micro benches (``tests/bench/bench_auth.py``, ``tests/bench/bench_validator.py``)
and the outbox write. Each figure is measured in this process, in a loop, with
nothing else running.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOT_YET = "not available yet"


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
    signed = [signer.headers("POST", url, body, receiver.ss58_address) for _ in range(n + 1)]
    verifier = RequestVerifier(receiver.ss58_address, Authorizer(lambda: {sender.ss58_address}))
    it = iter(signed)
    verify_us = per_call_us(
        lambda: verifier.verify(next(it), body, method="POST", path="/v1/chat/completions"), n)
    return {"sign_us": sign_us, "verify_us": verify_us}


def sse_parse_mb_s(megabytes: int = 8, piece: int = 4096) -> float:
    """Feed a realistic chat-completion stream in network-sized pieces."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
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


def outbox_write_us() -> float | str:
    """The scoring outbox's per-request write, once the outbox exists in the API."""
    for mod in ("api.outbox", "api.scoring_outbox"):
        if importlib.util.find_spec(mod) is not None:
            return f"{mod} exists: measured by its own bench ({NOT_YET} here)"
    return NOT_YET


def external_bench(relpath: str) -> Any:
    """Run another engineer's ``main()`` if the file exists; return what it returned or printed."""
    path = ROOT / relpath
    if not path.exists():
        return NOT_YET
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            spec.loader.exec_module(module)
            result = module.main() if hasattr(module, "main") else None
    except SystemExit as e:
        result = None if e.code in (0, None) else f"exited with {e.code}"
    except Exception as e:  # noqa: BLE001 - a broken external bench is reported, not fatal
        return f"failed: {type(e).__name__}: {e}"
    return result if result is not None else out.getvalue().strip() or NOT_YET


def micro_figures() -> dict[str, Any]:
    figures: dict[str, Any] = dict(sign_verify_us())
    figures["sse_parse_mb_s"] = sse_parse_mb_s()
    figures["outbox_write_us"] = outbox_write_us()
    figures["auth_rate_limit"] = external_bench("tests/bench/bench_auth.py")
    figures["validator"] = external_bench("tests/bench/bench_validator.py")
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(micro_figures(), indent=1, default=str))
