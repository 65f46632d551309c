"""``sn1_api_errors_total{route, code}``: ``sn1_api_http_requests_total`` counts by status, and a 503
``no_miners_available`` (no miner to ask: ``SN1NoMinerAnswering``, which sees races only, never fires) could not be
told from a 503 ``store_unavailable``, nor a 429 ``rate_limit_exceeded`` from a 429 ``token_limit_exceeded``. A real
API whose metagraph has no serving miner answers a wrong key, a bad body and a chat; its ``/metrics`` names each
error's code."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from shared.errors import API_ERROR_CODES
from shared.metrics import ErrorCodes
from tests.helpers import api_with_miners, post

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
MESSAGES = [{"role": "user", "content": "Hello"}]


def errors(text: str) -> dict[tuple[str, str], float]:
    """``{(route, code): count}`` of ``sn1_api_errors_total`` in a scrape."""
    return {(s.labels["route"], s.labels["code"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "sn1_api_errors_total"}


async def test_each_answered_error_is_counted_by_route_and_its_code(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}) as api:  # no serving miner
        async with aiohttp.ClientSession() as s:
            async with s.get(api.url + "/v1/models", headers={"Authorization": "Bearer sn1-not-a-key"}) as r:
                assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
        status, _, text = await post(api, {"model": "sn1/deterministic", "messages": 7})
        assert status == 400 and '"invalid_value"' in text, text
        for _ in range(2):
            status, _, text = await post(api, {"model": "sn1/deterministic", "messages": MESSAGES})
            assert status == 503 and '"no_miners_available"' in text, text
        assert (await post(api, {"model": "sn1/deterministic"}, path="/v1/nowhere"))[0] == 404
        async with aiohttp.ClientSession() as s, s.get(api.url + "/metrics") as r:
            scraped = errors(await r.text())
    assert scraped == {("/v1/models", "invalid_api_key"): 1.0,
                       ("/v1/chat/completions", "invalid_value"): 1.0,
                       ("/v1/chat/completions", "no_miners_available"): 2.0,
                       ("unmatched", "not_found"): 1.0}, scraped


def test_a_null_code_is_none_and_an_unlisted_one_other() -> None:
    """The label's values stay the README's codes: an upstream's or a bug's wording is not a new series."""
    registry = CollectorRegistry()
    counts = ErrorCodes(registry, "t_errors", API_ERROR_CODES)
    for status, code in ((500, None), (502, "some upstream wording"), (499, None), (200, None), (429,
                                                                                                "rate_limit_exceeded")):
        counts.observe("/r", status, code)
    got = {s.labels["code"]: s.value for s in registry.collect() for s in s.samples if s.name == "t_errors_total"}
    assert got == {"none": 1.0, "other": 1.0, "rate_limit_exceeded": 1.0}


def test_the_bounded_codes_are_the_readme_error_codes_table() -> None:
    section = README[README.index("### Error codes"):]
    table = section[:section.index("\n## ")]
    listed = {code for row in re.findall(r"^\| [^|]+ \| ([^|]+) \|", table, re.M) for code in re.findall(r"`(\w+)`", row)}
    assert listed - {"code"} == API_ERROR_CODES


# Source that answers no API request: the signed receivers' checks (the validator's and the miner's refusals) and
# the admin client (its own ``unreachable`` when the API could not be asked).
NOT_THE_APIS = {"shared/signing.py", "shared/admin_client.py"}
# A failed background response's ``error.code``: OpenAI's ``server_error``, inside a response object, not an error body.
NOT_ERROR_BODIES = {"server_error"}
CODE = re.compile(r"""\bcode=["'](\w+)["']|["']code["']: ?["'](\w+)["']""")


def test_every_code_the_api_answers_is_a_listed_one() -> None:
    """A code raised in the API's source (``code="..."``, or an error body written out) is in API_ERROR_CODES, so
    in README's table too (the test above): ``too_many_connections``, the connection guard's 503, was in neither."""
    root = Path(__file__).resolve().parents[2]
    sources = [p for p in [*root.glob("api/**/*.py"), *root.glob("shared/**/*.py")]
               if p.relative_to(root).as_posix() not in NOT_THE_APIS]
    found = {a or b for path in sources for a, b in CODE.findall(path.read_text())}
    assert found - NOT_ERROR_BODIES - API_ERROR_CODES == set()
