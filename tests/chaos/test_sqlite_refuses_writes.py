"""A SQLite store whose file stops taking writes while the API runs (its directory or file made read-only, a
full disk). Requests that write get a 503 ``store_unavailable`` in OpenAI's error shape (never a 500),
``/ready`` is a 503 naming the failing check and SQLite's reason, and the log has one ERROR per outage saying
what to fix (it was a WARNING, as for a lock held for a moment, which passes by itself); all is well again, by
itself, once the file takes writes.

How the file is made to refuse writes: tests may run as root, where ``chmod`` stops nothing. ``PRAGMA
query_only`` on each of the running API's connections makes SQLite refuse every write with SQLITE_READONLY,
the code a file opened read-only gives (a file system remounted read-only gives it or SQLITE_IOERR: both are
taken the same way). ``PRAGMA max_page_count`` at the file's size makes a write that needs a new page fail with
SQLITE_FULL, as a full disk does (``tests/store/test_sqlite_full.py``)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from inspect import signature
from pathlib import Path
from typing import Any

import aiohttp
from loguru import logger

from api.scoring_outbox import MAX_UNSTORED_BYTES, OutboxForwarder
from shared.store.outbox import SQLiteOutbox
from tests.chaos.fleet import HONEST, MESSAGES, VALIDATOR, Fleet, fleet, wait_until
from tests.compat.support import sample

ADMIN = "admin-secret-for-tests"
UNUSED_VALIDATOR = "http://127.0.0.1:9"  # the outbox's payloads are never delivered here: only stored


@contextmanager
def read_only(*connections: sqlite3.Connection) -> Iterator[None]:
    """Every write on ``connections`` refused (SQLITE_READONLY) until the block ends."""
    for db in connections:
        db.execute("PRAGMA query_only=1")
    try:
        yield
    finally:
        for db in connections:
            db.execute("PRAGMA query_only=0")


def connections(f: Fleet) -> list[sqlite3.Connection]:
    """Each connection the API holds to its SQLite file (key store, sessions, stored responses, outbox)."""
    ctx = f.ctx
    dbs = [ctx.store.db, ctx.store.admin, ctx.sessions._db]
    dbs += [store._db for store in (ctx.responses, ctx.conversations) if store is not None]
    return dbs + ([ctx.forwarder.outbox._db] if ctx.forwarder is not None else [])


async def answer(s: aiohttp.ClientSession, method: str, url: str, **kw: object) -> tuple[int, dict]:
    async with s.request(method, url, **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.json(content_type=None)


def attach_outbox(f: Fleet, path: Path, **settings: Any) -> OutboxForwarder:
    """``settings``: the forwarder's own (``max_unstored_bytes``, say)."""
    forwarder = OutboxForwarder(SQLiteOutbox(path), f.ctx.client, UNUSED_VALIDATOR, VALIDATOR.ss58_address,
                                **settings)
    f.ctx.attach_forwarder(forwarder)
    return forwarder


async def test_a_read_only_store_is_503s_a_failing_ready_and_one_error_line(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="INFO")
    try:
        async with fleet(tmp_path, {1: HONEST}) as f, aiohttp.ClientSession() as s:
            forwarder = attach_outbox(f, tmp_path / "api.db")
            chat = {"json": {"messages": MESSAGES, "seed": 1}, "headers": {"Authorization": f"Bearer {f.key}"}}
            assert (await answer(s, "POST", f.url + "/v1/chat/completions", **chat))[0] == 200
            await wait_until(lambda: forwarder._stored == 1, 5)  # its payload committed before the file turns
            with read_only(*connections(f)):
                for _ in range(5):
                    status, body = await answer(s, "POST", f.url + "/v1/chat/completions", **chat)
                    assert status == 503, body
                    assert body == {"error": {"message": "The key store is unavailable; try again shortly.",
                                              "type": "service_unavailable", "code": "store_unavailable",
                                              "param": None}}, body
                status, body = await answer(s, "POST", f.url + "/api_management/create-api-key?rate_limit=5",
                                            headers={"admin-key": ADMIN})
                assert (status, body["error"]["code"]) == (503, "store_unavailable"), body
                status, body = await answer(s, "GET", f.url + "/ready")
                assert status == 503 and body["checks"]["store"]["ok"] is False, body
                assert body["reasons"] == ["store: the key store is unavailable: OperationalError "
                                           "(SQLITE_READONLY)"], body
            assert (await answer(s, "POST", f.url + "/v1/chat/completions", **chat))[0] == 200
            assert (await answer(s, "GET", f.url + "/ready"))[0] == 200
            await forwarder.outbox.close()
    finally:
        logger.remove(sink)
    errors = [text for level, text in lines if level == "ERROR"]
    assert len(errors) == 1, errors  # one per outage, not one per request
    assert "refuses writes (SQLITE_READONLY)" in errors[0] and "disk full" in errors[0], errors
    assert [text for level, text in lines if level == "INFO" and "the store answers again" in text], lines


async def test_an_outbox_that_cannot_grow_is_a_failing_ready_check_named_outbox(tmp_path: Path) -> None:
    """A full disk can still take the key store's small writes (a rate-limit window rewritten in place) and
    refuse the outbox's large ones: requests are served and their payloads wait in memory, unscored, and
    ``/ready`` said ready."""
    async with fleet(tmp_path, {1: HONEST}) as f, aiohttp.ClientSession() as s:
        forwarder = attach_outbox(f, tmp_path / "api.db")
        db = forwarder.outbox._db
        try:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count={pages}")
            forwarder.enqueue({"payload": "x" * 200_000})  # more than the file's free pages
            await wait_until(lambda: forwarder.commit_outage.failing, 5)
            status, body = await answer(s, "GET", f.url + "/ready")
            assert status == 503 and body["checks"]["store"]["ok"] is True, body
            (reason,) = body["reasons"]
            assert reason.startswith("outbox: the scoring outbox refused the last commit") and \
                "disk full or read-only" in reason, body
            db.execute("PRAGMA max_page_count=1073741823")  # room again: the retry stores it
            await wait_until(lambda: not forwarder.commit_outage.failing, 10)
            assert (await answer(s, "GET", f.url + "/ready"))[0] == 200
            assert await forwarder.outbox.depth() == 1
        finally:
            await asyncio.sleep(0)
            await forwarder.outbox.close()


async def test_payloads_the_outbox_cannot_store_are_held_within_a_bound_in_bytes(tmp_path: Path) -> None:
    """The outbox's file full while the key store still takes its small writes: requests are served and their
    payloads wait in memory for the store. They were bounded by count alone (10,000): a hundred requests with a
    1 MB prompt held 100 MB in the worker, 10,000 of them 10 GB. Now at most ``MAX_UNSTORED_BYTES`` (64 MiB) of
    them, the oldest dropped with an ERROR line and counted in ``sn1_api_outbox_lost_total`` (the ERROR line was all an
    operator had: no metric, no alert); the newest are stored once the file has room.

    Run with a bound of 4 MiB and 25 requests with a prompt of 250 kB (100 of 1 MB against the 64 MiB default took
    ~25 s): about the same share of them is over the bound, and the bound's own figure is what the ERROR line must
    name. Its commits are retried every 0.5 s at most, not 5 s: the test waits for a retry twice."""
    assert signature(OutboxForwarder).parameters["max_unstored_bytes"].default == MAX_UNSTORED_BYTES == 64 << 20
    bound, requests = 4 << 20, 25
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="ERROR")
    try:
        async with fleet(tmp_path, {1: HONEST}) as f, aiohttp.ClientSession() as s:
            forwarder = attach_outbox(f, tmp_path / "api.db", max_unstored_bytes=bound, max_commit_delay=0.5)
            db = forwarder.outbox._db
            try:
                db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
                prompt = [{"role": "user", "content": "word " * 50_000}]  # a payload of 250 kB
                for seed in range(requests):
                    chat = {"json": {"messages": prompt, "seed": seed}, "headers": {"Authorization": f"Bearer {f.key}"}}
                    assert (await answer(s, "POST", f.url + "/v1/chat/completions", **chat))[0] == 200
                # every payload kept went through a refused commit (measured then), the bound applied to all of them
                await wait_until(lambda: forwarder.unstored_dropped + len(forwarder._pending) == requests
                                 and all(size for *_, size in forwarder._pending), 10)
                held = sum(len(json.dumps(p)) for p, *_ in forwarder._pending)
                assert held <= bound and forwarder.unstored_dropped > 0 \
                    and forwarder.unstored_dropped + len(forwarder._pending) == requests, \
                    (held, forwarder.unstored_dropped, len(forwarder._pending))
                async with s.get(f.url + "/metrics") as r:  # lost, never scored: a number to alert on, not a line
                    assert sample(await r.text(), "sn1_api_outbox_lost_total") == forwarder.unstored_dropped
                kept = len(forwarder._pending)
                db.execute("PRAGMA max_page_count=1073741823")  # room again: the retry stores what was kept
                await wait_until(lambda: not forwarder.commit_outage.failing, 10)
                items = await forwarder.outbox.peek(requests)
                assert [i.payload["body"]["seed"] for i in items] == list(range(requests - kept, requests))
            finally:
                await asyncio.sleep(0)
                await forwarder.outbox.close()
    finally:
        logger.remove(sink)
    dropped = [text for level, text in lines if "held in memory" in text]
    assert dropped and "at most 10000 and 4 MiB of them" in dropped[0], lines
