"""Schemathesis against ``/openapi.json``: every documented operation fuzzed from the document itself.

The API (a real SQLite store, real sr25519-signing client, three deterministic
miners on 127.0.0.1) runs on its own loop in a thread, apart from the other
tests' servers, so fuzzing the admin routes (delete, modify) cannot touch a key
another test uses. Schemathesis reads the document the API serves, generates
valid (positive) and invalid (negative) requests for each operation with a
bounded number of examples, sends them with a real API key (and the admin key
on admin routes) and checks each answer: no 5xx, a documented status, a body
that matches the documented schema (each SSE event too), a documented content
type; invalid requests refused with a 4xx; and an operation that answers 2xx
with the key also refuses the same request without it or with a wrong one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import schemathesis.specs.openapi.schemas  # noqa: F401  # at collection: see below
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from api import auth
from api.openapi import OPERATIONS
from shared.tasks import ALL_TASKS
from tests.chaos.fleet import HONEST, fleet
from tests.compat.support import MODEL, fresh_cache, serves
from tests.hostile.conftest import ADMIN_KEY, threaded

# schemathesis imports its OpenAPI modules lazily, on first use; pytest rewrites their asserts as it imports
# them, and CPython 3.11's compiler then failed ("AST constructor recursion depth mismatch") when an earlier
# test in the same process had hit a RecursionError (a hostile body's deep nesting): imported at collection,
# before any test runs, they are compiled once and early.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "12"))  # per operation and mode
# Every built-in check but ``positive_data_acceptance``: a schema-valid request may still be refused
# for a reason the schema cannot express (a uid not in the metagraph, a model no miner serves).
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "negative_data_rejection",
          "ignored_auth", "missing_required_header", "unsupported_method", "allow_header_conformance",
          "use_after_free", "ensure_resource_availability"]


def fuzz_config(url: str, key: str) -> schemathesis.Config:
    """Where to send requests, with which credentials and which checks."""
    return schemathesis.Config.from_dict({
        "base-url": url,
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS},
                   # a request line or header past aiohttp's 8,190 bytes (a drawn query string of thousands of
                   # characters) is refused before any route as 414 or 431, as HTTP names them (shared.http)
                   "negative_data_rejection": {"enabled": True, "expected-statuses": [  # schemathesis's, and those
                       "400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429", "431",
                       "5xx"]}},
        "auth": {"openapi": {"bearer": {"bearer": key}, "apiKeyHeader": {"api_key": key},
                             "xApiKeyHeader": {"api_key": key}, "adminKey": {"api_key": ADMIN_KEY}}},
        "request-timeout": 30,
    })


@pytest.fixture(scope="module")
def fuzzed_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, asyncio.AbstractEventLoop]]:
    """A fleet of three honest miners behind its own API (not shared with other tests), and the loop it runs on."""
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    # Schemathesis sends wrong keys on purpose (ignored_auth) far more than 60 times a minute: lift the
    # per-address throttle on wrong keys so it keeps seeing the 401s it checks for. Wrong admin keys too: past
    # ADMIN_FAILURES_PER_MINUTE in a minute the admin routes answered 429 where the check wants a 401 (a failure
    # that came and went with how many admin cases fell into one minute of the run).
    with pytest.MonkeyPatch.context() as patch, \
            threaded(lambda: fleet(tmp, {1: HONEST, 2: HONEST, 3: HONEST}, invalid_keys_per_minute=10**6)) as (f, loop):
        patch.setattr(auth, "ADMIN_FAILURES_PER_MINUTE", 10**6)
        # As a validator would report it: every miner serves the deterministic model and every task.
        f.ctx.availability = fresh_cache(f, {uid: serves([MODEL], sorted(ALL_TASKS)) for uid in (1, 2, 3)})
        yield f, loop


@pytest.fixture(scope="module")
def fuzzed_api(fuzzed_fleet: tuple[Any, asyncio.AbstractEventLoop]) -> Any:
    return fuzzed_fleet[0]


@pytest.fixture
def own_key(fuzzed_fleet: tuple[Any, asyncio.AbstractEventLoop]) -> str:
    """A key of the test's own: the fuzzing sends the fixture's key with whatever it draws, and a session it
    opened for a drawn model (accepted as written once the fixture's availability is stale, after 120 s)
    pinned every later chat request of that key to that model, a 404, when such a test ran after it. Made in
    the store, on the fleet's loop: the admin route is throttled by then (the fuzzing's wrong admin keys)."""
    f, loop = fuzzed_fleet
    secret, _ = asyncio.run_coroutine_threadsafe(f.ctx.store.create_key(1000), loop).result(timeout=30)
    return secret


@pytest.fixture(scope="module")
def api_schema(fuzzed_api: Any) -> Any:
    document = requests.get(fuzzed_api.url + "/openapi.json", timeout=10).json()
    return schemathesis.openapi.from_dict(document, config=fuzz_config(fuzzed_api.url, fuzzed_api.key))


def fuzz_cases() -> list[tuple[str, str, GenerationMode]]:
    """Valid requests for every operation; invalid ones where there is a body or a query to get wrong."""
    cases = []
    for (method, path), op in sorted(OPERATIONS.items()):
        cases.append((method, path, GenerationMode.POSITIVE))
        if op.body is not None or op.query is not None:
            cases.append((method, path, GenerationMode.NEGATIVE))
    return cases


def test_every_documented_operation_is_fuzzed(api_schema: Any) -> None:
    """Each operation in the served document has an ``OPERATIONS`` entry, so the cases below cover it."""
    documented = {(op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations())}
    assert documented - set(OPERATIONS) == set(), "routes without an api.openapi.OPERATIONS entry"


@pytest.mark.parametrize(("method", "path", "mode"), fuzz_cases(), ids=str)
def test_operation_conforms_to_the_document(api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def fuzz(case: Any) -> None:
        case.call_and_validate()

    fuzz()


def test_findings_stay_fixed(fuzzed_api: Any, own_key: str) -> None:
    """What schemathesis found, as plain requests: a deadline no miner can meet and wrongly typed
    fields were accepted (a 504 later, or a silent coercion); both are now a 400 naming the field."""
    headers = {"Authorization": f"Bearer {own_key}"}
    messages = [{"role": "user", "content": "hi"}]
    refused = [
        ("/v1/chat/completions", {"messages": messages, "timeout": 5e-324}, "timeout"),
        ("/v1/chat/completions", {"messages": messages, "max_tokens": "5"}, "max_tokens"),
        ("/v1/chat/completions", {"messages": messages, "stream": "true"}, "stream"),
        ("/v1/chat/completions", {"messages": messages, "frequency_penalty": False}, "frequency_penalty"),
        ("/web_retrieval", {"search_query": "q", "max_response_time": 0.01}, "max_response_time"),
    ]
    for path, body, param in refused:
        r = requests.post(fuzzed_api.url + path, json=body, headers=headers, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (path, body, r.status_code, r.text)
    # Found when another module's tests ran first (hypothesis draws differently then): an empty k was
    # taken as the default, where the document says an integer.
    r = requests.get(fuzzed_api.url + "/miner_availabilities/get_available_miners?k=", headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "k", r.text
    r = requests.post(fuzzed_api.url + "/v1/chat/completions", headers=headers, timeout=30,
                      json={"messages": messages, "timeout": 5, "temperature": 1, "max_tokens": 8})
    assert r.status_code == 200, "an int where a number is expected is still fine, as at OpenAI"


def test_session_lifecycle_answers_match_the_document(api_schema: Any, own_key: str) -> None:
    """Random bodies rarely name a served model, so the sessions' 200 answers are checked here,
    each validated by schemathesis against its documented schema: open, get, ping, delete."""
    auth = {"Authorization": f"Bearer {own_key}"}  # no session but the one opened here
    opened = api_schema["/v1/sessions"]["POST"].Case(body={"model": MODEL, "sessionDuration": 60}).call_and_validate(
        headers=auth)
    assert opened.status_code == 200, opened.text
    session_id = opened.json()["session_id"]
    got = api_schema["/v1/sessions"]["GET"].Case().call_and_validate(headers=auth)
    assert got.status_code == 200 and got.json()["session_id"] == session_id
    ids = {"session_id": session_id}
    pinged = api_schema["/v1/sessions/{session_id}/ping"]["POST"].Case(path_parameters=ids).call_and_validate(
        headers=auth)
    assert pinged.status_code == 200 and pinged.json()["status"] == "ok", pinged.text
    deleted = api_schema["/v1/sessions/{session_id}"]["DELETE"].Case(path_parameters=ids).call_and_validate(
        headers=auth)
    assert deleted.status_code == 200 and deleted.json() == {"session_id": session_id, "deleted": True}
    gone = api_schema["/v1/sessions"]["GET"].Case().call_and_validate(headers=auth)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"
