"""The README's key-management curl examples ("Admin endpoints" and the caller's own usage after it) run as
written, in order, against a real API: an operator pastes them one after another."""

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

from tests.helpers import ApiUnderTest
from tests.keys.conftest import ADMIN

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
README_API = "http://127.0.0.1:42170"


def admin_examples() -> str:
    """The bash blocks of "### Admin endpoints", as one script: the section's blocks share their variables."""
    section = README[README.index("### Admin endpoints"):]
    section = section[:section.index("\n### ", 1)]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL))


async def run_examples(api: ApiUnderTest) -> list[dict]:
    """Each curl's answer, one JSON object per call (a newline after each, as a terminal shows them)."""
    script = "curl() { command curl -w '\\n' \"$@\"; }\n" + admin_examples().replace(README_API, api.url)
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SN1_ADMIN_KEY": ADMIN})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and not err, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_admin_examples_run_as_written_in_order(api: ApiUnderTest) -> None:
    """Every call answers what its comment says, never an error. The caller's ``/v1/usage`` example used the
    secret the rotate example had just replaced (and came after the delete): it answered 401 invalid_api_key."""
    answers = await run_examples(api)
    errors = [a for a in answers if "error" in a]
    assert not errors
    messages = [a.get("message") or a.get("object") for a in answers]
    assert messages == ["API key created", "API key updated", "API key updated", "API key updated", "list", "usage",
                        "API keys imported", "usage", "API key deleted"]
    batch = answers[3]  # the batch key's limits of its own, as set
    assert (batch["max_concurrent_requests"], batch["max_stored_bytes_per_day"]) == (256, 1 << 30)
    own_usage = answers[-2]
    assert own_usage["key_id"] == answers[-1]["id"] and own_usage["rate_limit"] == 100
    assert own_usage["stored_bytes_per_day"] == 1 << 30  # the key's own, in force
    assert_the_usage_comment_is(own_usage)


def usage_comment() -> str:
    """The comment under the caller's ``/v1/usage`` example: the answer it promises."""
    after = README[README.index('curl -s "$A/v1/usage'):].splitlines()[1:]
    return "\n".join(itertools.takewhile(lambda line: line.startswith("#"), after))


def assert_the_usage_comment_is(answer: dict) -> None:
    """The comment names every field the answer has (its own, its totals', a day's ``date``) and no other, with
    the values the examples before it set. It said ``"max_concurrent_requests":64`` after the example had set
    256, and named neither ``stored_bytes_today`` nor ``stored_bytes_per_day``."""
    comment = usage_comment()
    assert set(re.findall(r'"(\w+)":', comment)) == {*answer, *answer["totals"], "date"}
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
