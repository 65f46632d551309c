"""The benchmark's table (with PASS/FAIL per target) and its PNG chart.

Targets come from issue 7: sn1/bare throughput at concurrency 64 (>= 0.6
non-streaming, >= 0.7 streaming), added p50 latency at concurrency 1 (<= 0.7 ms),
fan-out cost linear in k, API RSS with 1,000 open streams (<= 150 MB), and
WORKERS=2 >= 1.5x one worker where the cores allow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SETUPS = ("direct", "bare", "sn1")
MIN_CORES_FOR_WORKERS = 4  # 2 API workers + miner + upstream + load generator each need a core
THROUGHPUT_TARGETS = ((False, 0.6), (True, 0.7))  # (streaming?, least sn1/bare at concurrency 64)


def _mode(stream: bool) -> str:
    return "stream" if stream else "non-stream"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _point(results: dict, stream: bool, concurrency: int) -> dict:
    return next(p for p in results["points"] if p["stream"] == stream and p["concurrency"] == concurrency)


def _row(label: str, cells: list[str], check: str = "", target: str = "", verdict: str = "") -> str:
    return f"{label:<26}" + "".join(f"{c:>16}" for c in cells) + f"  {check:>12}  {target:<22} {verdict}"


def _throughput_rows(results: dict, verdicts: list[bool]) -> list[str]:
    rows = []
    for stream, need in THROUGHPUT_TARGETS:
        mode = _mode(stream)
        p = _point(results, stream, 64)
        ratio = p["sn1"]["rps"] / p["bare"]["rps"] if p["bare"]["rps"] else 0.0
        ok = ratio >= need and p["sn1"]["errors"] == 0
        verdicts.append(ok)
        rows.append(_row(f"{mode} c=64 req/s", [f"{p[s]['rps']:.0f}" for s in SETUPS],
                         f"{ratio:.2f}x", f"sn1/bare >= {need}", _verdict(ok)))
        rows.append(_row(f"{mode} c=64 p50/p99 ms", [f"{p[s]['p50_ms']:.1f}/{p[s]['p99_ms']:.1f}" for s in SETUPS]))
        q = _point(results, stream, 1)
        added = q["sn1"]["p50_ms"] - q["bare"]["p50_ms"]
        ok = added <= 0.7 and q["sn1"]["errors"] == 0
        verdicts.append(ok)
        rows.append(_row(f"{mode} c=1 p50/p99 ms", [f"{q[s]['p50_ms']:.2f}/{q[s]['p99_ms']:.2f}" for s in SETUPS],
                         f"+{added:.2f} ms", "added p50 <= 0.7 ms", _verdict(ok)))
    return rows


def _paced_rows(results: dict) -> list[str]:
    """The paced stream beside the targets: the same ratio, printed without a verdict (the issue's
    upstream sends without delays; a model's stream arrives a chunk at a time)."""
    p = results.get("paced")
    if not p:
        return []
    ratio = p["sn1"]["rps"] / p["bare"]["rps"] if p["bare"]["rps"] else 0.0
    rows = [_row("paced stream c=64 req/s", [f"{p[s]['rps']:.0f}" for s in SETUPS], f"{ratio:.2f}x",
                 "not a target", "(2 ms between chunks)"),
            _row("paced stream p50/p99 ms", [f"{p[s]['p50_ms']:.1f}/{p[s]['p99_ms']:.1f}" for s in SETUPS])]
    if p["sn1"]["errors"]:
        rows.append(f"paced stream errors (sn1): {p['sn1']['errors']}")
    return rows


def _rounds_lines(results: dict) -> list[str]:
    """Each round's sn1 against the bare run beside it in time: how far one round is from another.

    The verdicts use the medians (the issue's rule); these lines only show the spread, which on a
    shared VM is often as wide as the distance to a target.
    """
    ratios, added = [], []
    for stream in (False, True):
        mode = _mode(stream)
        hi, lo = _point(results, stream, 64), _point(results, stream, 1)
        pairs = zip(hi["sn1"].get("rounds", []), hi["bare"].get("rounds", []), strict=False)
        if cells := [f"{s / b:.2f}x" for s, b in pairs if b]:
            ratios.append(f"{mode} " + " ".join(cells))
        pairs = zip(lo["sn1"].get("p50_rounds", []), lo["bare"].get("p50_rounds", []), strict=False)
        if cells := [f"{s - b:+.2f} ms" for s, b in pairs]:
            added.append(f"{mode} " + " ".join(cells))
    lines = ["round by round, sn1 against the bare run beside it:"]
    lines.append("  c=64 sn1/bare: " + ("; ".join(ratios) or "n/a"))
    lines.append("  c=1 added p50: " + ("; ".join(added) or "n/a (not recorded by this run)"))
    return lines


def _fanout_rows(results: dict, verdicts: list[bool]) -> list[str]:
    fan = results.get("fanout")
    if not fan:
        return ["fan-out                   skipped"]
    k1, k10 = fan["1"]["rps"], fan["10"]["rps"]
    ratio = k10 / (k1 / 10) if k1 else 0.0
    ok = ratio >= 0.6 and all(v["errors"] == 0 for v in fan.values())
    verdicts.append(ok)
    cells = "  ".join(f"k={k}: {fan[k]['rps']:.0f}/s" for k in ("1", "3", "5", "10"))
    return [f"fan-out c=16 (sn1)        {cells}",
            _row("fan-out k=10 vs k=1/10", ["", "", ""], f"{ratio:.2f}x", ">= 0.6", _verdict(ok))]


def _streams_row(results: dict, verdicts: list[bool]) -> list[str]:
    s = results.get("open_streams")
    if not s:
        return ["open streams              skipped"]
    ok = s["ready"] >= s["streams"] and s["rss_mb"] <= 150
    verdicts.append(ok)
    return [_row(f"{s['streams']} open streams", ["", f"idle {s['idle_rss_mb']:.0f} MB",
                                                   f"RSS {s['rss_mb']:.0f} MB"],
                 f"{s['ready']} open", "API RSS <= 150 MB", _verdict(ok))]


def _workers_row(results: dict, verdicts: list[bool]) -> list[str]:
    w = results.get("workers")
    if not w:
        return ["WORKERS=2                 skipped"]
    ratio = w["2"]["rps"] / w["1"]["rps"] if w["1"]["rps"] else 0.0
    if w["cpus"] >= MIN_CORES_FOR_WORKERS:
        ok = ratio >= 1.5
        verdicts.append(ok)
        verdict = _verdict(ok)
    else:
        verdict = f"n/a ({w['cpus']} cores: both already busy with 1 worker)"
    return [_row("WORKERS=2 vs 1 (c=64)", ["", f"1: {w['1']['rps']:.0f}/s", f"2: {w['2']['rps']:.0f}/s"],
                 f"{ratio:.2f}x", ">= 1.5x if cores allow", verdict)]


def _micro_rows(results: dict) -> list[str]:
    m = results.get("micro")
    if not m:
        return []
    rows = [f"micro: sign {m['sign_us']:.0f} us/call, verify {m['verify_us']:.0f} us/call, "
            f"SSE parse {m['sse_parse_mb_s']:.0f} MB/s"]
    client = m.get("client_us")
    if isinstance(client, dict):
        rows.append(f"micro: HTTP client CPU per streamed request: aiohttp {client['aiohttp_us']:.0f} us, "
                    f"a raw asyncio protocol {client['protocol_us']:.0f} us (each hop of bare and sn1 pays "
                    f"aiohttp's)")
    box = m.get("outbox_write_us")
    if isinstance(box, dict):
        rows.append(f"micro: outbox write per request (SQLite, 20-chunk payload): "
                    f"{box['one_per_transaction_us']:.0f} us one per transaction, "
                    f"{box['ten_per_transaction_us']:.0f} us grouped by 10 (the API's group commit)")
    for name, key in (("auth + rate limit", "auth_rate_limit"), ("validator", "validator")):
        value = m.get(key)
        text = f"{value:.1f} us/request" if isinstance(value, float) else str(value)
        rows.append(f"micro: {name}: " + text.replace("\n", "\n       "))
    return rows


def _cpu_per_request(run: dict) -> tuple[float, str]:
    """All processes' CPU per request (ms) and each one's part, from the run's CPU shares."""
    rps = run["rps"] or 1.0
    parts = {name: share * 1000 / rps for name, share in run.get("cpu_share", {}).items()}
    return sum(parts.values()), " + ".join(f"{name} {ms:.2f}" for name, ms in parts.items())


def _cores_lines(results: dict) -> list[str]:
    """How the cores were shared, as CPU per request: where the time goes, and what a target leaves.

    With every core busy, throughput is cores / (CPU per request), so a target ratio r lets sn1
    spend at most bare's CPU per request / r in all (the budget printed beside each mode).
    """
    lines = [f"cores: {results['machine']['cpus']}, no pinning, every process shares them. "
             "CPU per request at c=64, in ms (each process's CPU time / requests):"]
    for stream, need in THROUGHPUT_TARGETS:
        p = _point(results, stream, 64)
        bare_ms, bare_parts = _cpu_per_request(p["bare"])
        sn1_ms, sn1_parts = _cpu_per_request(p["sn1"])
        mode = _mode(stream)
        lines.append(f"  {mode:<10} bare {bare_ms:.2f} = {bare_parts}")
        lines.append(f"  {'':<10} sn1  {sn1_ms:.2f} = {sn1_parts}; {need}x allows sn1 {bare_ms / need:.2f}")
        if budget := _budget_line(results, p, need):
            lines.append(budget)
    return lines


def _budget_line(results: dict, point: dict, need: float) -> str | None:
    """What a target leaves for our logic: its CPU budget minus what sn1 cannot avoid, namely the
    two hops' HTTP work (bare's two proxies), the processes around them (upstream, load generator,
    validator) and one sign plus one verify (the protocol's signature)."""
    micro = results.get("micro") or {}
    if "sign_us" not in micro:
        return None
    rps_bare, rps_sn1 = point["bare"]["rps"] or 1.0, point["sn1"]["rps"] or 1.0
    share_bare, share_sn1 = point["bare"].get("cpu_share", {}), point["sn1"].get("cpu_share", {})
    hops = sum(v for k, v in share_bare.items() if k.startswith("bare")) * 1000 / rps_bare
    around = sum(v for k, v in share_sn1.items() if k not in ("api", "miner")) * 1000 / rps_sn1
    signature = (micro["sign_us"] + micro["verify_us"]) / 1000
    sn1_ms = sum(share_sn1.values()) * 1000 / rps_sn1
    bare_ms = sum(share_bare.values()) * 1000 / rps_bare
    left = bare_ms / need - hops - around - signature
    spent = sn1_ms - hops - around - signature
    return (f"  {'':<10} after two HTTP hops {hops:.2f}, upstream/load/validator {around:.2f} and sign+verify "
            f"{signature:.2f}, {need}x leaves {left:.2f} ms for all other API and miner logic "
            f"(auth, rate limit, parsing, race, scoring outbox); it takes {spent:.2f} now")


def render_table(results: dict[str, Any]) -> tuple[str, bool]:
    """The table as printed by ``make bench`` and whether every applicable target passed."""
    verdicts: list[bool] = []
    s = results["settings"]
    head = (f"sn1 bench: {results['machine']['cpus']} cores, Python {results['machine']['python']}, "
            f"load generator {results.get('loadgen')}, median of {s['rounds']} interleaved rounds of "
            f"{s['seconds']:g} s, LOG_LEVEL={s['log_level']}")
    lines = [head, "", _row("", list(SETUPS), "sn1 vs bare", "target", "result"), "-" * 120]
    lines += _throughput_rows(results, verdicts)
    lines += _paced_rows(results)
    lines += _rounds_lines(results)
    lines += _fanout_rows(results, verdicts)
    lines += _streams_row(results, verdicts)
    lines += _workers_row(results, verdicts)
    lines += ["-" * 120, *_cores_lines(results)]
    lines += _micro_rows(results)
    errors = {f"{_mode(p['stream'])} c={p['concurrency']} {s}": p[s]["errors"]
              for p in results["points"] for s in SETUPS if p[s]["errors"]}
    if errors:
        lines.append(f"errors (non-200 or broken): {errors}")
    all_pass = all(verdicts)
    lines.append(f"overall: {'PASS' if all_pass else 'FAIL'} ({sum(verdicts)}/{len(verdicts)} targets)")
    return "\n".join(lines), all_pass


def render_chart(results: dict[str, Any], path: Path) -> None:
    """Three panels: throughput at c=64, p50 latency at c=1, fan-out throughput against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = {"direct": "#999999", "bare": "#4c72b0", "sn1": "#dd8452"}
    for ax, concurrency, key, title in ((axes[0], 64, "rps", "throughput, c=64 (req/s)"),
                                        (axes[1], 1, "p50_ms", "p50 latency, c=1 (ms)")):
        for i, setup in enumerate(SETUPS):
            values = [_point(results, stream, concurrency)[setup][key] for stream in (False, True)]
            bars = ax.bar([x + (i - 1) * 0.27 for x in (0, 1)], values, 0.27, label=setup, color=colors[setup])
            ax.bar_label(bars, fmt="%.0f" if key == "rps" else "%.2f", fontsize=8)
        ax.set_xticks([0, 1], ["non-stream", "stream"])
        ax.set_title(title)
        ax.legend()
    fan = results.get("fanout")
    if fan:
        ks = [int(k) for k in fan]
        axes[2].plot(ks, [fan[str(k)]["rps"] for k in ks], "o-", color=colors["sn1"], label="sn1")
        axes[2].plot(ks, [fan["1"]["rps"] / k for k in ks], "--", color="#999999", label="k=1 / k (linear cost)")
        axes[2].set_xticks(ks)
        axes[2].set_title("fan-out, c=16, non-stream (req/s)")
        axes[2].set_xlabel("k (miners per request)")
        axes[2].legend()
    fig.suptitle(f"sn1 gateway vs bare pass-through vs direct ({results['machine']['cpus']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
