"""The README's curl examples for operators and callers ("Admin endpoints" and the caller's own usage after it,
"Sticky model sessions", "Web retrieval") run as written, in order, against a real API: a reader pastes them one after another."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from shared.keys_wire import UsageModelOut
from tests.helpers import ApiUnderTest, api_with_miners
from tests.keys.conftest import ADMIN

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
README_API = "http://127.0.0.1:42170"


def bash_examples(heading: str) -> str:
    """The bash blocks of the README section under ``heading``, as one script: a section's blocks share their
    variables."""
    section = README[README.index(heading):]
    section = section[:re.search(r"\n##+ ", section[1:]).start() + 1]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL))


async def run_examples(api: ApiUnderTest, heading: str = "### Admin endpoints") -> str:
    """What the section's examples print, a newline after each curl's answer (as a terminal shows them)."""
    script = "curl() { command curl -w '\\n' \"$@\"; }\n" + bash_examples(heading).replace(README_API, api.url)
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SN1_ADMIN_KEY": ADMIN, "KEY": api.key})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and not err, err.decode()
    return out.decode()


def answers(printed: str) -> list[dict]:
    """One JSON object per line of ``printed``."""
    return [json.loads(line) for line in printed.splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_admin_examples_run_as_written_in_order(api: ApiUnderTest) -> None:
    """Every call answers what its comment says, never an error. The caller's ``/v1/usage`` example used the
    secret the rotate example had just replaced (and came after the delete): it answered 401 invalid_api_key."""
    answered = answers(await run_examples(api))
    errors = [a for a in answered if "error" in a]
    assert not errors
    messages = [a.get("message") or a.get("object") for a in answered]
    assert messages == ["API key created", "API key updated", "API key updated", "API key updated", "list", "list", "usage",
                        "API keys imported", "usage", "API key deleted"]
    batch = answered[3]  # the batch key's limits of its own, as set
    assert (batch["max_concurrent_requests"], batch["max_stored_bytes_per_day"]) == (256, 1 << 30)
    own_usage = answered[-2]
    assert own_usage["key_id"] == answered[-1]["id"] and own_usage["rate_limit"] == 100
    assert own_usage["stored_bytes_per_day"] == 1 << 30  # the key's own, in force
    assert_the_usage_comment_is(own_usage)


def usage_comment() -> str:
    """The comment under the caller's ``/v1/usage`` example: the answer it promises."""
    after = README[README.index('curl -s "$A/v1/usage'):].splitlines()[1:]
    return "\n".join(itertools.takewhile(lambda line: line.startswith("#"), after))


def assert_the_usage_comment_is(answer: dict) -> None:
    """The comment names every field the answer has (its own, its totals', a day's ``date`` and ``models``) and no other, with
    the values the examples before it set. It said ``"max_concurrent_requests":64`` after the example had set
    256, and named neither ``stored_bytes_today`` nor ``stored_bytes_per_day``."""
    comment = usage_comment()
    day = {"date", "models", *UsageModelOut.model_fields}  # a day's own fields (the totals' besides), its models'
    assert set(re.findall(r'"(\w+)":', comment)) == {*answer, *answer["totals"], *day}
    stated = {name: int(value) for name, value in re.findall(r'"(\w+)":(\d+)\b', comment)}
    assert stated == {name: answer[name] for name in stated}


def admin_client_example() -> str:
    """The Python block of "### `sn1 keys` and the admin client"."""
    section = README[README.index("### `sn1 keys` and the admin client"):]
    section = section[:section.index("\n### ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0]


async def test_the_admin_client_example_runs_as_written(api: ApiUnderTest) -> None:
    """Pasted into a file and run, the example does every call it shows. It used ``async with`` at the top
    level and an ``admin_key`` it never set: a SyntaxError before any call."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", admin_client_example().replace(README_API, api.url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "ADMIN_KEY": ADMIN})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    key_id, rate_limit, prefix, count = out.decode().split()
    assert rate_limit == "120" and prefix.startswith("sn1-") and int(count) >= 1
    assert not [k for k in await api.ctx.store.list_keys() if k.id == key_id]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_session_examples_run_as_written_in_order(tmp_path: Path) -> None:
    """Open, two chats on the pinned miner, read, ping, close: each call answers what its comment says. The ping
    and close examples named a literal ``SESSION_ID``: pasted, each was a 404 ``session_not_found``."""
    async with api_with_miners(tmp_path, {}, honest={1, 2, 3}) as api:
        printed = await run_examples(api, "### Sticky model sessions")
    headers = [line for line in printed.splitlines() if line.startswith("x-sn1-")]
    opened, read, pinged, closed = answers("\n".join(line for line in printed.splitlines() if line.startswith("{")))
    assert set(opened) == {"session_id", "model", "uid", "expires_at", "created_at", "failover"}
    assert opened["model"] == "sn1/deterministic" and opened["failover"] is True and read == opened
    assert f"x-sn1-session-id: {opened['session_id']}" in headers
    assert [h for h in headers if h.startswith("x-sn1-miner-uid")] == [f"x-sn1-miner-uid: {opened['uid']}"] * 2
    assert (pinged["session_id"], pinged["uid"], pinged["status"]) == (opened["session_id"], opened["uid"], "ok")
    assert closed == {"session_id": opened["session_id"], "deleted": True}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_web_retrieval_examples_find_the_local_corpus(tmp_path: Path) -> None:
    """The two searches of "Web retrieval", GET and POST, each answer ``{"results": [...]}`` from the offline
    corpus: at most ``n_results`` pages, each ``{url, content, relevant}``."""
    from shared.corpus import BASE_URL

    async with api_with_miners(tmp_path, {}, honest={1, 2, 3}) as api:
        searches = answers(await run_examples(api, "### Web retrieval"))
    assert len(searches) == 2
    for search in searches:
        assert set(search) == {"results"} and 1 <= len(search["results"]) <= 5, search
        assert all(set(r) == {"url", "content", "relevant"} and r["url"].startswith(BASE_URL)
                   for r in search["results"]), search
