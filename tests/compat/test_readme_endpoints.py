"""The README's "Endpoints" section, and the validator's "HTTP API" table, name exactly the routes each process
registers: a route added without a line there, or a line left for a route that went, is a failure here rather
than a reader's 404 (or a served route nobody can find)."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from api.app import create_api_app
from api.openapi import routes_of
from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.validator.app import ValidatorContext, create_validator_app
from neurons.validator.availability import AvailabilityBook
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring_queue import ScoringQueue
from neurons.validator.tasks import default_registry
from shared.signing import Authorizer, RequestVerifier
from tests.helpers import api_with_miners, keypair

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
ENDPOINT = re.compile(r"`((?:GET|POST|PUT|DELETE)(?:\\?\|(?:GET|POST|PUT|DELETE))*) (/[^`\s?]*)[^`]*`")
# Served to render ``/docs`` (its script and styles), not an endpoint a reader calls.
NOT_ENDPOINTS = {("GET", "/docs/assets/{}")}


def section(head: str) -> str:
    text = README[README.index(head):]
    return text[:text.index("\n#", len(head))]


def named(text: str) -> set[tuple[str, str]]:
    """Each ``METHOD /path`` (or ``GET|DELETE /path``) in ``text``, one per method, its parameters as ``{}``."""
    return {(method, normal(path)) for methods, path in ENDPOINT.findall(text)
            for method in methods.replace("\\", "").split("|")}


def normal(path: str) -> str:
    """``/v1/responses/{response_id}`` and the README's ``/v1/responses/{id}`` alike; no trailing slash (the
    create route is served with and without one)."""
    return re.sub(r"\{[^}]*\}", "{}", path).rstrip("/") or "/"


def registered(app: web.Application) -> set[tuple[str, str]]:
    return {(method, normal(path)) for method, path, _ in routes_of(app)} - NOT_ENDPOINTS


def paragraph(text: str, start: str) -> str:
    text = text[text.index(start):] + "\n\n"
    return text[:text.index("\n\n")]


async def test_the_api_table_names_every_route_the_api_serves(tmp_path: Path) -> None:
    table = section("## Endpoints")
    table = table[:table.index("\n\n", table.index("| endpoint |"))]
    async with api_with_miners(tmp_path, {}) as api:
        app = create_api_app(api.ctx, run_background=False)  # the same routes table as the running API
        assert named(table) == registered(app)


def test_the_validator_and_miner_lines_name_their_routes() -> None:
    validator_kp, miner_kp = keypair("//Validator"), keypair("//Miner1")
    ctx = ValidatorContext(book=AvailabilityBook(), scoring_queue=ScoringQueue(10),
                           verifier=RequestVerifier(validator_kp.ss58_address, Authorizer(lambda: ())),
                           scores=ScoreBook(default_registry().probabilities), metagraph=None)
    validator = registered(create_validator_app(ctx))
    endpoints = section("## Endpoints")
    assert named(paragraph(endpoints, "Validator (`SCORING_API_PORT`")) == validator
    assert named(section("### HTTP API (port `SCORING_API_PORT`")) == validator
    miner = create_miner_app(DeterministicBackend(), RequestVerifier(miner_kp.ss58_address, Authorizer(lambda: ())))
    assert named(paragraph(endpoints, "Miner: `POST")) == registered(miner)
