"""The benchmark's own tools: its load generator must count responses right, its table must judge right.

A load generator that mis-frames a chunked stream would stall or double-count
and make every figure in ``make bench`` a lie; the verdicts are the point of
the table. Both are tested without starting anything.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from bench_instructions import REST, callgrind_total, library_shares, ratios, strace_calls  # noqa: E402
from bench_load import _Conn, _wrk_time_ms, build_request  # noqa: E402
from bench_profile import summarize  # noqa: E402
from bench_report import render_table  # noqa: E402

CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"e\r\ndata: {\"a\":1}\n\n\r\n" b"e\r\ndata: [DONE]\n\n\r\n" b"0\r\n\r\n")
SIZED = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\n{\"e\"}"


class _Transport:
    def write(self, data: bytes) -> None:
        pass


@pytest.mark.parametrize("split", [1, 2, 7, 50, 10_000])
async def test_connection_frames_back_to_back_responses_however_split(split: int) -> None:
    conn = _Conn()
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    wire = CHUNKED + SIZED + CHUNKED
    statuses = []
    for _ in range(3):
        waiter = conn.send(b"GET / HTTP/1.1\r\n\r\n")
        while not waiter.done() and wire:
            piece, wire = wire[:split], wire[split:]
            conn.data_received(piece)
        statuses.append(await asyncio.wait_for(waiter, 1))
    assert statuses == [200, 429, 200]
    assert not wire and not conn.buf


def test_request_bytes_carry_length_and_headers() -> None:
    host, port, raw = build_request("http://127.0.0.1:8123/v1/chat/completions", b"{}", {"Authorization": "Bearer k"})
    assert (host, port) == ("127.0.0.1", 8123)
    assert raw.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"Content-Length: 2\r\n" in raw and b"Authorization: Bearer k\r\n" in raw and raw.endswith(b"\r\n\r\n{}")


def test_wrk_times_in_every_unit() -> None:
    assert _wrk_time_ms("850.00us") == pytest.approx(0.85)
    assert _wrk_time_ms("1.50ms") == 1.5
    assert _wrk_time_ms("2.00s") == 2000.0


def _run(rps: float, p50: float) -> dict:
    return {"rps": rps, "p50_ms": p50, "p99_ms": p50 * 2, "errors": 0, "cpu_share": {"x": 0.5}}


def _results(sn1_rps: float, sn1_p50: float, cpus: int) -> dict:
    points = [{"stream": s, "concurrency": c, "direct": _run(5000, 0.1), "bare": _run(1000, 1.0),
               "sn1": _run(sn1_rps, sn1_p50)} for s in (False, True) for c in (1, 64)]
    return {"machine": {"cpus": cpus, "python": "3.11"}, "settings": {"rounds": 3, "seconds": 8, "log_level": "INFO"},
            "loadgen": "wrk", "points": points,
            "fanout": {k: _run(v, 1) for k, v in {"1": 300, "3": 100, "5": 60, "10": 30}.items()},
            "open_streams": {"streams": 1000, "ready": 1000, "idle_rss_mb": 90, "rss_mb": 130},
            "workers": {"1": _run(300, 1), "2": _run(310, 1), "cpus": cpus}}


def test_table_passes_only_when_every_target_is_met() -> None:
    table, ok = render_table(_results(sn1_rps=750, sn1_p50=1.5, cpus=2))
    assert ok and "FAIL" not in table and "n/a (2 cores" in table
    table, ok = render_table(_results(sn1_rps=500, sn1_p50=1.5, cpus=2))
    assert not ok and "0.50x" in table  # 500/1000 misses both throughput targets
    table, ok = render_table(_results(sn1_rps=750, sn1_p50=1.8, cpus=2))
    assert not ok and "+0.80 ms" in table  # added latency over 0.7 ms
    _, ok = render_table(_results(sn1_rps=750, sn1_p50=1.5, cpus=8))
    assert not ok  # with the cores to spare, 1.03x for two workers is a failure


def test_table_shows_cpu_per_request_and_the_budget_each_target_leaves() -> None:
    table, _ = render_table(_results(sn1_rps=750, sn1_p50=1.5, cpus=2))
    # bare: half a core at 1,000/s = 0.50 ms a request; sn1: half a core at 750/s = 0.67 ms
    assert "bare 0.50 = x 0.50" in table and "sn1  0.67 = x 0.67" in table
    assert "0.6x allows sn1 0.83" in table and "0.7x allows sn1 0.71" in table


def test_budget_line_splits_what_a_target_leaves_for_our_logic() -> None:
    results = _results(sn1_rps=750, sn1_p50=1.5, cpus=2)
    results["micro"] = {"sign_us": 20.0, "verify_us": 40.0, "sse_parse_mb_s": 300.0,
                        "client_us": {"aiohttp_us": 64.0, "protocol_us": 16.0}}
    point = next(p for p in results["points"] if p["stream"] and p["concurrency"] == 64)
    # bare at 1,000/s: two hops 0.15 ms each + upstream 0.05 = 0.35 ms; 0.7x allows 0.50 ms
    point["bare"]["cpu_share"] = {"bare1": 0.15, "bare2": 0.15, "upstream": 0.05}
    # sn1 at 750/s: api 0.30 + miner 0.225 + upstream 0.0375 (= 0.40 + 0.30 + 0.05 ms a request)
    point["sn1"]["cpu_share"] = {"api": 0.30, "miner": 0.225, "upstream": 0.0375}
    table, _ = render_table(results)
    line = next(x for x in table.splitlines() if "0.7x leaves" in x)
    # 0.50 - 0.30 (hops) - 0.05 (upstream) - 0.06 (sign + verify) = 0.09 left; sn1 spends 0.75 - 0.41 = 0.34
    assert "two HTTP hops 0.30" in line and "upstream/load/validator 0.05" in line and "sign+verify 0.06" in line
    assert "0.7x leaves 0.09 ms" in line and "it takes 0.34 now" in line
    assert "aiohttp 64 us, a raw asyncio protocol 16 us" in table


def test_paced_stream_is_shown_beside_the_targets_without_a_verdict() -> None:
    results = _results(sn1_rps=750, sn1_p50=1.5, cpus=2)
    table, ok = render_table(results)
    assert "paced" not in table  # a run that skipped it
    results["paced"] = {"direct": _run(1500, 42.0), "bare": _run(1000, 55.0), "sn1": _run(500, 70.0)}
    table, ok_with = render_table(results)
    row = next(x for x in table.splitlines() if x.startswith("paced stream c=64"))
    assert "0.50x" in row and "not a target" in row and "FAIL" not in row
    assert ok_with == ok, "the paced point changes no verdict"


def test_table_shows_each_rounds_ratio_beside_the_median_verdict() -> None:
    results = _results(sn1_rps=750, sn1_p50=1.5, cpus=2)
    point = next(p for p in results["points"] if not p["stream"] and p["concurrency"] == 64)
    point["bare"]["rounds"], point["sn1"]["rounds"] = [1000, 1000, 1000], [550, 750, 800]
    low = next(p for p in results["points"] if not p["stream"] and p["concurrency"] == 1)
    low["bare"]["p50_rounds"], low["sn1"]["p50_rounds"] = [1.0, 1.0, 1.0], [1.5, 1.9, 1.6]
    table, ok = render_table(results)
    assert "c=64 sn1/bare: non-stream 0.55x 0.75x 0.80x" in table
    assert "c=1 added p50: non-stream +0.50 ms +0.90 ms +0.60 ms" in table
    assert ok  # the verdicts still come from the medians


def test_profile_summary_counts_only_the_event_loop_thread(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "_run_module_as_main (<frozen runpy>:198);run (uvloop:1);handler (api/chat.py:5) 30\n"
        "_run_module_as_main (<frozen runpy>:198);run (uvloop:1);sign (shared/signing.py:9) 10\n"
        "Thread._bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 40\n"
    )
    text = summarize(raw, 5)
    assert "40 samples on the event loop's thread (40 in other threads, not counted)" in text
    assert "75.0%  handler (api/chat.py:5)" in text and "25.0%  sign (shared/signing.py:9)" in text
    assert "_worker" not in text


def test_the_sign_and_verify_figures_verify_every_request() -> None:
    """``make bench``'s micro figures verify real signed requests as a miner does: its verifier made after the
    requests were signed refused them all as signed before its start (``SignedBeforeStart``), and the bench
    stopped with a traceback before printing its table."""
    from bench_micro import sign_verify_us

    figures = sign_verify_us(n=20)
    assert figures["sign_us"] > 0 and figures["verify_us"] > 0


STRACE_C = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 88.91    0.717267        8965        80        18 futex
  3.64    0.029378           6      4302           write
  2.93    0.023641           1     14604           getpid
------ ----------- ----------- --------- --------- ----------------
100.00    0.806700          25     18986        18 total
"""


def test_syscall_counts_read_the_calls_column_with_or_without_errors() -> None:
    """A line with an errors column has one field more: reading the wrong column would count the errors (18
    futex calls instead of 80) or the microseconds a call (8,965), and every per-request figure would lie."""
    total, per = strace_calls(STRACE_C)
    assert total == 18986
    assert per == {"futex": 80, "write": 4302, "getpid": 14604}


def test_instruction_count_is_the_dumps_summary_and_a_dump_without_one_is_refused() -> None:
    dump = b"version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 924123725\n\nfn=(1) main\n5 12\n"
    assert callgrind_total(dump) == 924123725
    assert callgrind_total(b"events: Ir\ntotals: 42\n") == 42
    with pytest.raises(ValueError):
        callgrind_total(b"events: Ir\n")  # a dump cut short must not read as 0 instructions a request


ANNOTATE = """\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
1,000 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                    file:function
--------------------------------------------------------------------------------
500 (50.00%)  /tmp/Python-3.11.7/Python/ceval.c:_PyEval_EvalFrameDefault'2 [/usr/lib/libpython3.11.so.1.0]
200 (20.00%)  ???:<&curve25519_dalek::FieldElement51 as core::ops::arith::Mul>::mul [/v/site-packages/bittensor_core/bittensor_core.abi3.so]
100 (10.00%)  ???:sqlite3VdbeExec [/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6]
 90 ( 9.00%)  ???:SHA256_Update [/usr/lib/x86_64-linux-gnu/libcrypto.so.3]
 60 ( 6.00%)  /tmp/Python-3.11.7/./Include/object.h:_PyFrame_Clear
 50 ( 5.00%)  ???:0x00000000000284f0 [/v/site-packages/orjson/orjson.cpython-311-x86_64-linux-gnu.so]
"""


def test_library_shares_put_each_functions_instructions_under_its_library() -> None:
    shares = library_shares(ANNOTATE)
    # the interpreter's own (with and without an object file) is the rest; the totals line is not a function
    assert shares == pytest.approx({"sr25519": 0.2, "SQLite": 0.1, "OpenSSL": 0.09, "orjson": 0.05, REST: 0.56})
    assert library_shares("no functions listed") == {}


def test_bare_over_sn1_is_the_pass_through_pairs_instructions_over_the_api_and_miners() -> None:
    counted = {"api": {"stream": 3.0e6, "non-stream": 2.5e6}, "miner": {"stream": 1.0e6, "non-stream": 1.5e6},
               "bare1": {"stream": 0.6e6, "non-stream": 0.5e6}, "bare2": {"stream": 0.4e6, "non-stream": 0.5e6}}
    assert ratios(counted) == pytest.approx({"non-stream": 0.25, "stream": 0.25})
    del counted["bare2"]["stream"]  # a mode a setup was not counted in has no ratio, rather than a wrong one
    assert ratios(counted) == pytest.approx({"non-stream": 0.25})
