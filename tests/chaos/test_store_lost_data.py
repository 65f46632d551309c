"""A Redis without persistence that restarts comes back EMPTY: every API key is gone and every request is a
401 ``invalid_api_key``. The API said nothing (INFO access lines) and ``/ready`` said "reachable": the operator
learned it from its customers. Now one ERROR line names the likely cause, ``/ready`` is a 503 with the reason
until a key is created or imported (the admin endpoints work meanwhile), and every API process, including one
started after the loss, tells the same. A fresh empty Redis at a first start is not an error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
from loguru import logger

from api import ops
from api.worker import first_marker
from shared.store.marker import MarkerWatch
from shared.store.redis import RedisStore
from tests.chaos.fleet import MESSAGES, Fleet, fleet_on, wait_until
from tests.chaos.own_redis import RedisServer, own_redis_server

ADMIN = "admin-secret-for-tests"
LOST = "lost its data: restarted without persistence (appendonly/save), or FLUSHALL; every API key is gone"


@contextlib.contextmanager
def captured() -> Iterator[list[tuple[str, str]]]:
    """Every log line, as (level, text)."""
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, str(m))), level="DEBUG")
    try:
        yield lines
    finally:
        logger.remove(sink)


PASSWORD = "redis-password-for-tests"


@contextlib.asynccontextmanager
async def api_on_own_redis(tmp_path: Path, *, password: str | None = None,
                           ) -> AsyncIterator[tuple[Fleet, RedisServer, str]]:
    async with own_redis_server(tmp_path) as server:
        url = server.url
        if password:  # the admin client's connection, opened before, stays signed in
            await server.client.config_set("requirepass", password)
            url = url.replace("redis://", f"redis://:{password}@")
        async with fleet_on(tmp_path, RedisStore.from_url(url, namespace="lost"), "lost") as (f, secret):
            yield f, server, secret


async def ready(s: aiohttp.ClientSession, f: Fleet) -> tuple[int, dict]:
    async with s.get(f.url + "/ready") as r:
        return r.status, await r.json()


async def chat(s: aiohttp.ClientSession, f: Fleet, key: str) -> int:
    async with s.post(f.url + "/v1/chat/completions", json={"messages": MESSAGES, "seed": 1},
                      headers={"Authorization": f"Bearer {key}"}, timeout=aiohttp.ClientTimeout(total=30)) as r:
        return r.status


def errors(lines: list[tuple[str, str]]) -> list[str]:
    return [text for level, text in lines if level == "ERROR"]


async def test_a_redis_that_restarts_empty_is_one_error_and_not_ready_until_a_key_is_created(tmp_path: Path) -> None:
    with captured() as lines:
        async with api_on_own_redis(tmp_path) as (f, server, key), aiohttp.ClientSession() as s:
            sampler = asyncio.create_task(ops.sample_forever(f.ctx, f.app[ops.METRICS], every=0.05))
            try:
                assert (await ready(s, f))[0] == 200 and await chat(s, f, key) == 200
                await server.restart()  # no appendonly, no save: it comes back empty
                # the periodic work notices, with nobody asking /ready
                await wait_until(lambda: bool(errors(lines)), 10)
                assert errors(lines) and LOST in errors(lines)[0] and server.url in errors(lines)[0], lines
                for _ in range(5):
                    assert await chat(s, f, key) == 401  # the key is gone
                    status, body = await ready(s, f)
                    assert status == 503, body
                reason = " ".join(body["reasons"])
                assert "store: the key store lost its data" in reason and "re-create the keys" in reason, body
                assert str(server.port) not in reason  # /ready is public: it never names the server
                assert len(errors(lines)) == 1, errors(lines)  # one line, not one per request or check
                # the admin endpoints work: the operator re-creates a key, and the store is ready again
                async with s.post(f.url + "/api_management/create-api-key?rate_limit=5",
                                  headers={"admin-key": ADMIN}) as r:
                    assert r.status == 200
                    new_key = (await r.json())["api_key"]
                assert (await ready(s, f))[0] == 200 and await chat(s, f, new_key) == 200
                await wait_until(lambda: any("is marked again" in t for _, t in lines), 5)
                assert any(level == "INFO" and "is marked again" in t for level, t in lines), lines
                assert len(errors(lines)) == 1
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
    text = "\n".join(t for _, t in lines)
    assert key not in text and new_key not in text and ADMIN not in text  # nothing logs a secret


async def test_an_api_started_after_the_loss_tells_it_too_and_marks_no_new_store(tmp_path: Path) -> None:
    """Several API processes share one Redis: one that starts (or restarts) after another saw the loss does
    not take the empty store for a new one, which would clear the alarm for every process. Their Redis has a
    password: the ERROR names the server without it."""
    with captured() as lines:
        async with api_on_own_redis(tmp_path, password=PASSWORD) as (f, server, _), aiohttp.ClientSession() as s:
            assert (await ready(s, f))[0] == 200  # as at its start: it has seen the store
            await server.client.flushall()
            assert (await ready(s, f))[0] == 503
            later = RedisStore.from_url(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", namespace="lost")
            try:
                watch = MarkerWatch()
                assert "lost its data" in (await watch.check(later) or "")
            finally:
                await later.close()
            assert (await ready(s, f))[0] == 503
    assert len(errors(lines)) == 2, errors(lines)  # each process says it once
    assert all(f"Redis at redis://***@127.0.0.1:{server.port}/0 {LOST}" in e for e in errors(lines)), errors(lines)
    assert not any(PASSWORD in t for _, t in lines)
    assert not any("a new, empty key store" in t for _, t in lines), lines


async def test_a_fresh_empty_redis_at_first_start_is_a_new_store_not_an_error(tmp_path: Path) -> None:
    with captured() as lines:
        async with api_on_own_redis(tmp_path) as (f, server, key), aiohttp.ClientSession() as s:
            await server.client.flushall()  # before the API's first look: as a brand new Redis
            f.ctx.store_marker = MarkerWatch()
            await first_marker(f.ctx)
            assert (await ready(s, f))[0] == 200
    assert not errors(lines), errors(lines)
    assert [t for level, t in lines if level == "WARNING" and "a new, empty key store was started" in t], lines


async def test_a_store_of_an_earlier_release_is_marked_at_start_not_taken_as_lost(tmp_path: Path) -> None:
    """A Redis that holds keys from before the marker existed: upgrading is not a loss."""
    with captured() as lines:
        async with api_on_own_redis(tmp_path) as (f, server, key), aiohttp.ClientSession() as s:
            await server.client.delete("lost:store_marker")  # as an earlier release left it
            f.ctx.store_marker = MarkerWatch()
            await first_marker(f.ctx)
            assert (await ready(s, f))[0] == 200 and await chat(s, f, key) == 200
    assert not errors(lines), errors(lines)
    assert [t for level, t in lines if level == "INFO" and "holds 1 API key(s)" in t], lines


async def test_an_api_started_after_the_loss_before_anyone_noticed_it_does_not_hide_it(tmp_path: Path) -> None:
    """The window: a process that started after the loss but before a running one's next look (every 5 s)
    took the emptied store for a new one and wrote the marker, so the running processes found it present and
    the loss was told by nobody while every key answered 401. The marker now comes with the first key: the
    newcomer says "new, empty", the running process tells the loss, and the newcomer then tells it too."""
    with captured() as lines:
        async with api_on_own_redis(tmp_path) as (f, server, key), aiohttp.ClientSession() as s:
            assert (await ready(s, f))[0] == 200  # the running API has seen the store marked
            await server.client.flushall()  # lost; nobody has looked yet
            later = RedisStore.from_url(server.url, namespace="lost")
            try:
                newcomer = MarkerWatch()
                assert await newcomer.check(later) is None  # to it, a new empty store (a WARNING)
                status, body = await ready(s, f)
                assert status == 503 and "the key store lost its data" in str(body["reasons"]), body
                assert "lost its data" in (await newcomer.check(later) or "")
            finally:
                await later.close()
            assert await chat(s, f, key) == 401
    assert len(errors(lines)) == 2, errors(lines)  # each process says it once
    assert [t for level, t in lines if level == "WARNING" and "a new, empty key store was started" in t], lines


async def test_a_loss_right_after_the_first_key_is_told_by_the_process_that_made_it(tmp_path: Path) -> None:
    """An operator's first key, then Redis restarted empty within the 5 s before any process read the marker: the
    process that wrote the marker (with the key) had not "seen" it, so the empty store read as a new one, ``/ready``
    200 and no ERROR, for good, while the key handed out was a 401. The process that creates (or imports) a key
    knows the marker is there."""
    with captured() as lines:
        async with api_on_own_redis(tmp_path) as (f, server, _), aiohttp.ClientSession() as s:
            await server.restart()  # the fleet's own key gone, unseen: a new, empty store to this process
            async with s.post(f.url + "/api_management/create-api-key/?rate_limit=5",
                              headers={"admin-key": ADMIN}) as r:
                assert r.status == 200, await r.text()
            await server.restart()  # at once: no marker check in between
            status, body = await ready(s, f)
    assert status == 503 and "the key store lost its data" in str(body["reasons"]), body
    assert errors(lines) and LOST in errors(lines)[0], lines
