"""What ``POST /scoring`` cannot take: the intake (``neurons.validator.intake``) refuses in its own kinds, with no HTTP
in them, and the HTTP side alone (``scoring_http.refusal``) answers each as its sender always got it: the status, the
OpenAI-shaped body with its code and param, and ``Retry-After`` for what the API's forwarder is to send again."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from neurons.validator.app import create_validator_app
from neurons.validator.inbox import ScoringInbox
from neurons.validator.payload import OrganicPayload
from neurons.validator.scoring_queue import ScoringQueue
from shared.signing import Signer
from tests.helpers import serve_app
from tests.validator.test_app import BODY, VALIDATOR, is_openai_error, make_ctx, payload

SCORED = "ArithmeticTask, InferenceTask, QuestionAnsweringTask, WebRetrievalTask"
MAX_SCORING_BATCH = 256
UNKNOWN = f"Unknown task 'ProgrammingTask': this validator scores {SCORED}."


async def post(url: str, data: object) -> tuple[int, dict, dict[str, str]]:
    """A signed ``POST /scoring``: its status, body and headers (``Retry-After`` is what the forwarder reads)."""
    raw = json.dumps(data).encode()
    headers = Signer(VALIDATOR).headers("POST", URL(url + "/scoring"), raw, VALIDATOR.ss58_address)
    async with aiohttp.ClientSession() as s, s.post(url + "/scoring", data=raw, headers=headers) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


def inbox_that_cannot_grow(tmp_path: Path) -> ScoringInbox:
    """A scoring inbox on a file that may not grow past its size now: a full disk, to its writes."""
    inbox = ScoringInbox(tmp_path / "scoring_inbox.db")
    db = inbox._durable
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    return inbox


def big_payload() -> dict:
    return payload(chunks={"1": ["an answer too long for a file that cannot grow " * 40] * 200, "2": []},
                   timings={"1": [0.1] * 200, "2": []})


async def test_the_intake_refuses_in_its_own_kinds_with_no_status_or_header(tmp_path: Path) -> None:
    """The logic raised ``ApiError`` (an HTTP status and headers): a task not scored, a full lane and an inbox that
    cannot store are each a kind of ``IntakeRefused`` now, in the validator's words, and none is an HTTP error."""
    from neurons.validator.intake import (
        InboxRefused,
        IntakeRefused,
        QueueFull,
        UnknownTask,
        check_task,
        queue_new,
    )
    from shared.errors import ApiError

    with pytest.raises(UnknownTask) as unknown:
        check_task(OrganicPayload.model_validate(payload(body={**BODY, "task": "ProgrammingTask"})), {"InferenceTask"})
    assert str(unknown.value) == "Unknown task 'ProgrammingTask': this validator scores InferenceTask."

    ctx = make_ctx(queue_size=1)
    one = OrganicPayload.model_validate(payload(request_id="first"))
    assert (await queue_new(ctx, [one], VALIDATOR.ss58_address))[0] == 1
    with pytest.raises(QueueFull):
        await queue_new(ctx, [OrganicPayload.model_validate(payload(request_id="second"))], VALIDATOR.ss58_address)

    ctx = make_ctx()
    ctx.inbox = inbox_that_cannot_grow(tmp_path)
    ctx.scoring_queue = ScoringQueue(10, settle=ctx.inbox.settle)
    with pytest.raises(InboxRefused):
        await queue_new(ctx, [OrganicPayload.model_validate(big_payload())], VALIDATOR.ss58_address)
    assert ctx.scoring_queue.qsize() == 0, "never queued unless stored"
    for refused in (unknown.value, QueueFull(), InboxRefused()):
        assert isinstance(refused, IntakeRefused) and not isinstance(refused, ApiError)


async def test_a_payload_of_a_task_not_scored_is_still_the_400_naming_body_task() -> None:
    ctx = make_ctx()
    async with serve_app(create_validator_app(ctx)) as url:
        status, body, headers = await post(url, payload(body={**BODY, "task": "ProgrammingTask"}))
        assert (status, body["error"]["code"], body["error"]["param"]) == (400, "unknown_task", "body.task"), body
        assert body["error"]["message"] == UNKNOWN and is_openai_error(body) and "Retry-After" not in headers
        status, body, _ = await post(url, [payload(body={**BODY, "task": "ProgrammingTask"}), payload()])
    assert status == 202 and body["rejected"] == [{"index": 0, "error": UNKNOWN}] and body["queued"] == 1, body


async def test_a_full_queue_is_still_the_503_queue_full_with_retry_after() -> None:
    ctx = make_ctx(queue_size=1)
    async with serve_app(create_validator_app(ctx)) as url:
        assert (await post(url, payload(request_id="first")))[0] == 202
        for sent in (payload(request_id="second"), [payload(request_id="third")]):  # alone, and in a batch
            status, body, headers = await post(url, sent)
            assert (status, body["error"]["code"], headers.get("Retry-After")) == (503, "queue_full", "5"), body
            assert body["error"]["message"] == "Scoring queue is full; retry later." and is_openai_error(body)
    assert ctx.scoring_queue.qsize() == 1


async def test_an_inbox_that_cannot_store_is_still_the_503_store_unavailable_with_retry_after(tmp_path: Path) -> None:
    ctx = make_ctx()
    ctx.inbox = inbox_that_cannot_grow(tmp_path)
    ctx.scoring_queue = ScoringQueue(10, settle=ctx.inbox.settle)
    async with serve_app(create_validator_app(ctx)) as url:
        status, body, headers = await post(url, [big_payload()])
    assert (status, body["error"]["code"], headers.get("Retry-After")) == (503, "store_unavailable", "5"), body
    assert body["error"]["message"] == ("The validator could not store these scoring payloads (its disk may be "
                                        "full); retry later.") and is_openai_error(body)
    assert ctx.scoring_queue.qsize() == 0


@pytest.mark.parametrize("count", [0, MAX_SCORING_BATCH + 1])
async def test_a_batch_of_no_payload_or_too_many_is_still_the_400_invalid_payload(count: int) -> None:
    ctx = make_ctx()
    async with serve_app(create_validator_app(ctx)) as url:
        status, body, _ = await post(url, [payload(request_id=f"r{i}") for i in range(count)])
    assert (status, body["error"]["code"]) == (400, "invalid_payload") and is_openai_error(body), body
    assert body["error"]["message"] == "A scoring batch holds 1 to 256 payloads." and ctx.scoring_queue.empty()
