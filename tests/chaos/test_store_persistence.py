"""A Redis that keeps its data in memory only (no ``appendonly``, no ``save``: a plain ``redis-server``, many a
container's) loses every API key when it restarts, and one with RDB snapshots alone loses the keys made since the
last snapshot (up to an hour's, by Redis's default ``save``): callers get 401s, and the operator learnt it from
them. The store marker tells a loss after it happened, and only a whole one; the start now says the risk before,
in one WARNING naming the setting to change (``appendonly yes``). A Redis that refuses ``CONFIG`` says nothing."""

from __future__ import annotations

import pytest

from tests.chaos.own_redis import own_redis, start_lines


def persistence_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "appendonly" in line]


async def test_a_redis_that_keeps_nothing_on_disk_is_a_start_warning(tmp_path) -> None:
    async with own_redis(tmp_path) as (url, _admin):  # started with --save "" --appendonly no
        lines = await start_lines(url, "persistence")
    (told,) = persistence_lines(lines)
    assert told.startswith("WARNING STORE_URL: "), lines
    assert "keeps nothing on disk" in told and "every API key" in told and "set appendonly yes" in told, told


async def test_snapshots_alone_are_a_start_warning_naming_their_schedule(tmp_path) -> None:
    async with own_redis(tmp_path) as (url, admin):
        await admin.config_set("save", "3600 1 300 100")
        lines = await start_lines(url, "persistence")
        await admin.config_set("save", "")  # a quick stop: no snapshot on the way out
    (told,) = persistence_lines(lines)
    assert told.startswith("WARNING STORE_URL: "), lines
    assert "save 3600 1 300 100" in told and "since its last snapshot" in told and "set appendonly yes" in told, told


@pytest.mark.parametrize("save", ["", "3600 1"])
async def test_appendonly_passes_quietly(tmp_path, save: str) -> None:
    async with own_redis(tmp_path) as (url, admin):
        await admin.config_set("save", save)
        await admin.config_set("appendonly", "yes")
        lines = await start_lines(url, "persistence")
        await admin.config_set("appendonly", "no")  # a quick stop: no AOF rewrite to wait for on the way out
        await admin.config_set("save", "")
    assert persistence_lines(lines) == [], lines


async def test_a_redis_that_refuses_config_says_nothing_of_it(tmp_path) -> None:
    """A managed Redis (an ACL without ``CONFIG``) persists as its console says: not a warning at every start."""
    async with own_redis(tmp_path) as (url, admin):
        await admin.execute_command("ACL", "SETUSER", "app", "on", ">app-password", "~*", "&*", "+@all", "-config")
        lines = await start_lines(url.replace("redis://", "redis://app:app-password@"), "persistence")
    assert persistence_lines(lines) == [], lines
    assert not [line for line in lines if line.startswith(("WARNING", "ERROR"))], lines
