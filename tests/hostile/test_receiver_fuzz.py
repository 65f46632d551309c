"""The miner's and the validator's endpoints fuzzed with validly signed hostile bodies: a caller that
passes btauth/1 still never gets a 500, and every error is OpenAI-shaped."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from bittensor import http_auth
from hypothesis import given
from hypothesis import strategies as st

from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.validator.app import ValidatorContext, create_validator_app
from neurons.validator.availability import AvailabilityBook
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring_queue import ScoringQueue
from neurons.validator.tasks import default_registry
from shared.metagraph import MetagraphView
from shared.signing import Authorizer, RequestVerifier
from tests.helpers import StaticSource, keypair, serve_app, snapshot
from tests.hostile.conftest import threaded
from tests.hostile.test_api_fuzz import FUZZ, json_values, raw_bodies, send

VALIDATOR, MINER = keypair("//Validator"), keypair("//FuzzMiner")


class Target:
    def __init__(self, name: str, url: str, hotkey: str, app: Any) -> None:
        self.name, self.hotkey, self.app = name, hotkey, app
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)

    def routes(self) -> list[tuple[str, str]]:
        out = []
        for route in self.app.router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path")
            if path and route.method != "HEAD":
                out.append((route.method, path))
        return sorted(set(out))


@contextlib.asynccontextmanager
async def receivers() -> AsyncIterator[list[Target]]:
    # made here, not at import: collected minutes before it runs under xdist, the validator's /ready called its
    # metagraph stale (a 503)
    snap = snapshot(VALIDATOR.ss58_address, {1: (MINER.ss58_address, None)})
    view = MetagraphView(StaticSource(snap))
    view.snapshot = snap
    miner = create_miner_app(DeterministicBackend(), RequestVerifier(MINER.ss58_address,
                                                                     Authorizer(view.permitted_hotkeys)))
    ctx = ValidatorContext(book=AvailabilityBook(), scoring_queue=ScoringQueue(1000),
                           verifier=RequestVerifier(VALIDATOR.ss58_address,
                                                    Authorizer(lambda: (), [VALIDATOR.ss58_address])),
                           scores=ScoreBook(default_registry().probabilities), metagraph=view)
    validator = create_validator_app(ctx)
    async with serve_app(miner) as m_url, serve_app(validator) as v_url:
        yield [Target("miner", m_url, MINER.ss58_address, miner),
               Target("validator", v_url, VALIDATOR.ss58_address, validator)]


@pytest.fixture(scope="module")
def targets() -> Iterator[list[Target]]:
    with threaded(receivers) as (value, _loop):
        yield value


organic = st.fixed_dictionaries(
    {"body": st.fixed_dictionaries({"messages": st.just([{"role": "user", "content": "hi"}])},
                                   optional={"seed": json_values, "task": json_values, "timeout": json_values,
                                             "max_tokens": json_values}) | json_values,
     "uids": st.lists(st.integers(min_value=-3, max_value=10**20), max_size=4) | json_values},
    optional={"chunks": json_values, "timings": json_values, "errors": json_values, "winner": json_values,
              "created_at": json_values},
).map(lambda d: json.dumps(d, allow_nan=True).encode())


# A valid payload with one hostile field: it reaches past the first check into the scoring queue path.
organic_one_bad = st.tuples(
    st.sampled_from(["chunks", "timings", "errors", "winner", "created_at", "uids", "body"]),
    st.none() | st.floats(0, 2e9) | st.just(1) | json_values
    | st.dictionaries(st.sampled_from(["1", "2", "x", "-1"]), json_values, max_size=2),
).map(lambda kv: json.dumps({"body": {"messages": [{"role": "user", "content": "hi"}]}, "uids": [1],
                             kv[0]: kv[1]}, allow_nan=True).encode())


@FUZZ
@given(data=st.data())
def test_signed_hostile_bodies_never_500(targets: list[Target], data: st.DataObject) -> None:
    for target in targets:
        for method, path in target.routes():
            bodies = st.one_of(organic_one_bad, organic, raw_bodies) if path == "/scoring" else raw_bodies
            body = data.draw(bodies) if method == "POST" else None
            headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
            if method == "POST":
                signed = http_auth.sign(VALIDATOR, method="POST", path=path, body=body or b"",
                                        receiver_ss58=target.hotkey)
                headers += list(signed.items())
            status, resp, _ = send(target, method, path, body, headers)  # type: ignore[arg-type]
            where = f"{target.name} {method} {path} -> {status}: {resp[:300]!r}"
            assert status < 500, where
            if status >= 400:
                assert set(json.loads(resp)["error"]) == {"message", "type", "code", "param"}, where
