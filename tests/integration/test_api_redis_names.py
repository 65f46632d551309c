"""Every connection a real ``sn1 api`` opens to a Redis ``STORE_URL`` carries its name (``CLIENT SETNAME``), from its
start-up check on: an operator reading Redis's ``CLIENT LIST`` finds each of the API's connections under
``sn1-api-<pid>-...``, none unnamed beside them."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.chaos.own_redis import own_redis
from tests.keys.procs import ADMIN, prepare, start_api, stop_on_redis, wait_ready


async def monitor(client: aioredis.Redis, seen: list[dict]) -> None:
    """Every command Redis runs (``MONITOR``), appended to ``seen`` until cancelled."""
    async with client.monitor() as m:
        async for command in m.listen():
            seen.append(command)


async def caught_up(client: aioredis.Redis, seen: list[dict], watching: asyncio.Task[None],
                    timeout: float = 10.0) -> None:
    """MONITOR's stream holds every command run before a marker once the marker is in it: the watcher was cancelled
    as the API's last commands were still on their way to it (a busy host), and missed a connection."""
    marker = f"monitor-marker-{secrets.token_hex(4)}"
    await client.echo(marker)
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(marker in c["command"] for c in seen):  # noqa: ASYNC110 - MONITOR's stream, read by its own task
        assert not watching.done(), f"the MONITOR watch ended: {watching.exception()!r}"
        assert asyncio.get_running_loop().time() < deadline, "MONITOR did not show the marker in 10 s"
        await asyncio.sleep(0.02)


def connections_of(namespace: str, seen: list[dict]) -> tuple[set[str], dict[str, str]]:
    """The client addresses that named a key of ``namespace`` (the API's: other tests share the database), and the
    name each address gave itself (``CLIENT SETNAME``: redis-py's first command on a named connection)."""
    used, names = set(), {}
    for c in seen:
        if c["client_address"] == "lua":  # a script's commands, run for the connection that called it
            continue
        address = f"{c['client_address']}:{c['client_port']}"
        if f"{namespace}:" in c["command"]:
            used.add(address)
        if c["command"].startswith("CLIENT SETNAME "):
            names[address] = c["command"].split(" ", 2)[2]
    return used, names


@pytest.mark.parametrize("workers", [1, 2])
async def test_every_connection_of_the_api_to_redis_is_named_from_its_start_up_check_on(tmp_path: Path,
                                                                                        workers: int) -> None:
    """One worker checked Redis at start on a client of its own, unnamed, beside its two named ones (the
    supervisor's check too, with ``WORKERS`` > 1); it now checks on the clients it serves with, and the
    supervisor's is ``sn1-api-<pid>-check``. Every connection that names a key of the API's namespace while it starts
    and serves is named ``sn1-api-...``, and so is every one of them ``CLIENT LIST`` shows."""
    async with own_redis(tmp_path) as (url, _):
        await named_from_the_start(tmp_path, url, workers)


async def named_from_the_start(tmp_path: Path, url: str, workers: int) -> None:
    """The check on a Redis of the test's own: MONITOR shows every database's commands, and on the suite's shared
    Redis the other tests' load made the watch miss the API's (it saw one connection of two)."""
    namespace = f"names-{secrets.token_hex(4)}"
    # no read timeout (redis-py 8 reads with 5 s by default): its own Redis is quiet while the API starts
    watcher = aioredis.Redis.from_url(url, decode_responses=True, client_name="test-watcher", socket_timeout=None)
    seen: list[dict] = []
    watching = asyncio.create_task(monitor(watcher, seen))
    await asyncio.sleep(0.2)  # MONITOR in place before the API starts
    api = start_api(tmp_path, prepare(tmp_path), store_url=url, workers=workers, namespace=namespace)
    try:
        await asyncio.to_thread(wait_ready, [api], workers=workers)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{api.url}/api_management/create-api-key/?rate_limit=60",
                                 headers={"admin-key": ADMIN}) as r:
                assert r.status == 200, await r.text()
                key = (await r.json())["api_key"]
            async with http.get(f"{api.url}/v1/sessions", headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 404, await r.text()  # no session: read on the data client
        lister = aioredis.Redis.from_url(url, decode_responses=True, client_name="test-lister")
        try:
            listed = await lister.client_list()
            await caught_up(lister, seen, watching)
        finally:
            await lister.aclose()
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await watcher.aclose()
        await asyncio.to_thread(stop_on_redis, [api], url, namespace)
    used, names = connections_of(namespace, seen)
    assert len(used) >= 2, seen[:20]  # the keys and data clients at least
    unnamed = sorted(used - set(names))
    assert not unnamed, [c for c in seen if f"{c['client_address']}:{c['client_port']}" in unnamed][:10]
    assert all(names[a].startswith("sn1-api-") for a in used), sorted(names[a] for a in used)
    # the API's, still open; not the test's own clients, whose address may be one an API connection closed before
    # (a busy host's full run saw an address of the API's listed under another name)
    listed = [c for c in listed if c["addr"] in used and not c["name"].startswith("test-")]
    assert listed and all(c["name"].startswith("sn1-api-") for c in listed), [(c["addr"], c["name"]) for c in listed]
    if workers > 1:
        assert any(names[a].endswith("-check") for a in used), sorted(names[a] for a in used)
