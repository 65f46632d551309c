"""Every example in the README's "Try it" and "Clients" sections runs, as written, against the local subnet.

Each fenced ``python``/``bash`` block is one example, run in its own process with
``SN1_API``, ``SN1_BASE_URL``, ``SN1_API_KEY`` and ``SN1_ADMIN_KEY`` set, as a reader
would after copy-pasting it. Its output must show what the section promises.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compat.support import CLIENTS_START, README, clients_section, example_env

README_PORT = "42170"

BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)

# A distinctive line of each example -> what its output must contain.
EXPECTED = {  # most specific first: the agents example also mentions AsyncOpenAI
    "pydantic_ai": ["tools called: 1 | ", "destination='Rome' days=1"],
    "with_raw_response": ["not found: model_not_found", "tokens]"],
    "triage_agent": ["Spanish agent :", "English agent :", "streamed usage: 102 tokens"],  # a count, not 0
    "get_weather": ["get_weather {'city': 'Paris'}"],
    "client.responses": ["completed ", "continued True | history: 3 items", "conversation: 4 items",
                         "background: completed ", "usage:", " tokens",
                         "https://corpus.sn1.local/wiki/pelseldan-city"],
    "web_search_options": ["| citations: 0"],
    "client.completions": ["0 length ", "3 length ", "usage: ", "langchain: "],
    "response_format=City": ["name='Tell me about Paris' population=4 landmarks=['Tell me about Paris']"],
    "langchain_openai": ["uid=7 hotkey='uid and hotkey of the top miner?'", "hotkey='The top miner?'",
                         "[54 tokens]"],  # a streamed answer's usage, which LangChain drops for a base_url not OpenAI's
    "AsyncOpenAI": ["sn1/deterministic"],
    "/v1/chat/completions": ['"object":"chat.completion"', "data: [DONE]", '"object":"list"', '"results"',
                             '"background":true', '"status":"completed"'],
    "create-api-key": ['"api_key":"sn1-', '"rate_limit":120', '"deleted":true'],
    "/openapi.json": ["sn1_api_http_requests_total{", "paths", "200"],
}

def examples() -> list[tuple[str, str, str]]:
    found = []
    for lang, code in BLOCK.findall(clients_section()):
        if "export SN1_API=" in code:
            continue  # the set-up block itself
        key = next((k for k in EXPECTED if k in code), None)
        assert key is not None, f"an example in {README.name} has no expectation here:\n{code[:200]}"
        found.append((key, lang, code))
    return found


@pytest.mark.parametrize(("key", "lang", "code"), examples(), ids=[e[0] for e in examples()])
def test_example_runs(localnet: dict, key: str, lang: str, code: str) -> None:
    env = example_env(localnet)
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-c", code]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{key} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    for expected in EXPECTED[key]:
        assert expected in out.stdout, f"{key}: {expected!r} not in output:\n{out.stdout[-2000:]}"
    assert out.stdout.strip(), "every example prints its answer"


def try_it_blocks() -> list[tuple[str, str]]:
    """The fenced blocks of "## Try it": what a newcomer runs first, with ``make run`` up."""
    text = README.read_text()
    section = text[text.index("\n## Try it\n"):text.index(CLIENTS_START)]
    return BLOCK.findall(section)


def test_try_it_runs_as_written(localnet: dict, tmp_path: Path) -> None:
    """Run from the repository root (``localnet/localnet.json`` beside it), on the README's port and with the
    key pasted in where it says, each block answers what its comments promise."""
    (tmp_path / "localnet").symlink_to(localnet["dir"])
    port = localnet["api_url"].rsplit(":", 1)[1]
    outputs = []
    for lang, code in try_it_blocks():
        code = code.replace(README_PORT, port).replace('"sn1-..."', repr(localnet["api_key"]))
        cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-c", code]
        out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and not out.stderr, out.stderr[-3000:]
        outputs.append(out.stdout)
    shell, python = outputs
    for expected in ['"object":"chat.completion"', "data: [DONE]", "event: response.completed"]:
        assert expected in shell, f"{expected!r} not in:\n{shell[-2000:]}"
    answer, streamed = python.split("\n", 1)
    assert answer.strip() and streamed.strip()
