"""The typed admin client and ``sn1 keys`` against a real API over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys

import pytest

from shared.admin_client import AdminClient, AdminError
from shared.cli import main
from tests.helpers import ApiUnderTest
from tests.keys.conftest import ADMIN


async def sn1_keys(api: ApiUnderTest, *args: str, admin_key: str | None = ADMIN) -> tuple[int, str, str]:
    """Run ``sn1 keys`` exactly as the console script does (``shared.cli.main``), in a worker thread so
    this event loop keeps serving the API; returns (exit code, stdout, stderr)."""
    argv = ["keys", "--api", api.url, *(["--admin-key", admin_key] if admin_key else []), *args]

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
            main(argv)
        return int(done.value.code or 0), out.getvalue(), err.getvalue()

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ADMIN_KEY", raising=False)
        return await asyncio.to_thread(run)


async def test_admin_client_round_trip(api: ApiUnderTest) -> None:
    async with AdminClient(api.url, ADMIN) as admin:
        created = await admin.create_key(12, name="sdk", scopes=["chat"], expires_in_days=1)
        assert created.api_key.startswith("sn1-") and created.scopes == ["chat"] and created.expires_at
        changed = await admin.modify_key(created.id, rate_limit=24, expires_at="never", daily_token_limit=500)
        assert changed.rate_limit == 24 and changed.expires_at is None and changed.name == "sdk"
        assert changed.daily_token_limit == 500
        assert (await admin.modify_key(created.id, daily_token_limit="none")).daily_token_limit is None
        assert (await admin.modify_key(created.id, max_concurrent_requests=8)).max_concurrent_requests == 8
        assert (await admin.modify_key(created.id, max_concurrent_requests="default")).max_concurrent_requests is None
        made = await admin.create_key(5, max_concurrent_requests=0)  # 0: no limit for this key
        assert made.max_concurrent_requests == 0
        await admin.delete_key(made.id)
        assert created.id in {k.id for k in await admin.list_keys()}
        assert (await admin.usage(created.api_key)).totals.requests == 0
        rotated = await admin.rotate_key(created.api_key)
        assert rotated.id == created.id and rotated.api_key != created.api_key
        assert (await admin.usage(rotated.api_key)).key_id == created.id
        assert (await admin.delete_key(created.id)).deleted
        with pytest.raises(AdminError) as e:
            await admin.delete_key(created.id)
        assert (e.value.status, e.value.code) == (404, "api_key_not_found")
        with pytest.raises(AdminError) as e:
            await admin.create_key(0)
        assert e.value.status == 0 and "rate_limit" in str(e.value)  # refused before anything was sent
    async with AdminClient(api.url, "wrong") as admin:
        with pytest.raises(AdminError) as e:
            await admin.list_keys()
        assert e.value.status == 401


async def test_cli_create_list_modify_usage_delete(api: ApiUnderTest) -> None:
    code, out, err = await sn1_keys(api, "--json", "create", "--rate-limit", "9", "--name", "cli",
                                    "--scopes", "chat,availability", "--models", "a,b")
    assert code == 0, err
    created = json.loads(out)
    assert created["api_key"].startswith("sn1-") and created["allowed_models"] == ["a", "b"]

    code, out, err = await sn1_keys(api, "list")
    assert code == 0, err
    header, rule, *rows = out.strip().splitlines()
    assert header.split()[:4] == ["id", "name", "prefix", "rate/min"] and set(rule) <= {"-", " "}
    assert any(created["id"] in r and " cli " in r and " 9 " in r for r in rows)
    assert created["api_key"] not in out

    code, out, err = await sn1_keys(api, "modify", created["id"], "--rate-limit", "99", "--no-expiry",
                                    "--daily-tokens", "5000")
    assert code == 0 and " 99 " in out and " 5000 " in out, err
    code, out, err = await sn1_keys(api, "usage", created["id"], "--days", "3")
    assert code == 0 and "total" in out and "99/min, 5000 tokens/day (5000 left today)" in out, err
    assert "0 of 268435456 stored bytes today" in out  # the admin usage endpoint's storage budget, as shown
    code, out, err = await sn1_keys(api, "--json", "modify", created["id"], "--no-daily-tokens")
    assert code == 0 and json.loads(out)["daily_token_limit"] is None, err
    code, out, err = await sn1_keys(api, "--json", "modify", created["id"], "--max-concurrent", "7")
    assert code == 0 and json.loads(out)["max_concurrent_requests"] == 7, err
    code, out, err = await sn1_keys(api, "usage", created["id"])
    assert code == 0 and "0 of 7 requests in flight" in out, err
    code, out, err = await sn1_keys(api, "--json", "modify", created["id"], "--default-concurrent")
    assert code == 0 and json.loads(out)["max_concurrent_requests"] is None, err
    code, out, err = await sn1_keys(api, "rotate", created["id"])
    assert code == 0 and "API key rotated" in out and created["api_key"] not in out, err
    (secret,) = [w for w in out.split() if w.startswith("sn1-") and len(w) > 40]
    code, out, err = await sn1_keys(api, "--json", "delete", secret)
    assert code == 0 and json.loads(out)["deleted"] is True, err


async def test_the_cli_and_the_admin_client_set_show_and_put_back_a_keys_storage_budget(api: ApiUnderTest) -> None:
    """``--stored-bytes-per-day`` / ``max_stored_bytes_per_day``: the key's own daily storage budget, listed as set
    ("default": the API's, "any": 0, no limit) and shown in force by ``sn1 keys usage``; ``--default-stored-bytes``
    and ``"default"`` put back the API's; a bad value is refused before anything is sent."""
    code, out, err = await sn1_keys(api, "--json", "create", "--rate-limit", "9", "--stored-bytes-per-day", "5000")
    assert code == 0 and json.loads(out)["max_stored_bytes_per_day"] == 5000, err
    key_id = json.loads(out)["id"]
    code, out, err = await sn1_keys(api, "usage", key_id)
    assert code == 0 and "0 of 5000 stored bytes today" in out, err
    code, out, err = await sn1_keys(api, "list")
    header, _, *rows = out.strip().splitlines()
    column = header.split().index("stored/day")
    assert {r.split()[0]: r.split()[column] for r in rows}[key_id] == "5000", out
    code, out, err = await sn1_keys(api, "modify", key_id, "--stored-bytes-per-day", "0")
    assert code == 0 and " any " in out, err  # 0: no limit for this key
    code, out, err = await sn1_keys(api, "usage", key_id)
    assert code == 0 and "stored bytes today" not in out, out
    code, out, err = await sn1_keys(api, "--json", "modify", key_id, "--default-stored-bytes")
    assert code == 0 and json.loads(out)["max_stored_bytes_per_day"] is None, err
    code, out, err = await sn1_keys(api, "usage", key_id)
    assert code == 0 and "0 of 268435456 stored bytes today" in out, err  # the API's STORED_BYTES_PER_KEY_PER_DAY
    code, _, err = await sn1_keys(api, "modify", key_id, "--stored-bytes-per-day", "-5")
    assert code == 2 and "max_stored_bytes_per_day" in err
    code, _, err = await sn1_keys(api, "modify", key_id, "--stored-bytes-per-day", "5000", "--default-stored-bytes")
    assert code == 2 and "not allowed with" in err  # one or the other
    async with AdminClient(api.url, ADMIN) as admin:
        assert (await admin.modify_key(key_id, max_stored_bytes_per_day=777)).max_stored_bytes_per_day == 777
        assert (await admin.usage(key_id)).stored_bytes_per_day == 777
        assert [k.max_stored_bytes_per_day for k in await admin.list_keys() if k.id == key_id] == [777]
        assert (await admin.modify_key(key_id, max_stored_bytes_per_day="default")).max_stored_bytes_per_day is None
        assert (await admin.usage(key_id)).stored_bytes_per_day == 268435456
        made = await admin.create_key(5, max_stored_bytes_per_day=0)
        assert made.max_stored_bytes_per_day == 0 and (await admin.usage(made.id)).stored_bytes_per_day is None
        with pytest.raises(AdminError) as e:
            await admin.modify_key(key_id, max_stored_bytes_per_day=(1 << 40) + 1)
        assert e.value.status == 0 and "max_stored_bytes_per_day" in str(e.value)  # refused before anything was sent


async def test_cli_errors_are_clear(api: ApiUnderTest) -> None:
    code, _, err = await sn1_keys(api, "delete", "0123456789abcdef")
    assert code == 1 and "HTTP 404" in err and "No such API key" in err
    code, _, err = await sn1_keys(api, "list", admin_key=None)
    assert code == 2 and "ADMIN_KEY" in err
    code, _, err = await sn1_keys(api, "create", "--rate-limit", "-1")
    assert code == 2 and "rate_limit" in err
    code, _, err = await sn1_keys(api, "modify", "0123456789abcdef")
    assert code == 2 and "nothing to change" in err


async def test_a_wrong_admin_key_names_the_setting_it_came_from(api: ApiUnderTest) -> None:
    """"HTTP 401: Invalid or missing admin-key header." named a header the operator never wrote: ``sn1 keys`` sends
    it from ``--admin-key`` or ``ADMIN_KEY``, and that is what to fix (to the API's own ``ADMIN_KEY``)."""
    wrong = "a-wrong-admin-key-0123456789"
    code, _, err = await sn1_keys(api, "list", admin_key=wrong)
    assert code == 1 and "HTTP 401" in err, err
    assert "not this API's ADMIN_KEY" in err and "--admin-key" in err and wrong not in err, err
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADMIN_KEY", wrong)
        code, err = await asyncio.to_thread(cli_exit, ["keys", "--api", api.url, "list"])
    assert code == 1 and "ADMIN_KEY in the environment" in err and wrong not in err, err


def cli_exit(argv: list[str]) -> tuple[int, str]:
    """``sn1 <argv>``'s exit code and stderr (``shared.cli.main``, as the console script runs it)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
        main(argv)
    return int(done.value.code or 0), err.getvalue()


@pytest.mark.parametrize("url", ["127.0.0.1:42170", "localhost:42170/", "ftp://127.0.0.1:42170"])
def test_an_api_url_without_its_scheme_is_named_as_the_setting_to_fix(url: str) -> None:
    """``SN1_API_URL=127.0.0.1:42170`` (the host and port, as the API logs them) was "cannot reach the API at
    127.0.0.1:42170: NonHttpUrlClientError 127.0.0.1:42170/api_management/api-keys": the API was up."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
        main(["keys", "--api", url, "--admin-key", ADMIN, "list"])
    assert done.value.code == 2
    fix = "" if "://" in url else f": write http://{url}"  # a host:port is told the URL to write
    assert err.getvalue() == (f"sn1 keys: --api / SN1_API_URL: {url!r} is not an http(s) URL "
                              f"(http://host:port/...){fix}\n")



async def test_an_api_url_that_names_another_server_says_which_setting_to_check() -> None:
    """``--api`` at the validator's port (8094, beside the API's 42170) was "HTTP 404: Invalid URL (GET
    /api_management/api-keys): no such endpoint here.", with no word on what to fix."""
    from aiohttp import web

    from shared.http import error_middleware
    from tests.helpers import serve_app

    async with serve_app(web.Application(middlewares=[error_middleware])) as other:
        code, _, err = await sn1_keys(ApiUnderTest(url=other, key="", ctx=None, scripts={}), "list")
    assert code == 1
    assert err == (f"sn1 keys list: HTTP 404: Invalid URL (GET /api_management/api-keys): no such endpoint here. Is "
                   f"{other} the sn1 API (its API_PORT, 42170 by default)? Not the validator's port nor a miner's: "
                   "set --api or SN1_API_URL\n")

def test_connection_options_work_before_or_after_the_action() -> None:
    """``sn1 keys list --json`` was "unrecognized arguments" (only ``sn1 keys --json list`` worked)."""
    import argparse

    from shared.keys_cli import add_keys_arguments

    parser = argparse.ArgumentParser()
    add_keys_arguments(parser)
    after = vars(parser.parse_args(["usage", "k", "--json", "--admin-key", "a" * 20, "--api", "http://h:1"]))
    before = vars(parser.parse_args(["--json", "--admin-key", "a" * 20, "--api", "http://h:1", "usage", "k"]))
    assert after == before and after["json"] is True and after["api"] == "http://h:1"
    assert vars(parser.parse_args(["--json", "list"]))["json"] is True, "an option before stands when none follows"


async def test_the_original_apis_key_file_is_imported_and_its_keys_keep_working(
        api: ApiUnderTest, tmp_path: pytest.TempPathFactory) -> None:
    """An operator moving from the subnet's original validator API brings its callers' keys: its API_KEYS_FILE
    (``{"<token_hex(16)>": {"rate_limit": N, "usage": M}}``), imported, keeps each key working with its rate
    limit, stored hashed and never shown; importing it again changes nothing; a key too short to be one of
    the original's (a guessable one) is refused, naming none."""
    import aiohttp

    legacy = {"0123456789abcdef0123456789abcdef": {"rate_limit": 2, "usage": 57},
              "fedcba9876543210fedcba9876543210": {"rate_limit": 100, "usage": 0}}
    path = tmp_path / "api_keys.json"  # type: ignore[operator]
    path.write_text(json.dumps(legacy))
    code, out, err = await sn1_keys(api, "import", str(path))
    assert code == 0 and out.startswith("imported 2 keys (0 already here)"), (out, err)
    assert "0123456789abcdef0123456789abcdef" not in out and "012345..." in out  # six characters shown, no more
    async with aiohttp.ClientSession() as s:
        statuses = []
        for _ in range(3):  # its rate limit came with it: 2 a minute
            async with s.get(f"{api.url}/v1/usage", headers={"api-key": "0123456789abcdef0123456789abcdef"}) as r:
                statuses.append(r.status)
        assert statuses == [200, 200, 429]
    async with AdminClient(api.url, ADMIN) as admin:
        again = await admin.import_keys(legacy)
        assert (again.imported, again.already_here, again.data) == (0, 2, [])
        imported = [k for k in await admin.list_keys() if k.name == "imported"]
        assert sorted(k.rate_limit for k in imported) == [2, 100]
        with pytest.raises(AdminError) as e:
            await admin.import_keys({"short-guessable-key": {"rate_limit": 5}})
        assert e.value.status == 400 and "short-guessable-key" not in str(e.value)
        with pytest.raises(AdminError) as e:
            await admin.import_keys({"1" * 32: {"rate_limit": 5}, "0" * 32: {"rate_limit": 0}})
        assert e.value.status == 400 and "'1.rate_limit'" in str(e.value) and "0" * 32 not in str(e.value)
        assert len([k for k in await admin.list_keys() if k.name == "imported"]) == 2  # a refused file: none of it


async def sn1_keys_into_a_closed_pipe(api: ApiUnderTest, *args: str) -> tuple[int, str]:
    """Run the console script in a process whose stdout is a pipe nobody reads any more, as
    ``sn1 keys list --json | head -c 100`` leaves it once ``head`` has had its fill; returns (status, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "ADMIN_KEY": ADMIN}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shared.cli", "keys", "--api", api.url, *args,
            stdout=write_end, stderr=asyncio.subprocess.PIPE, env=env)
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, err.decode()


async def test_a_reader_that_stops_early_is_no_traceback(api: ApiUnderTest) -> None:
    """``sn1 keys list --json | head`` printed a BrokenPipeError traceback. A listing cut short is a quiet 0;
    a create or rotate whose secret (shown once) may not have been read whole says so, with status 1."""
    status, err = await sn1_keys_into_a_closed_pipe(api, "list", "--json")
    assert (status, err) == (0, "")
    status, err = await sn1_keys_into_a_closed_pipe(api, "create", "--rate-limit", "5", "--name", "piped")
    assert status == 1 and "Traceback" not in err
    assert err.startswith("sn1 keys create: done, but its output was cut off") and "sn1-" not in err
    async with AdminClient(api.url, ADMIN) as admin:
        assert "piped" in {k.name for k in await admin.list_keys()}


@pytest.mark.parametrize(("environ", "api"), [({"SN1_API": "http://h:2"}, "http://h:2"),
                                              ({"SN1_API": "http://h:2", "SN1_API_URL": "http://h:3"}, "http://h:3")])
def test_the_api_url_comes_from_sn1_api_url_or_the_clients_sn1_api(monkeypatch: pytest.MonkeyPatch,
                                                                    environ: dict[str, str], api: str) -> None:
    """The README's client examples export ``SN1_API``; ``sn1 keys`` read only ``SN1_API_URL`` and, with the
    first alone, went to the default address: "the API is unreachable" for an API that was up."""
    import argparse

    from shared.keys_cli import add_keys_arguments

    monkeypatch.delenv("SN1_API_URL", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    add_keys_arguments(parser)
    assert vars(parser.parse_args(["list"]))["api"] == api


def test_the_import_summary_counts_in_words() -> None:
    """``sn1 keys import`` of a file with one key said "imported 1 keys"."""
    from shared.keys_cli import imported_line

    assert imported_line(1, 0) == "imported 1 key (0 already here)"
    assert imported_line(0, 2) == "imported 0 keys (2 already here)"
    assert imported_line(2, 0) == "imported 2 keys (0 already here)"


async def test_an_api_url_with_a_password_is_never_printed_with_it() -> None:
    """``SN1_API_URL=https://ops:<password>@proxy/`` (a proxy with basic auth, which aiohttp takes from the URL): an
    error printed the URL as given, its password too, into a terminal's scrollback or a cron job's mail."""
    from aiohttp import web

    from shared.http import error_middleware
    from tests.helpers import free_port, serve_app

    async with serve_app(web.Application(middlewares=[error_middleware])) as other:
        with_password = other.replace("http://", "http://ops:s3cretPass@")
        down = f"http://ops:s3cretPass@127.0.0.1:{free_port()}"
        for url, exit_code in ((with_password, 1), (down, 2)):
            code, _, err = await sn1_keys(ApiUnderTest(url=url, key="", ctx=None, scripts={}), "list")
            assert code == exit_code and "s3cretPass" not in err and "http://***@127.0.0.1:" in err, err


async def test_the_cli_and_the_admin_client_filter_and_page_the_key_list(api: ApiUnderTest) -> None:
    """``sn1 keys list --name/--scope/--status`` and ``--limit``/``--after`` (the admin client's ``key_page``): a
    team's keys, one page at a time, the table ending with the flag for the next page. Before, every key, always."""
    async with AdminClient(api.url, ADMIN) as admin:
        made = [await admin.create_key(5, name="pager") for _ in range(3)]
        ids = [k.id for k in made]
        assert [k.id for k in await admin.list_keys(name="pager")] == ids
        page = await admin.key_page(limit=2, name="pager")
        assert [k.id for k in page.data] == ids[:2] and page.has_more and page.last_id == ids[1]
        page = await admin.key_page(limit=2, name="pager", after=page.last_id)
        assert [k.id for k in page.data] == ids[2:] and not page.has_more
        with pytest.raises(AdminError) as e:
            await admin.key_page(limit=0)
        assert e.value.status == 0 and "limit" in str(e.value)  # refused before anything was sent

    code, out, err = await sn1_keys(api, "list", "--name", "pager", "--limit", "2")
    assert code == 0, err
    assert ids[0] in out and ids[1] in out and ids[2] not in out
    assert out.strip().splitlines()[-1] == f"more keys: add --after {ids[1]}"
    code, out, err = await sn1_keys(api, "list", "--name", "pager", "--limit", "2", "--after", ids[1])
    assert code == 0 and ids[2] in out and "more keys" not in out, err
    code, out, err = await sn1_keys(api, "--json", "list", "--name", "pager", "--limit", "1", "--desc")
    assert code == 0, err
    page = json.loads(out)
    assert [k["id"] for k in page["data"]] == [ids[2]] and page["has_more"] is True
    code, out, err = await sn1_keys(api, "--json", "list", "--scope", "chat", "--status", "active")
    assert code == 0 and set(ids) <= {k["id"] for k in json.loads(out)}, err  # a list, as without a filter
    code, out, err = await sn1_keys(api, "list", "--status", "revoked")
    assert code == 2 and "revoked" in err  # argparse's choices
