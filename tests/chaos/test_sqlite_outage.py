"""SQLite store outage: another process holds the database's write lock (a backup, a stuck admin
tool). Requests get a quick 503 (never a 200 without a key check), the worker stays responsive, and
the API recovers by itself when the lock goes.

Store calls run on the event loop, so the lock wait bounds how long the whole worker freezes: it
was SQLite's 10 s (every request, /health included, stalled 10 s per store call) and is now
``BUSY_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp
from loguru import logger

from shared.store.sqlite_tables import BUSY_TIMEOUT_S
from tests.chaos.fleet import HONEST, MESSAGES, Fleet, fleet


async def timed_chat(s: aiohttp.ClientSession, f: Fleet, key: str) -> tuple[int, str, float]:
    started = time.monotonic()
    async with s.post(f.url + "/v1/chat/completions", json={"messages": MESSAGES, "seed": 2},
                      headers={"Authorization": f"Bearer {key}"}) as r:
        body = await r.json(content_type=None)
        code = body.get("error", {}).get("code") if r.status >= 400 else "ok"
        return r.status, code, time.monotonic() - started


async def test_locked_sqlite_is_a_quick_503_and_recovers_by_itself(tmp_path: Path) -> None:
    async with fleet(tmp_path, {1: HONEST}) as f, aiohttp.ClientSession() as s:
        assert (await timed_chat(s, f, f.key))[0] == 200
        holder = sqlite3.connect(tmp_path / "api.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process's write lock on the file
        try:
            started = time.monotonic()
            results = await asyncio.gather(timed_chat(s, f, f.key), timed_chat(s, f, "sn1-forged"),
                                           timed_chat(s, f, f.key))
            for status, code, _ in results:
                assert (status, code) == (503, "store_unavailable"), results
            # Three requests, each waiting the lock timeout at most: the worker never froze for long.
            assert time.monotonic() - started < 3 * BUSY_TIMEOUT_S + 1.5, results
            async with s.get(f.url + "/health") as r:
                assert r.status == 200
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        status, code, elapsed = await timed_chat(s, f, f.key)
        assert (status, code) == (200, "ok") and elapsed < 2


async def test_a_locked_store_is_told_once_in_the_log_not_once_per_request(tmp_path: Path) -> None:
    """Each 503 was a WARNING of its own (and each usage flush, a second apart): a store that fails for an hour
    under traffic was millions of lines. A run of failures is its first line, then one a minute, then one
    INFO line when the store answers again."""
    said: list[str] = []
    sink = logger.add(lambda m: said.append(f"{m.record['level'].name} {m.record['message']}"), level="INFO")
    try:
        async with fleet(tmp_path, {1: HONEST}) as f, aiohttp.ClientSession() as s:
            assert (await timed_chat(s, f, f.key))[0] == 200
            holder = sqlite3.connect(tmp_path / "api.db", isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            try:
                for _ in range(4):  # four rounds of three requests (each round waits the lock once)
                    results = await asyncio.gather(*(timed_chat(s, f, f.key) for _ in range(3)))
                    assert {(status, code) for status, code, _ in results} == {(503, "store_unavailable")}
                assert f.ctx.usage is not None
                for _ in range(3):  # the flusher's rounds, as they come each second
                    await f.ctx.usage.flush()
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert (await timed_chat(s, f, f.key))[0] == 200
            await f.ctx.usage.flush()
    finally:
        logger.remove(sink)
    refused = [line for line in said if "store unavailable, answering 503" in line]
    assert len(refused) == 2 and refused[0].startswith("WARNING") and "database is locked" in refused[0], refused
    assert refused[1].startswith("INFO") and "the store answers again" in refused[1] and "(12 failure(s))" in refused[1]
    flushes = [line for line in said if "usage flush failed" in line]
    assert len(flushes) == 2 and flushes[1].startswith("INFO"), flushes


async def test_the_store_answering_an_unknown_key_ends_the_outage_line(tmp_path: Path) -> None:
    """Only a known key's charge ended the run: after a Redis restart that lost the keys (no persistence), every
    key is unknown, and the log went on saying the store was down while it answered each request (401). The
    line's duration, counted to the first valid key, was wrong too."""
    said: list[str] = []
    sink = logger.add(lambda m: said.append(f"{m.record['level'].name} {m.record['message']}"), level="INFO")
    try:
        async with fleet(tmp_path, {1: HONEST}) as f, aiohttp.ClientSession() as s:
            holder = sqlite3.connect(tmp_path / "api.db", isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            try:
                assert (await timed_chat(s, f, f.key))[:2] == (503, "store_unavailable")
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert (await timed_chat(s, f, "sn1-unknown-after-the-restart"))[:2] == (401, "invalid_api_key")
            told = [line for line in said if "store unavailable, answering 503" in line]
            assert len(told) == 2 and told[1].startswith("INFO") and "the store answers again" in told[1], told
    finally:
        logger.remove(sink)
