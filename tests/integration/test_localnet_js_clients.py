"""JavaScript clients against a real local subnet: the OpenAI Node SDK and the Vercel AI SDK.

Many application developers call OpenAI-compatible APIs from TypeScript; these run the scripts in
``tests/js`` (their packages pinned by its ``package-lock.json``; ``make test`` runs ``npm ci`` there when
``node`` is installed) against the session's local subnet, as the Python SDK tests do. Each script prints a
line per check and exits 1 naming the checks that failed; the README's JavaScript examples run as written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.compat.support import clients_section, example_env

JS = Path(__file__).resolve().parents[1] / "js"
NODE = shutil.which("node")

needs_node = pytest.mark.skipif(
    NODE is None, reason="node is not installed: these tests run the OpenAI Node SDK and the Vercel AI SDK "
                         "(Node.js >= 20; CI's machine has it)")

SCRIPTS = {
    # typed completions and headers, streams (for await; the .stream() helper's finalChatCompletion), logprobs'
    # two lists, tool calls and runTools, zodResponseFormat with .parse, models, the api-key header, typed
    # errors, abort, timeout
    "openai_chat.mjs": 11,
    # responses.create / previous_response_id / inputItems, event order and numbering, responses.stream's
    # finalResponse (incomplete too), zodTextFormat with .parse, a function call round trip, input_file,
    # conversations
    "openai_responses.mjs": 7,
    # every kind of payload (chat objects and chunks, legacy completions, models, responses and every stream
    # event, input items, conversations and their items) against the SDK's TypeScript types, by tsc --strict
    "openai_types.mjs": 1,
    # RateLimitError and its Retry-After; a spent daily token budget raises at once though the SDK retries 429s
    "openai_limits.mjs": 2,
    # generateText, streamText, tools over two steps, generateObject, a PDF part and a 404, through
    # @ai-sdk/openai-compatible, @ai-sdk/openai (Responses API) and @ai-sdk/openai's chat model
    "ai_sdk.mjs": 18,
}


def node(localnet: dict, *args: str) -> subprocess.CompletedProcess[str]:
    """``node args`` in tests/js (where its packages resolve) with the subnet's address and keys set, as the
    README's examples expect them."""
    if not (JS / "node_modules" / "openai").is_dir():
        pytest.fail("tests/js/node_modules is missing: `make test` installs it (or run `npm ci` in tests/js)")
    assert NODE is not None
    return subprocess.run([NODE, *args], cwd=JS, env=example_env(localnet), capture_output=True, text=True,
                          timeout=60)


@needs_node
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_script_passes_every_check(localnet: dict, script: str) -> None:
    out = node(localnet, script)
    assert out.returncode == 0, f"{script}:\n{out.stdout[-6000:]}\n{out.stderr[-3000:]}"
    passed = [line for line in out.stdout.splitlines() if line.startswith("ok ")]
    assert len(passed) == SCRIPTS[script], f"{script} ran {len(passed)} checks:\n{out.stdout}"


# A distinctive line of each of the README's JavaScript examples -> what its output must contain.
README_EXPECTED = {
    'from "openai"': ["sn1/deterministic", "streamed: stop", "parsed: {", "responses: completed",
                      "not found: model_not_found model"],
    'from "ai"': ["text: ", " tokens", "steps: tool-calls -> stop", "object: {"],
}


def readme_js_examples() -> list[tuple[str, str]]:
    """The ``js`` blocks of the README's "Clients" section, each with its key in ``README_EXPECTED``."""
    blocks = re.findall(r"^```js\n(.*?)^```", clients_section(), re.S | re.M)
    return [(next(k for k in README_EXPECTED if k in code), code) for code in blocks]


@needs_node
@pytest.mark.parametrize(("key", "code"), readme_js_examples(), ids=[k for k, _ in readme_js_examples()])
def test_readme_example_runs_as_written(localnet: dict, key: str, code: str) -> None:
    out = node(localnet, "--input-type=module", "--eval", code)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    for expected in README_EXPECTED[key]:
        assert expected in out.stdout, f"{expected!r} not in:\n{out.stdout}"


def test_every_readme_js_example_is_run() -> None:
    assert sorted(k for k, _ in readme_js_examples()) == sorted(README_EXPECTED)
