"""The validator's HTTP API over real HTTP: /scoring signatures and payloads, availability shapes, /scores."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import aiohttp
import pytest
from aiohttp import web
from bittensor import http_auth
from loguru import logger
from yarl import URL

from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.miner.quality import DownBackend
from neurons.validator.app import ValidatorContext, create_validator_app
from neurons.validator.availability import AvailabilityBook, poll_all
from neurons.validator.reference import DeterministicReference
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring import Scorer, ScoringJob, scoring_worker
from neurons.validator.scoring_queue import ScoringQueue
from neurons.validator.tasks import default_registry
from neurons.validator.tasks.base import RewardContext
from shared.corpus import builtin_corpus
from shared.metagraph import MetagraphView
from shared.miner_client import MinerClient, make_session
from shared.protocol import DEADLINE_HEADER, told_deadline
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import StaticSource, keypair, log_lines, serve_app, snapshot

VALIDATOR, API2, STRANGER = keypair("//Validator"), keypair("//Api2"), keypair("//Stranger")
MINERS = {1: keypair("//Miner1"), 2: keypair("//Miner2")}
BODY = {"messages": [{"role": "user", "content": "hi"}], "seed": 5, "task": "InferenceTask", "stream": True}


def payload(**over) -> dict:
    base = {"body": BODY, "uids": [1, 2], "chunks": {"1": [], "2": []}, "timings": {"1": [], "2": []},
            "errors": {"2": "deadline exceeded"}, "winner": None, "created_at": time.time()}
    return {**base, **over}


def make_ctx(queue_size: int = 10) -> ValidatorContext:
    snap = snapshot(VALIDATOR.ss58_address, {u: (k.ss58_address, None) for u, k in MINERS.items()})
    registry = default_registry()
    return ValidatorContext(
        book=AvailabilityBook(), scoring_queue=ScoringQueue(queue_size),
        verifier=RequestVerifier(VALIDATOR.ss58_address, Authorizer(lambda: (), [VALIDATOR.ss58_address,
                                                                                 API2.ss58_address])),
        scores=ScoreBook(registry.probabilities), metagraph=_view(snap))


def _view(snap) -> MetagraphView:
    view = MetagraphView(StaticSource(snap))
    view.snapshot = snap
    return view


async def post(url: str, path: str, data: bytes, *, signer=VALIDATOR, receiver=None, headers=None,
               sign_body: bytes | None = None):
    h = Signer(signer).headers("POST", URL(url + path), data if sign_body is None else sign_body,
                               receiver or VALIDATOR.ss58_address) if signer else {}
    h.update(headers or {})
    async with aiohttp.ClientSession() as s, s.post(url + path, data=data, headers=h) as r:
        return r.status, await r.json(content_type=None)


def is_openai_error(body: dict) -> bool:
    return set(body.get("error", {})) == {"message", "type", "code", "param"}


async def test_scoring_accepts_a_signed_valid_payload() -> None:
    ctx = make_ctx()
    async with serve_app(create_validator_app(ctx)) as url:
        status, body = await post(url, "/scoring", json.dumps(payload()).encode())
        assert status == 202 and body["status"] == "accepted"
        status, _ = await post(url, "/scoring", json.dumps(payload()).encode(), signer=API2)
        assert status == 202
    job = ctx.scoring_queue.get_nowait()
    assert isinstance(job, ScoringJob) and job.source == "organic" and job.task == "InferenceTask"
    assert job.hotkeys == {u: k.ss58_address for u, k in MINERS.items()} and job.errors == {2: "deadline exceeded"}


async def test_a_payload_whose_caller_named_its_miners_is_taken_and_not_scored() -> None:
    """A key holder naming its own miner (``uids``) could score it with as many answers as it liked: such a
    payload says so (``caller_chose_miners``), is acknowledged (the outbox lets it go) and queues no job."""
    ctx = make_ctx()
    async with serve_app(create_validator_app(ctx)) as url:
        aimed = [{**payload(), "caller_chose_miners": True, "request_id": "aimed"}]
        status, body = await post(url, "/scoring", json.dumps(aimed).encode())
        assert status == 202 and body["accepted"] == 1 and body["queued"] == 0
        status, body = await post(url, "/scoring", json.dumps([{**payload(), "request_id": "chosen"}]).encode())
        assert status == 202 and body["queued"] == 1
    assert ctx.scoring_queue.get_nowait().source == "organic"
    assert ctx.scoring_queue.empty()


async def test_every_validator_request_leaves_one_line_with_its_status() -> None:
    """The validator's routes wrote no line at all: an API whose payloads were refused, a scraper, a
    caller of an unknown path left nothing an operator could find by the request id."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m).strip()), level="INFO", format="{message}",
                      filter=lambda r: r["message"].startswith("validator rid="))
    try:
        async with serve_app(create_validator_app(make_ctx())) as url:
            status, _ = await post(url, "/scoring", json.dumps(payload()).encode(),
                                   headers={"x-request-id": "outbox-7"})
            assert status == 202
            status, _ = await post(url, "/scoring", json.dumps(payload()).encode(), signer=API2,
                                   headers={"x-request-id": "outbox-8"})
            assert status == 202
            status, _ = await post(url, "/scoring", b"{", signer=None, headers={"x-request-id": "a b=c"})
            assert status in (400, 401)
            async with aiohttp.ClientSession() as s, s.get(url + "/nowhere") as r:
                assert r.status == 404
    finally:
        logger.remove(sink)
    assert len(lines) == 4, lines
    # which API host sent it: the hotkey its signature proved
    assert lines[0].startswith(f"validator rid=outbox-7 caller={VALIDATOR.ss58_address} method=POST route=/scoring "
                               "status=202 ")
    assert lines[1].startswith(f"validator rid=outbox-8 caller={API2.ss58_address} method=POST ")
    assert " caller=- " in lines[2] and (" status=401 " in lines[2] or " status=400 " in lines[2])
    assert "a b=c" not in lines[2], "a caller's id with spaces or '=' would forge fields of the line"
    assert " caller=- " in lines[3] and " route=? status=404 " in lines[3] and "/nowhere" not in lines[3]


async def test_routine_availability_polls_are_debug_and_a_change_or_a_failure_is_info() -> None:
    """Each API worker polls ``/miner_availabilities`` every few seconds: a line each at INFO buried the
    validator's own lines. The first poll from an address, a failed one and the first that works again stay INFO."""
    records: list[tuple[str, str]] = []
    sink = logger.add(lambda m: records.append((m.record["level"].name, m.record["message"])), level="DEBUG",
                      filter=lambda r: r["message"].startswith("validator rid="))
    polled = "/miner_availabilities/miner_availabilities"
    try:
        async with serve_app(create_validator_app(make_ctx())) as url, aiohttp.ClientSession() as s:
            for body in (None, None, None, ["x"], None, None):
                async with s.post(url + polled, json=body) as r:
                    await r.read()
    finally:
        logger.remove(sink)
    said = [(level, re.search(r"status=(\d+)", line)[1]) for level, line in records if f"route={polled} " in line]
    assert said == [("INFO", "200"), ("DEBUG", "200"), ("DEBUG", "200"), ("INFO", "400"), ("INFO", "200"),
                    ("DEBUG", "200")], said


async def test_routine_scrapes_and_probes_are_debug_after_the_first() -> None:
    """Prometheus scrapes ``/metrics`` every 15 s and a balancer asks ``/health`` every few: an INFO line each
    buried the validator's own lines as the availability polls did. The first of each from an address stays INFO."""
    records: list[tuple[str, str]] = []
    sink = logger.add(lambda m: records.append((m.record["level"].name, m.record["message"])), level="DEBUG",
                      filter=lambda r: r["message"].startswith("validator rid="))
    try:
        async with serve_app(create_validator_app(make_ctx())) as url, aiohttp.ClientSession() as s:
            for route in ("/metrics", "/health", "/metrics", "/health", "/metrics"):
                async with s.get(url + route) as r:
                    await r.read()
    finally:
        logger.remove(sink)
    said = [(level, re.search(r"route=(\S+)", line)[1]) for level, line in records]
    assert said == [("INFO", "/metrics"), ("INFO", "/health"), ("DEBUG", "/metrics"), ("DEBUG", "/health"),
                    ("DEBUG", "/metrics")], said


async def test_organic_latency_is_judged_on_the_deadline_the_miners_had() -> None:
    """The API strips ``timeout`` from the body it forwards, so the deadline travels as ``deadline_s``: a
    caller's 120 s (or a long max_tokens) must not be judged on the validator's 30 s default."""
    ctx = make_ctx()
    async with serve_app(create_validator_app(ctx)) as url:
        for extra in ({"deadline_s": 120.0}, {}):
            status, _ = await post(url, "/scoring", json.dumps(payload(**extra)).encode())
            assert status == 202
        status, body = await post(url, "/scoring", json.dumps(payload(deadline_s=-1)).encode())
        assert status == 400 and "deadline_s" in body["error"]["message"], body
    given, older_api = ctx.scoring_queue.get_nowait(), ctx.scoring_queue.get_nowait()
    assert given.deadline_s == 120.0 and older_api.deadline_s == ctx.organic_timeout


async def test_a_payload_sent_again_is_acknowledged_and_scored_once() -> None:
    """The forwarder retries a batch whose 202 it never got: the validator must not score it twice."""
    ctx = make_ctx()
    one = payload(request_id="rid-1", kind="chat")
    other = payload(request_id="rid-2", kind="chat")
    async with serve_app(create_validator_app(ctx)) as url:
        for body in (one, one, [one, other, other]):
            status, answer = await post(url, "/scoring", json.dumps(body).encode())
            assert status == 202, answer
        for _ in range(2):  # an API too old to name its payloads: nothing to tell repeats by
            assert (await post(url, "/scoring", json.dumps(payload()).encode()))[0] == 202
    assert ctx.scoring_queue.qsize() == 2 + 2, "rid-1 once, rid-2 once, and both unnamed ones"


async def test_a_payload_whose_uids_are_all_gone_spends_no_queue_slot() -> None:
    ctx = make_ctx()
    gone = payload(uids=[77], chunks={"77": []}, timings={"77": []}, errors={})
    async with serve_app(create_validator_app(ctx)) as url:
        assert (await post(url, "/scoring", json.dumps(gone).encode()))[0] == 202
        status, body = await post(url, "/scoring", json.dumps([gone, payload()]).encode())
    assert status == 202 and (body["accepted"], body["queued"]) == (2, 1)
    assert ctx.scoring_queue.qsize() == 1


async def test_a_payload_credits_only_the_hotkeys_that_answered() -> None:
    """A payload delivered after uid 2 changed hands (an outbox holds payloads while the validator is
    down) credited the uid's new owner with its previous owner's answer."""
    ctx = make_ctx()
    answered = {"1": MINERS[1].ss58_address, "2": keypair("//PreviousOwner").ss58_address}
    async with serve_app(create_validator_app(ctx)) as url:
        status, _ = await post(url, "/scoring", json.dumps(payload(hotkeys=answered)).encode())
        assert status == 202
        status, body = await post(url, "/scoring", json.dumps(payload(hotkeys={"9": "x"})).encode())
        assert status == 400 and "hotkeys" in body["error"]["message"], body
    job = ctx.scoring_queue.get_nowait()
    assert job.hotkeys == {1: MINERS[1].ss58_address}, "uid 2 is someone else's now: not scored"


async def test_scoring_signature_rejections() -> None:
    ctx = make_ctx()
    raw = json.dumps(payload()).encode()
    async with serve_app(create_validator_app(ctx)) as url:
        cases = {
            "unsigned": (await post(url, "/scoring", raw, signer=None), 400),
            "stranger": (await post(url, "/scoring", raw, signer=STRANGER), 403),
            "wrong receiver": (await post(url, "/scoring", raw, receiver=STRANGER.ss58_address), 403),
            "tampered": (await post(url, "/scoring", raw, sign_body=raw + b" "), 401),
        }
        stale = http_auth.sign(VALIDATOR, method="POST", path="/scoring", body=raw,
                               receiver_ss58=VALIDATOR.ss58_address, nonce_ns=time.time_ns() - 60 * 10**9)
        cases["stale"] = (await post(url, "/scoring", raw, signer=None, headers=stale), 401)
        signed = Signer(VALIDATOR).headers("POST", URL(url + "/scoring"), raw, VALIDATOR.ss58_address)
        assert (await post(url, "/scoring", raw, signer=None, headers=signed))[0] == 202
        cases["replay"] = (await post(url, "/scoring", raw, signer=None, headers=signed), 401)
    for name, ((status, body), expected) in cases.items():
        assert status == expected, name
        assert is_openai_error(body), name
    assert ctx.scoring_queue.qsize() == 1


@pytest.mark.parametrize("data", [
    b"", b"{not json", b"[]", b'"text"',
    json.dumps({"uids": [1]}).encode(),
    json.dumps(payload(uids=[])).encode(),
    json.dumps(payload(uids=[1, 1])).encode(),
    json.dumps(payload(uids=[-1])).encode(),
    json.dumps(payload(uids="1,2")).encode(),
    json.dumps(payload(chunks={"9": []})).encode(),
    json.dumps(payload(chunks={"1": "not a list"})).encode(),
    json.dumps(payload(winner=7)).encode(),
    json.dumps(payload(body={"messages": []})).encode(),
    json.dumps(payload(body={"messages": [{"role": "robot", "content": "x"}]})).encode(),
])
async def test_bad_payloads_are_400(data: bytes) -> None:
    ctx = make_ctx()
    async with serve_app(create_validator_app(ctx)) as url:
        status, body = await post(url, "/scoring", data)
    assert status == 400 and is_openai_error(body)
    assert ctx.scoring_queue.qsize() == 0


async def test_full_queue_is_503_and_oversized_is_413() -> None:
    ctx = make_ctx(queue_size=1)
    app = create_validator_app(ctx, max_body_bytes=4096)
    async with serve_app(app) as url:
        assert (await post(url, "/scoring", json.dumps(payload()).encode()))[0] == 202
        status, body = await post(url, "/scoring", json.dumps(payload()).encode())
        assert status == 503 and body["error"]["code"] == "queue_full"
        status, body = await post(url, "/scoring", json.dumps(payload(chunks={"1": ["x" * 5000]})).encode())
        assert status == 413 and is_openai_error(body)
        async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
            health = await r.json()
        assert health["scoring_queue"] == 1 and health["scoring_queue_max"] == 1


async def test_a_malformed_payload_is_told_by_the_field_at_fault_in_plain_words() -> None:
    """What the API's outbox quotes in its WARNING for each payload it drops: its problems came as "Invalid request
    body: Value error, ..." with no param, whichever field was at fault (a payload's repeated uids, a body that is
    no chat request), and an item of a batch that is no object as "Request body must be a JSON object" (the body,
    an array, was one). Each is a 400 naming its field (or the batch item), and a valid item beside them is queued."""
    ctx = make_ctx()
    cases = [(payload(uids=[1, 1], chunks={}, timings={}, errors={}), "uids",
              "Invalid value for 'uids': uids must be distinct non-negative integers"),
             (payload(body={**BODY, "task": 5}), "body",
              "Invalid value for 'body': not a chat request (task: Input should be a valid string)"),
             (payload(winner=3), None, "Invalid request body: winner is not one of uids")]
    async with serve_app(create_validator_app(ctx)) as url:
        for sent, param, message in cases:
            status, body = await post(url, "/scoring", json.dumps(sent).encode())
            assert status == 400 and is_openai_error(body) and body["error"]["param"] == param, body
            assert body["error"]["message"] == message, body
        status, body = await post(url, "/scoring", json.dumps(["x", payload(), cases[0][0]]).encode())
    assert status == 202 and body["accepted"] == 1 and body["queued"] == 1, body
    assert body["rejected"] == [{"index": 0, "error": "A scoring payload must be a JSON object."},
                                {"index": 2, "error": cases[0][2]}], body
    assert ctx.scoring_queue.qsize() == 1


SCORED = "ArithmeticTask, InferenceTask, QuestionAnsweringTask, WebRetrievalTask"


async def test_a_payload_of_a_task_this_validator_does_not_score_is_refused_at_the_door() -> None:
    """A payload of a task the validator has no reward for (a miner's own, which the API races too) was taken with
    a 202 and dropped unscored when its turn came, at DEBUG: the API's outbox counted it delivered. It is a 400
    ``unknown_task`` naming ``body.task`` and the tasks scored; in a batch, a ``rejected`` item; a body naming no
    task is the default task's, and taken."""
    ctx = make_ctx()
    async with serve_app(create_validator_app(ctx)) as url:
        status, body = await post(url, "/scoring", json.dumps(payload(body={**BODY, "task": "ProgrammingTask"})).encode())
        assert status == 400 and is_openai_error(body), body
        assert (body["error"]["code"], body["error"]["param"]) == ("unknown_task", "body.task"), body
        assert body["error"]["message"] == f"Unknown task 'ProgrammingTask': this validator scores {SCORED}."
        assert ctx.scoring_queue.empty()
        untasked = {k: v for k, v in BODY.items() if k != "task"}
        batch = [payload(body={**BODY, "task": "ProgrammingTask"}, request_id="custom"),
                 payload(body=untasked, request_id="plain")]
        status, body = await post(url, "/scoring", json.dumps(batch).encode())
    assert status == 202 and (body["accepted"], body["queued"]) == (1, 1), body
    assert body["rejected"] == [{"index": 0, "error": f"Unknown task 'ProgrammingTask': this validator scores {SCORED}."}]
    assert ctx.scoring_queue.get_nowait().task == "InferenceTask"


async def test_a_validator_scoring_fewer_tasks_refuses_the_others(tmp_path) -> None:
    """Its tasks are those its registry scores (``TASK_PROBABILITIES``: one given 0 has no reward pipeline), and
    the API's forwarder drops the payload it refuses, alone or in a batch, instead of sending it again, while
    the payloads around it are delivered."""
    from api.scoring_outbox import OutboxForwarder
    from shared.signing import Signer
    from shared.store.outbox import SQLiteOutbox

    ctx = make_ctx()
    ctx.scores = ScoreBook(default_registry({"InferenceTask": 1.0}).probabilities)
    web_payload = payload(body={**BODY, "task": "WebRetrievalTask"}, request_id="web")
    for batch in (1, 128):
        box = SQLiteOutbox(tmp_path / f"api-{batch}.db")
        async with serve_app(create_validator_app(ctx)) as url, make_session() as session:
            status, body = await post(url, "/scoring", json.dumps(web_payload).encode())
            assert (status, body["error"]["message"]) == (400, "Unknown task 'WebRetrievalTask': this validator "
                                                               "scores InferenceTask."), body
            fwd = OutboxForwarder(box, MinerClient(session, Signer(VALIDATOR)), url, VALIDATOR.ss58_address,
                                  batch=batch, base_delay=0.05, max_delay=0.2)
            for n, sent in enumerate((payload(request_id="before"), web_payload, payload(request_id="after"))):
                await fwd.sink({**sent, "created_at": time.time() + n})
            task = asyncio.create_task(fwd.run())
            try:
                for _ in range(200):
                    if await box.depth() == 0:
                        break
                    await asyncio.sleep(0.05)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await box.close()
        assert ctx.scoring_queue.qsize() == 2, batch
        assert (fwd.rejected, fwd.delivery_failures) == (1, 0), batch
        assert [ctx.scoring_queue.get_nowait().request_id for _ in range(2)] == ["before", "after"]


async def test_scoring_batch_queues_valid_items_and_reports_malformed_ones() -> None:
    ctx = make_ctx(queue_size=3)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    async with serve_app(create_validator_app(ctx)) as url:
        batch = [payload(), {"body": "nope", "request_id": "rid-7"},
                 payload(uids=[1], chunks={"1": []}, timings={"1": []}, errors={})]
        try:
            status, body = await post(url, "/scoring", json.dumps(batch).encode())
        finally:
            logger.remove(sink)
        assert status == 202 and body["accepted"] == 2
        assert [r["index"] for r in body["rejected"]] == [1]
        (line,) = lines  # the operator sees which payload and why, on the validator's side too
        assert "rejected 1 of 3 payloads" in line and "index 1 request_id=rid-7" in line
        assert body["rejected"][0]["error"] in line
        assert ctx.scoring_queue.qsize() == 2
        status, body = await post(url, "/scoring", json.dumps([payload(), payload()]).encode())
        assert status == 503 and body["error"]["code"] == "queue_full", "a batch that does not fit is refused whole"
        assert ctx.scoring_queue.qsize() == 2
        for bad in ([], [payload()] * 300):
            status, body = await post(url, "/scoring", json.dumps(bad).encode())
            assert status == 400 and is_openai_error(body)


async def test_availability_endpoints_shapes_with_real_miners() -> None:
    """Up, down (no tasks) and unreachable miners: every uid is listed, none silently dropped."""
    apps = {1: create_miner_app(DeterministicBackend(), RequestVerifier(
                MINERS[1].ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))),
            2: create_miner_app(DownBackend(DeterministicBackend()), RequestVerifier(
                MINERS[2].ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address})))}
    async with serve_app(apps[1]) as u1, serve_app(apps[2]) as u2:
        snap = snapshot(VALIDATOR.ss58_address, {1: (MINERS[1].ss58_address, u1.removeprefix("http://")),
                                                 2: (MINERS[2].ss58_address, u2.removeprefix("http://")),
                                                 3: (keypair("//Gone").ss58_address, "127.0.0.1:9")})
        ctx = make_ctx()
        ctx.metagraph = _view(snap)
        async with make_session() as session:
            await poll_all(MinerClient(session, Signer(VALIDATOR)), ctx.metagraph, ctx.book, timeout=2,
                           concurrency=4)
        async with serve_app(create_validator_app(ctx)) as url, aiohttp.ClientSession() as s:
            async with s.post(url + "/miner_availabilities/miner_availabilities", json=None) as r:
                everyone = await r.json()
            async with s.post(url + "/miner_availabilities/miner_availabilities", json=[1, 7]) as r:
                some = await r.json()
            async with s.post(url + "/miner_availabilities/miner_availabilities", json=["x"]) as r:
                assert r.status == 400 and is_openai_error(await r.json())
            async with s.get(url + "/miner_availabilities/get_available_miners",
                             params={"task": "ArithmeticTask", "k": "5"}) as r:
                available = await r.json()
            async with s.get(url + "/miner_availabilities/get_available_miners", params={"k": "0"}) as r:
                assert r.status == 400
            async with s.get(url + "/miner_availabilities/get_available_miners", params={"task": "Arithmetic"}) as r:
                assert r.status == 400 and (await r.json())["error"]["param"] == "task"
            async with s.get(url + "/miner_availabilities/get_available_miners", params={"models": "m2"}) as r:
                assert r.status == 400 and (await r.json())["error"]["param"] == "models"  # it was ignored
            async with s.get(url + "/scores") as r:
                scores = await r.json()
    assert set(everyone) == {"1", "2", "3"} and everyone["3"] is None
    assert set(everyone["1"]) == {"task_availabilities", "llm_model_availabilities"}
    assert everyone["1"]["task_availabilities"]["WebRetrievalTask"] is True
    assert everyone["2"] == {"task_availabilities": {}, "llm_model_availabilities": {}}
    assert some == {"1": everyone["1"], "7": None}
    assert available == [1]
    assert set(scores) == {"updated_at", "last_weights_set_at", "miners"}
    assert [m["uid"] for m in scores["miners"]] == [1, 2, 3] and scores["miners"][0]["score"] == 0.0


async def test_a_task_a_miner_advertises_is_a_query_not_a_400() -> None:
    """The API's selection races a task a miner advertises (the seed's docs name "Programming"), but
    get_available_miners refused any task outside the subnet's four with a 400 (validator and API)."""
    ctx = make_ctx()
    ctx.book.entries = {1: {"task_availabilities": {"ProgrammingTask": True, "InferenceTask": True},
                            "llm_model_availabilities": {"m1": True}},
                        2: {"task_availabilities": {"InferenceTask": True}, "llm_model_availabilities": {}}}
    async with serve_app(create_validator_app(ctx)) as url, aiohttp.ClientSession() as s:
        async with s.get(url + "/miner_availabilities/get_available_miners", params={"task": "ProgrammingTask"}) as r:
            assert r.status == 200 and await r.json() == [1]
        async with s.get(url + "/miner_availabilities/get_available_miners", params={"task": "Programming"}) as r:
            body = await r.json()
            assert r.status == 400 and "ProgrammingTask" in body["error"]["message"], body


async def test_availability_learnt_from_a_uids_old_hotkey_is_not_the_new_miners(tmp_path) -> None:
    """uid 2 changed hands after the last poll: the validator went on reporting the old miner's models as
    the new one's until its next poll, and the API raced the new miner for them."""
    from api.availability import AvailabilityCache
    from tests.helpers import Script, api_with_miners, chunk, sse
    from tests.helpers import post as api_post

    serves_m1 = {"task_availabilities": {"InferenceTask": True}, "llm_model_availabilities": {"m1": True}}
    scripts = {uid: Script([(0, d) for d in sse(chunk(f"from {uid}"), chunk(finish="stop"))]) for uid in (1, 2)}
    async with api_with_miners(tmp_path, scripts) as api:
        ctx = make_ctx()
        ctx.metagraph = _view(api.ctx.metagraph.snapshot)  # uid 2 is held by //Miner2 now
        ctx.book.entries = {1: serves_m1, 2: serves_m1}
        ctx.book.hotkeys = {1: keypair("//Miner1").ss58_address, 2: keypair("//Miner2-before").ss58_address}
        async with serve_app(create_validator_app(ctx)) as url, aiohttp.ClientSession() as s:
            async with s.post(url + "/miner_availabilities/miner_availabilities", json=None) as r:
                assert await r.json() == {"1": serves_m1, "2": None}
            async with s.get(url + "/miner_availabilities/get_available_miners", params={"model": "m1"}) as r:
                assert await r.json() == [1]
            api.ctx.availability = AvailabilityCache(api.ctx.client, url, VALIDATOR.ss58_address)
            assert await api.ctx.availability.refresh()
            status, headers, _ = await api_post(api, {"messages": [{"role": "user", "content": "hi"}], "model": "m1"})
    assert status == 200 and headers["x-sn1-miner-uid"] == "1"
    assert scripts[2].calls == 0, "the new miner at uid 2 was raced for the old one's model"


async def test_organic_payload_is_scored_against_the_reference() -> None:
    """The API's payload shape, end to end: honest text earns 1, a different seed's text does not."""
    backend = DeterministicBackend()
    ctx = make_ctx()
    good = [json.dumps({"choices": [{"index": 0, "delta": {"content": backend.answer_text(BODY)}}]})]
    other = [json.dumps({"choices": [{"index": 0, "delta": {"content": backend.answer_text({**BODY, "seed": 6})}}]})]
    async with serve_app(create_validator_app(ctx)) as url:
        raw = json.dumps(payload(chunks={"1": good, "2": other}, timings={"1": [0.1], "2": [0.1]}, errors={})).encode()
        assert (await post(url, "/scoring", raw))[0] == 202
    scorer = Scorer(default_registry(), RewardContext(DeterministicReference(), builtin_corpus()), ctx.scores)
    rewards = await scorer.score(ctx.scoring_queue.get_nowait())
    assert rewards[1] == 1.0 and rewards[2] < 0.5


async def test_shutdown_saves_the_scores_the_stopped_loops_left(tmp_path, monkeypatch) -> None:
    """SIGTERM while a save ran in its thread: a job scored meanwhile left its change to that save's next
    round, the loops were cancelled, and the change never reached the disk (nor did the cancelled save
    wait for its thread, whose older copy could land last)."""
    import neurons.validator.scores as scores_module

    real = scores_module.atomic_write_json
    writing = asyncio.Event()

    def slow_write(path, data) -> None:  # a slow disk
        writing.set()
        time.sleep(0.3)
        real(path, data)

    monkeypatch.setattr(scores_module, "atomic_write_json", slow_write)
    ctx = make_ctx()
    ctx.scores = ScoreBook({"InferenceTask": 1.0}, alpha=1.0, path=tmp_path / "scores.json")
    scored_twice = asyncio.Event()

    async def scoring_loop() -> None:  # two jobs, the second scored while the first one's save runs
        ctx.scores.update(1, MINERS[1].ss58_address, "InferenceTask", 0.25)
        first = asyncio.create_task(ctx.scores.save_off_loop())
        await writing.wait()
        ctx.scores.update(1, MINERS[1].ss58_address, "InferenceTask", 0.75)
        await ctx.scores.save_off_loop()  # a save is running: this change is left to its next round
        scored_twice.set()
        await first

    async with serve_app(create_validator_app(ctx, background=[scoring_loop])):
        await asyncio.wait_for(scored_twice.wait(), 5)
    await asyncio.sleep(0.5)  # any write still in a thread has landed
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["miners"]["1"]["tasks"] == {"InferenceTask": 0.75}, "the last scored job is on disk"


async def test_an_organic_flood_neither_stalls_nor_starves_synthetic_scoring() -> None:
    """One FIFO for both: a full queue of organic payloads (each judged against the reference model) held
    the synthetic loops on ``put`` and put every synthetic job behind the whole backlog. The lanes are
    bounded apart and taken in turn: the synthetic job is queued at once and scored first or second."""
    ctx = make_ctx(queue_size=40)
    batch = [payload(request_id=f"rid-{i}", kind="chat") for i in range(40)]
    async with serve_app(create_validator_app(ctx)) as url:
        status, body = await post(url, "/scoring", json.dumps(batch).encode())
        assert status == 202 and body["queued"] == 40
        assert (await post(url, "/scoring", json.dumps(payload(request_id="rid-41")).encode()))[0] == 503
        synthetic = ScoringJob(source="synthetic", task="ArithmeticTask", bodies={1: BODY},
                               hotkeys={1: MINERS[1].ss58_address})
        await asyncio.wait_for(ctx.scoring_queue.put(synthetic), 1)  # the synthetic loop goes on
        async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
            health = await r.json()
        assert (health["scoring_queue"], health["synthetic_queue"]) == (40, 1)

    scored: list[str] = []

    class Recorder:
        async def score(self, job: ScoringJob) -> dict[int, float]:
            scored.append(job.source)
            await asyncio.sleep(0)
            return {}

    worker = asyncio.create_task(scoring_worker(ctx.scoring_queue, Recorder(), ctx.metagraph))  # type: ignore[arg-type]
    try:
        for _ in range(200):
            if len(scored) == 41:
                break
            await asyncio.sleep(0.01)
    finally:
        worker.cancel()
    assert len(scored) == 41 and scored.index("synthetic") <= 1, scored[:5]


async def test_a_synthetic_backlog_never_refuses_organic_payloads() -> None:
    ctx = make_ctx(queue_size=2)
    job = ScoringJob(source="synthetic", task="ArithmeticTask", bodies={1: BODY}, hotkeys={1: MINERS[1].ss58_address})
    for _ in range(ctx.scoring_queue.synthetic_maxsize):
        ctx.scoring_queue.put_nowait(job)
    with pytest.raises(asyncio.QueueFull):
        ctx.scoring_queue.put_nowait(job)
    async with serve_app(create_validator_app(ctx)) as url:
        status, body = await post(url, "/scoring", json.dumps([payload(request_id="a"), payload(request_id="b")]).encode())
    assert status == 202 and body["queued"] == 2


async def test_the_availability_poll_tells_each_miner_its_deadline() -> None:
    """Every other request to a miner says in ``x-sn1-deadline`` how long it has; the poll sent none, so a miner
    could not bound the work of answering it (a slow availability check of its model server) by the poll's
    ``AVAILABILITY_TIMEOUT``."""
    told: list[str | None] = []

    @web.middleware
    async def note(request: web.Request, handler):
        told.append(request.headers.get(DEADLINE_HEADER))
        return await handler(request)

    app = create_miner_app(DeterministicBackend(), RequestVerifier(MINERS[1].ss58_address,
                                                                   Authorizer(lambda: {VALIDATOR.ss58_address})))
    app.middlewares.insert(0, note)
    async with serve_app(app) as url, make_session() as session:
        snap = snapshot(VALIDATOR.ss58_address, {1: (MINERS[1].ss58_address, url.removeprefix("http://"))})
        book = await poll_all(MinerClient(session, Signer(VALIDATOR)), _view(snap), AvailabilityBook(), timeout=3.5,
                              concurrency=4)
    assert book.entries[1] is not None, "the miner took the poll, header and all"
    assert len(told) == 1 and told[0] is not None, told
    assert 2.5 < (told_deadline(told[0]) or 0) <= 3.5, told


async def _poll_two_new_miners(seconds_behind: int) -> tuple[AvailabilityBook, list[str]]:
    """A poll of two miners that just started by a validator whose clock is ``seconds_behind`` theirs: the book,
    and the poll's WARNING lines.

    The validator's clock stands ``seconds_behind`` the miners' start, not the wall clock as it runs on: a
    nonce read off the running clock came out older than their start by ``seconds_behind`` less the time the
    servers took to start, and on a loaded host (tens of ms) a refusal said "nonce is 3.9s older"."""
    verifiers = {uid: RequestVerifier(MINERS[uid].ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
                 for uid in MINERS}
    apps = {uid: create_miner_app(DeterministicBackend(), verifier) for uid, verifier in verifiers.items()}
    nonce = max(v.started_ns for v in verifiers.values()) - seconds_behind * 10**9
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="INFO")
    try:
        async with serve_app(apps[1]) as u1, serve_app(apps[2]) as u2:
            snap = snapshot(VALIDATOR.ss58_address, {1: (MINERS[1].ss58_address, u1.removeprefix("http://")),
                                                     2: (MINERS[2].ss58_address, u2.removeprefix("http://"))})
            behind = Signer(VALIDATOR, clock=lambda: nonce)
            async with make_session() as session:
                book = await poll_all(MinerClient(session, behind), _view(snap), AvailabilityBook(), timeout=2,
                                      concurrency=4)
    finally:
        logger.remove(sink)
    return book, [m for level, m in lines if level == "WARNING" and m.startswith("availability:")]


async def test_miners_refusing_a_validator_whose_clock_is_off_are_one_warning_naming_the_offset() -> None:
    """A validator 30 s behind is refused by every miner (StaleRequest): it logged one DEBUG line a miner and
    "availability: 0/2 miners up", so its operator saw miners down, not its own clock."""
    book, warnings = await _poll_two_new_miners(30)
    assert book.entries == {} and book.refused_by_all, "our fault: kept as last known (nothing yet), not marked down"
    assert len(warnings) == 1, warnings
    assert "2 miner(s) refused this validator's signed requests (uids 1,2)" in warnings[0]
    assert "synthetic jobs paused" in warnings[0] and "permit" not in warnings[0], "the clock, not the permit"
    assert "2 of them as stale (StaleRequest): this host's clock or theirs is off" in warnings[0]
    assert "HTTP 401 StaleRequest: nonce is 30." in warnings[0] and "s old, past the 10s freshness window" in warnings[0]


async def test_miners_refusing_a_validator_behind_their_restart_are_told_as_a_clock_not_a_permit() -> None:
    """Miners that just restarted refuse a nonce older than their start (SignedBeforeStart); the MinerClient signs
    once more, but a validator 4 s behind signs the retry before their start too, and the refusal reaches the
    poll's WARNING. It was summed up as a permit question ("does hotkey ... hold a validator permit"), the
    permit in order, and said nothing of the clock."""
    book, warnings = await _poll_two_new_miners(4)
    assert book.refused_by_all
    assert len(warnings) == 1, warnings
    assert "2 miner(s) refused this validator's signed requests (uids 1,2)" in warnings[0]
    assert "permit" not in warnings[0], "the clock, not the permit"
    assert ("2 of them as signed before their start (SignedBeforeStart): this host's clock is behind theirs, "
            "check that NTP keeps both hosts' clocks right") in warnings[0]
    assert "HTTP 401 SignedBeforeStart: nonce is 4." in warnings[0]


def test_stale_and_before_start_refusals_are_counted_as_one_clock_problem() -> None:
    from neurons.validator.availability import clock_note

    refusals = {1: "HTTP 403 NotAValidator: hotkey 5F... holds no validator permit here",
                2: "HTTP 401 SignedBeforeStart: nonce is 3.0s older than this receiver's start: ...",
                3: "HTTP 401 StaleRequest: nonce is 30.0s old, past the 10s freshness window: ..."}
    note, uids = clock_note(refusals, sorted(refusals))
    assert note == ("; 1 of them as stale (StaleRequest) and 1 as signed before their start (SignedBeforeStart): "
                    "this host's clock or theirs is off, check that NTP keeps both hosts' clocks right")
    assert uids == [3, 2], "the stale one quoted first: it says by how much the clocks differ"
    assert clock_note({1: refusals[1]}, [1]) == ("", [])


async def test_an_api_whose_clock_is_ahead_is_told_its_clock_not_its_settings(tmp_path) -> None:
    """The validator refuses an API 5 min ahead (StaleRequest); the API's WARNING said to check API_HOTKEYS
    and VALIDATOR_HOTKEY, which were right, and not that a clock was off, nor by how much."""
    from api.scoring_outbox import OutboxForwarder
    from shared.store.outbox import SQLiteOutbox

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    box = SQLiteOutbox(tmp_path / "api.db")
    try:
        async with serve_app(create_validator_app(make_ctx())) as url, make_session() as session:
            ahead = Signer(VALIDATOR, clock=lambda: time.time_ns() + 300 * 10**9)
            fwd = OutboxForwarder(box, MinerClient(session, ahead), url, VALIDATOR.ss58_address, lease_seconds=1.0,
                                  base_delay=0.05, max_delay=0.2)
            await fwd.sink(payload())
            task = asyncio.create_task(fwd.run())
            for _ in range(100):
                if any("refuses this API's scoring payloads" in line for line in lines):
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        logger.remove(sink)
        await box.close()
    refused = [line for line in lines if "refuses this API's scoring payloads" in line]
    assert refused, lines
    # by how much, as the validator found it when the request arrived: 300 s less the time it took to get there
    # (read off a running clock, "300." failed as "299.9" once that passed 50 ms on a busy host)
    ahead_by = re.search(r"as stale \(HTTP 401: StaleRequest: nonce is ([0-9.]+)s in the future", refused[0])
    assert ahead_by and 295.0 < float(ahead_by.group(1)) <= 300.1, refused[0]
    assert "API_HOTKEYS" not in refused[0] and "NTP" in refused[0]


async def test_a_payload_older_than_the_validator_scores_is_dropped_and_counted() -> None:
    """After an outage the outbox delivered answers of hours before, and they were scored as the miners'
    quality now: past ``max_age`` a payload is acknowledged, not queued, and counted, at ``/scoring`` and
    when it grew old in the queue."""
    ctx = make_ctx()
    ctx.scoring_queue.max_age = 600.0
    old = payload(request_id="old", kind="chat", created_at=time.time() - 3600)
    fresh = payload(request_id="fresh", kind="chat")
    async with serve_app(create_validator_app(ctx)) as url:
        status, body = await post(url, "/scoring", json.dumps([old, fresh]).encode())
        assert status == 202 and (body["accepted"], body["queued"], body["stale"]) == (2, 1, 1), body
        status, _ = await post(url, "/scoring", json.dumps(payload(request_id="old2", created_at=1.0)).encode())
        assert status == 202
        assert ctx.scoring_queue.qsize() == 1 and ctx.scoring_queue.stale_dropped == 2
        async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
            assert (await r.json())["organic_stale_dropped"] == 2

    # one that waited in the queue past the age is dropped when a worker takes it; a synthetic job never is
    queue = ctx.scoring_queue
    waited = queue.get_nowait()
    waited.created_at = time.time() - 601  # as if it had waited in the queue for ten minutes
    queue.put_nowait(waited)
    for age in (601, 1):
        queue.put_nowait(ScoringJob(source="organic", task="InferenceTask", bodies={1: BODY},
                                    hotkeys={1: MINERS[1].ss58_address}, created_at=time.time() - age))
    assert time.time() - (await asyncio.wait_for(queue.get(), 1)).created_at < 60
    assert queue.stale_dropped == 4 and queue.empty()
    synthetic = ScoringJob(source="synthetic", task="ArithmeticTask", bodies={1: BODY},
                           hotkeys={1: MINERS[1].ss58_address}, created_at=1.0)
    queue.put_nowait(synthetic)
    assert await asyncio.wait_for(queue.get(), 1) is synthetic


async def test_an_outages_stale_backlog_is_one_line_not_one_a_batch() -> None:
    """After an outage the API's outbox delivers its backlog 128 payloads a batch, every one older than
    ``ORGANIC_MAX_AGE_SECONDS``: the validator logged a line per batch (600 payloads were 5 lines within a second
    on the local network; an hour's backlog thousands), and so did the queue per worker's take. One run now: its
    first batch, then a line a minute; every payload is still counted."""
    ctx = make_ctx(queue_size=100)
    ctx.scoring_queue.max_age = 600.0
    lines, sink = log_lines("INFO")
    try:
        async with serve_app(create_validator_app(ctx)) as url:
            for b in range(10):
                batch = [payload(request_id=f"old-{b}-{i}", kind="chat", created_at=time.time() - 3600)
                         for i in range(20)]
                status, body = await post(url, "/scoring", json.dumps(batch).encode())
                assert status == 202 and body["stale"] == 20, body
            status, body = await post(url, "/scoring", json.dumps([payload(request_id="fresh", kind="chat")]).encode())
            assert status == 202 and body["queued"] == 1, body
            queue = ctx.scoring_queue
            waited = queue.get_nowait()
            for _ in range(5):  # grown stale while queued: each worker's take of them
                waited.created_at = time.time() - 601
                queue.put_nowait(waited)
                fresh = ScoringJob(source="organic", task="InferenceTask", bodies={1: BODY},
                                   hotkeys={1: MINERS[1].ss58_address})
                queue.put_nowait(fresh)
                assert await asyncio.wait_for(queue.get(), 1) is fresh
            async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
                metrics = await r.text()
    finally:
        logger.remove(sink)
    assert ctx.scoring_queue.stale_dropped == 205
    assert "sn1_validator_organic_stale_dropped_total 205.0" in metrics
    told = [line for line in lines if "older than" in line]
    assert told == ["WARNING scoring: organic payloads older than ORGANIC_MAX_AGE_SECONDS dropped, not scored: 20 of "
                    "20 payload(s) of a /scoring, acknowledged, older than 600 s (20 since start)"], told


async def test_a_payload_from_an_api_too_old_to_date_it_is_never_stale() -> None:
    ctx = make_ctx()
    ctx.scoring_queue.max_age = 600.0
    undated = payload()
    del undated["created_at"]
    async with serve_app(create_validator_app(ctx)) as url:
        assert (await post(url, "/scoring", json.dumps(undated).encode()))[0] == 202
    job = await asyncio.wait_for(ctx.scoring_queue.get(), 1)
    assert job.source == "organic" and ctx.scoring_queue.stale_dropped == 0


async def test_a_payload_dated_in_the_future_grows_stale_from_its_arrival() -> None:
    """An API whose clock was ahead dated its payloads in the future: counted from that date, their age stayed
    negative, and one dated a year ahead was scored however long it had waited in the queue (or the scoring
    inbox, across restarts). Its age counts from its arrival."""
    ctx = make_ctx()
    ctx.scoring_queue.max_age = 0.5
    ahead = payload(request_id="ahead", kind="chat", created_at=time.time() + 365 * 86400)
    async with serve_app(create_validator_app(ctx)) as url:
        status, body = await post(url, "/scoring", json.dumps(ahead).encode())
        assert status == 202 and ctx.scoring_queue.qsize() == 1, body
        await asyncio.sleep(0.6)  # it waits in the queue past ORGANIC_MAX_AGE_SECONDS
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ctx.scoring_queue.get(), 0.5)
        assert ctx.scoring_queue.stale_dropped == 1


async def test_the_organic_lane_is_bounded_in_bytes_too() -> None:
    """Bounded by count alone, 10,000 payloads of long streamed answers (MBs of SSE chunks each) were tens
    of GB held while an outage's backlog drained. Past ``max_bytes`` a batch is a 503 (the forwarder keeps
    it and sends fewer); an empty lane takes any one batch, or a payload over the bound would block the
    outbox for good."""
    ctx = make_ctx(queue_size=100)
    ctx.scoring_queue.max_bytes = 1 << 20
    chunk = 'data: {"choices":[{"delta":{"content":"' + "x" * 1000 + '"}}]}'
    big = [payload(request_id=f"big-{i}", chunks={"1": [chunk] * 600, "2": []}, timings={"1": [0.1] * 600, "2": []})
           for i in range(3)]
    async with serve_app(create_validator_app(ctx)) as url:
        status, body = await post(url, "/scoring", json.dumps(big[:2]).encode())
        assert status == 202 and body["queued"] == 2, "an empty lane takes any one batch"
        assert ctx.scoring_queue.organic_bytes > 1 << 20
        status, body = await post(url, "/scoring", json.dumps(big[2]).encode())
        assert status == 503 and body["error"]["code"] == "queue_full", body
        status, _ = await post(url, "/scoring", json.dumps(payload(request_id="small")).encode())
        assert status == 503, "nothing fits while the lane is past its bound in bytes"
        ctx.scoring_queue.get_nowait()
        ctx.scoring_queue.get_nowait()
        assert ctx.scoring_queue.organic_bytes == 0
        assert (await post(url, "/scoring", json.dumps(big[2]).encode()))[0] == 202
        async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
            health = await r.json()
        assert health["scoring_queue_bytes"] > 600_000 and health["scoring_queue_max_bytes"] == 1 << 20


async def test_miners_that_all_refuse_this_validator_are_not_scored_for_its_fault() -> None:
    """A validator that lost its permit: every miner refuses its signature (403). Its availability poll
    marked them all down and its jobs scored them all 0 (on the local network, 0.98 to 0.13 in 25 s), with
    no line saying why. The poll keeps what it knew and says so, the synthetic loops pause, and a job
    every called miner refused is not scored."""
    from neurons.validator.loops import synthetic_cycle

    nobody = RequestVerifier(MINERS[1].ss58_address, Authorizer(lambda: set()))  # no permit for us here
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        async with serve_app(create_miner_app(DeterministicBackend(), nobody)) as u1:
            snap = snapshot(VALIDATOR.ss58_address, {1: (MINERS[1].ss58_address, u1.removeprefix("http://"))})
            ctx = make_ctx()
            ctx.metagraph = _view(snap)
            known = {"task_availabilities": {"InferenceTask": True}, "llm_model_availabilities": {}}
            ctx.book.entries, ctx.book.hotkeys = {1: known}, {1: MINERS[1].ss58_address}
            async with make_session() as session:
                client = MinerClient(session, Signer(VALIDATOR))
                await poll_all(client, ctx.metagraph, ctx.book, timeout=2, concurrency=4)
                assert ctx.book.refused_by_all and ctx.book.entries == {1: known}, "kept, not marked down"
                await synthetic_cycle(client, ctx.metagraph, ctx.book, default_registry(), {}, None, None,  # type: ignore[arg-type]
                                      ctx.scoring_queue, ctx.scores)
                assert ctx.scoring_queue.empty()
    finally:
        logger.remove(sink)
    assert any("refused this validator's signed requests" in line and VALIDATOR.ss58_address in line for line in lines)
    assert any(line.startswith("synthetic: paused") for line in lines)

    scorer = Scorer(default_registry(), RewardContext(reference=DeterministicReference(), corpus=builtin_corpus()),
                    ctx.scores)
    refused = ScoringJob(source="synthetic", task="InferenceTask", bodies={1: BODY, 2: BODY},
                         hotkeys={u: k.ss58_address for u, k in MINERS.items()},
                         errors={1: 'HTTP 403: {"error": "not allowed"}', 2: "unavailable for this task"})
    assert await scorer.score(refused) == {} and ctx.scores.miners == {}
    refused.errors[2] = "deadline exceeded"  # one called miner failed on its own: the job is scored
    assert await scorer.score(refused) == {1: 0.0, 2: 0.0}


async def test_miners_refusing_an_api_hotkey_without_a_permit_are_not_scored_for_it() -> None:
    """An API whose hotkey holds no validator permit on the metagraph (``//Api2`` here): the miners that refused
    its requests (HTTP 403, as miners are to) were scored 0 on its payloads, next to one that allow-listed it.
    They are left out; the same refusal of a permitted hotkey (``//Validator``) is still the miner's 0."""
    ctx = make_ctx()
    refused = payload(errors={"2": "HTTP 403 NotAValidator: hotkey is not a validator"})
    async with serve_app(create_validator_app(ctx)) as url:
        status, _ = await post(url, "/scoring", json.dumps(refused).encode(), signer=API2)
        assert status == 202
        status, _ = await post(url, "/scoring", json.dumps({**refused, "request_id": "r2"}).encode())
        assert status == 202
    unpermitted, permitted = ctx.scoring_queue.get_nowait(), ctx.scoring_queue.get_nowait()
    assert set(unpermitted.bodies) == set(unpermitted.hotkeys) == {1} and not unpermitted.errors
    assert set(permitted.bodies) == {1, 2} and permitted.errors[2].startswith("HTTP 403")


async def _polls_until_allowed(refusing: set[int], refused: int, allowed: int
                               ) -> tuple[AvailabilityBook, list[tuple[str, str]], list[tuple[bool, set[int]]]]:
    """Miners 1 and 2 polled ``refused`` times while those in ``refusing`` refuse this validator, then ``allowed``
    times once they take it: the book, the poll's lines after "miners up" (level, message), and the book's
    ``(refused_by_all, refused)`` after each poll while they refused."""
    permitted: set[str] = set()
    apps = [create_miner_app(DeterministicBackend(), RequestVerifier(MINERS[uid].ss58_address, Authorizer(
        (lambda: permitted) if uid in refusing else (lambda: {VALIDATOR.ss58_address})))) for uid in (1, 2)]
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="INFO")
    book, states = AvailabilityBook(), []
    try:
        async with serve_app(apps[0]) as u1, serve_app(apps[1]) as u2, make_session() as session:
            snap = snapshot(VALIDATOR.ss58_address, {1: (MINERS[1].ss58_address, u1.removeprefix("http://")),
                                                     2: (MINERS[2].ss58_address, u2.removeprefix("http://"))})
            client = MinerClient(session, Signer(VALIDATOR))
            for _ in range(refused):
                await poll_all(client, _view(snap), book, timeout=2, concurrency=4)
                states.append((book.refused_by_all, set(book.refused)))
            permitted.add(VALIDATOR.ss58_address)
            for _ in range(allowed):
                await poll_all(client, _view(snap), book, timeout=2, concurrency=4)
    finally:
        logger.remove(sink)
    return book, [(level, m) for level, m in lines if m.startswith(("availability:", "recovered: availability:")) and "miners up" not in m], states


async def test_polls_every_miner_refuses_are_one_warning_and_their_end_one_line() -> None:
    """A validator without a permit is refused by every miner at every poll: the WARNING came at each poll (every
    AVAILABILITY_INTERVAL, 30 s, for as long as it had no permit), where no miner answering is one WARNING, a line
    a minute and an INFO line at its end. It is told so too: granted a permit, the next poll says it is over."""
    book, told, states = await _polls_until_allowed({1, 2}, 3, 2)
    assert all(everyone for everyone, _ in states), states
    assert len(told) == 2, told
    assert told[0][0] == "WARNING" and "2 miner(s) refused this validator's signed requests (uids 1,2)" in told[0][1]
    assert VALIDATOR.ss58_address in told[0][1] and "synthetic jobs paused" in told[0][1]
    assert told[1][0] == "INFO" and told[1][1].startswith("recovered: availability: the miners no longer all refuse this "
                                                          "validator after ") and told[1][1].endswith("(3 failure(s))")
    assert book.entries[1] is not None and not book.refused_by_all


async def test_polls_some_miners_refuse_are_one_warning_and_their_end_one_line() -> None:
    """One miner of two refuses this validator (its allow-list, a metagraph of its own that lags): the WARNING came
    at every poll, every AVAILABILITY_INTERVAL for as long as it refused, where the all-refuse case is one WARNING,
    a line a minute and an INFO line at its end. Some refusing is told as such a run too."""
    book, told, states = await _polls_until_allowed({2}, 3, 2)
    assert states == [(False, {2})] * 3
    assert len(told) == 2, told
    assert told[0][0] == "WARNING" and "1 miner(s) refused this validator's signed requests (uids 2)" in told[0][1]
    assert VALIDATOR.ss58_address in told[0][1] and "synthetic jobs paused" not in told[0][1]
    assert told[1][0] == "INFO" and told[1][1].startswith("recovered: availability: no miner refuses this validator any more "
                                                          "after ") and told[1][1].endswith("(3 failure(s))")
    assert book.refused == set() and book.entries[2] is not None


async def test_a_loop_that_stops_is_an_error_in_the_log_at_once() -> None:
    """A background loop that ends by an exception (one escaping ``every``'s own guard: here its metrics hook) was
    silent: its task's exception was read only at shutdown, by a ``gather`` that discarded it, and the validator
    served on without that loop (no weights set, no availability polled) with nothing in the log."""
    from neurons.validator.loops import every

    def broken_hook(name: str, seconds: float, ok: bool) -> None:
        raise RuntimeError("metrics hook broke")

    async def cycle() -> None:
        return None

    lines, sink = log_lines("ERROR")
    try:
        background = [lambda: every("weights", 0.01, cycle, observe=broken_hook)]
        async with serve_app(create_validator_app(make_ctx(), background=background)):
            for _ in range(100):
                if lines:
                    break
                await asyncio.sleep(0.02)
            assert lines, "nothing said while the app still serves"
    finally:
        logger.remove(sink)
    assert "weights loop stopped" in lines[0] and "RuntimeError: metrics hook broke" in lines[0], lines
    assert len(lines) == 1, lines  # said once, not again at shutdown


async def test_a_run_of_failed_cycles_is_told_with_one_traceback_a_count_and_its_end() -> None:
    """A bug inside a cycle fails it every interval: each was a one-line WARNING with no traceback, so the operator
    never had a stack to report. The run's first failure carries the traceback, each repeat is one line naming how
    many in a row, and the first cycle that succeeds after them is one INFO line."""
    from neurons.validator.loops import every

    outcomes = iter(["bug", "bug", "bug", "ok", "ok", "bug"])
    done = asyncio.Event()

    async def cycle() -> None:
        outcome = next(outcomes, None)
        if outcome is None:
            done.set()
        elif outcome == "bug":
            {}["missing"]  # noqa: B018 - a validator bug: a KeyError deep in the cycle

    said: list[tuple[str, str, str]] = []
    sink = logger.add(lambda m: said.append((m.record["level"].name, m.record["message"], str(m))), level="INFO",
                      format="{message}", filter=lambda r: "cycle" in r["message"])
    task = asyncio.create_task(every("metagraph", 0.001, cycle))
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        logger.remove(sink)
    levels_and_lines = [(level, message) for level, message, _ in said]
    assert levels_and_lines[0] == ("WARNING", "metagraph cycle failed: KeyError: 'missing'"), said
    assert "Traceback" in said[0][2] and "in cycle" in said[0][2], said[0][2]  # the stack, naming the bug's frame
    assert levels_and_lines[1:3] == [("WARNING", "metagraph cycle failed again (2 in a row): KeyError: 'missing'"),
                                     ("WARNING", "metagraph cycle failed again (3 in a row): KeyError: 'missing'")]
    assert all("Traceback" not in text for _, _, text in said[1:3])  # the repeats are one line each
    assert levels_and_lines[3][0] == "INFO" and re.fullmatch(
        r"recovered: metagraph cycle failed: a cycle succeeded again after \d+\.\d s \(3 failure\(s\)\)", said[3][1]), said
    assert levels_and_lines[4] == ("WARNING", "metagraph cycle failed: KeyError: 'missing'"), said  # a new run
    assert "Traceback" in said[4][2] and len(said) == 6 and said[5][0] == "INFO", said  # and its end


async def test_a_part_that_fails_to_close_at_shutdown_leaves_the_others_closed_and_is_said() -> None:
    """The weight sink's close failing (a chain connection already gone) stopped the shutdown's closes there: the
    reference model's pool, the miners' session and the metagraph's source were left open, and nothing said why."""
    from types import SimpleNamespace

    from neurons.validator.main import close_parts
    from neurons.validator.reference import CachedReference

    class ChainGone:
        async def close(self) -> None:
            raise ConnectionError("chain gone")

    session = make_session()
    parts = SimpleNamespace(sink=ChainGone(), reference=CachedReference(DeterministicReference()), session=session,
                            metagraph=make_ctx().metagraph)
    lines, sink = log_lines("WARNING")
    try:
        with contextlib.suppress(ConnectionError):  # raised: the failure before the fix
            await close_parts(parts)  # type: ignore[arg-type]
        closed_by_shutdown = session.closed
    finally:
        logger.remove(sink)
        await session.close()  # what the test opened, whatever close_parts did
    assert closed_by_shutdown, "the miners' session was left open"
    assert any("weight sink" in line and "ConnectionError: chain gone" in line for line in lines), lines
