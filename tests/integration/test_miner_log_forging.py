"""A miner's refusal text reaches the API's and the validator's WARNING lines on one line (and a caller's session
model name the API's INFO line).

A refusal of our signature (HTTP 401/403) is quoted in a WARNING so an operator sees why (a clock off, no
permit). Its code and message are the miner's own words: a line break in them wrote a line of the miner's
choosing into the operator's log (``... | ERROR | validator | weights: ...``), which a log reader or an
alert takes for the process's own.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from loguru import logger

from neurons.validator.availability import AvailabilityBook, poll_all
from shared.miner_client import MinerClient, make_session
from shared.signing import Signer
from tests.helpers import Script, api_with_miners, log_lines, post, serve_app, snapshot
from tests.validator.test_app import MINERS, VALIDATOR, _view

FORGED = "\n2026-12-06 12:00:00.000 | ERROR    | api | FORGED-BY-A-MINER"
CODE = "StaleRequest\r\n2026-12-06 12:00:00.000 | ERROR    | api | FORGED-CODE"


def refusing_app() -> web.Application:
    """A miner that refuses every signed call with a 401 whose code and message hold line breaks."""

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": {"message": f"refused{FORGED}", "type": "authentication_error",
                                            "code": CODE, "param": None}}, status=401)

    app = web.Application()
    app.router.add_post("/availability", refuse)
    app.router.add_post("/v1/chat/completions", refuse)
    return app


def forged(lines: list[str]) -> list[str]:
    """The captured lines that carry a line break of the miner's (each record's message must be one line)."""
    return [line for line in lines if "FORGED" in line and ("\n" in line or "\r" in line)]


async def test_a_miners_refusal_is_quoted_on_one_line_by_the_api(tmp_path: Path) -> None:
    script = Script(steps=[], status=401, error_code=CODE, error_message=f"refused{FORGED}")
    lines, handler = log_lines("WARNING")
    try:
        async with api_with_miners(tmp_path, {1: script}) as api:
            status, _, _ = await post(api, {"model": "default", "messages": [{"role": "user", "content": "hi"}]})
    finally:
        logger.remove(handler)
    assert status == 502
    quoted = [line for line in lines if "refuse this host's signed requests" in line]
    assert quoted, lines
    assert not forged(lines), quoted
    assert "FORGED-BY-A-MINER" in quoted[0] and "\\x0a" in quoted[0]  # still quoted, escaped


async def test_a_miners_refusal_is_quoted_on_one_line_by_the_validator() -> None:
    lines, handler = log_lines("WARNING")
    try:
        async with serve_app(refusing_app()) as url, make_session() as session:
            snap = snapshot(VALIDATOR.ss58_address, {1: (MINERS[1].ss58_address, url.removeprefix("http://"))})
            book = await poll_all(MinerClient(session, Signer(VALIDATOR)), _view(snap), AvailabilityBook(),
                                  timeout=5, concurrency=4)
    finally:
        logger.remove(handler)
    assert book.refused_by_all
    quoted = [line for line in lines if "refused this validator's signed requests" in line]
    assert quoted, lines
    assert not forged(lines), quoted
    assert "FORGED-BY-A-MINER" in quoted[0]


async def test_a_callers_session_model_is_logged_on_one_line(tmp_path: Path) -> None:
    """Without availability data (the validator not answered yet, or stale) a session opens for any model name
    the caller writes, and its INFO line quoted that name: a line break in it wrote a line of the caller's."""
    from tests.helpers import call

    lines, handler = log_lines("INFO")
    try:
        async with api_with_miners(tmp_path, {}, honest={1}) as api:
            status, opened = await call(api, "POST", "/v1/sessions", {"model": f"m{FORGED}"})
    finally:
        logger.remove(handler)
    assert status == 200, opened
    quoted = [line for line in lines if f"session {opened['session_id']} opened" in line]
    assert quoted and "FORGED-BY-A-MINER" in quoted[0], lines
    assert not forged(lines), quoted
