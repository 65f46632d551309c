"""What an operator polls (``/health``, ``/metrics``) says what the validator's parts are doing: the scoring
inbox's backlog and the reference model's failures, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
from pathlib import Path

import aiohttp
import bittensor as bt
import pytest
from aiohttp import web
from loguru import logger

from neurons.validator.app import create_validator_app
from neurons.validator.availability import AvailabilityBook, poll_all
from neurons.validator.loops import weights_cycle
from neurons.validator.recheck import recheck_cycle
from neurons.validator.reference import CachedReference, OpenAIReference, ReferenceError
from neurons.validator.reference_status import ReferenceStatus
from neurons.validator.scores import ScoreBook
from neurons.validator.weights import DisabledSink
from shared.metagraph import MetagraphSnapshot
from shared.metrics import ValidatorMetrics
from shared.miner_client import MinerClient, make_session
from shared.signing import Signer
from tests.compat.support import sample
from tests.helpers import log_lines, serve_app, snapshot, wait_until
from tests.ports import free_port
from tests.validator.test_app import BODY, MINERS, VALIDATOR, _view, make_ctx, post
from tests.validator.test_inbox import (
    HONEST,
    answered,
    organic,
    tail,
    validator,
    validator_env,
    validator_process,
)
from tests.validator.test_scores_weights import _book, _graph, _scripted_sink
from tests.validator.test_tool_rewards import score, scorer_with

SECRET = "sk-operator-view-0123456789abcdef"
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def flaky_reference_model(state: dict[str, bool]) -> web.Application:
    """A reference model server that answers 503 "overloaded" while ``state["down"]``, then "the answer"."""

    async def chat(request: web.Request) -> web.Response:
        if state["down"]:
            return web.json_response({"error": {"message": "overloaded", "type": "server_error", "code": None,
                                                "param": None}}, status=503)
        return web.json_response({"choices": [{"message": {"content": "the answer"}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app



async def get(url: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url + path) as r:
        return r.status, await r.text()


async def test_metrics_show_the_scoring_inbox_backlog_and_the_synthetic_lane(tmp_path: Path) -> None:
    """``scoring_inbox_waiting`` was in ``/health`` only: a Prometheus alert could not see a restart's backlog."""
    path = tmp_path / "scoring_inbox.db"
    async with validator(path, scoring=False) as (url, _):
        status, body = await post(url, "/scoring", json.dumps([answered(f"rid-{i}") for i in range(5)]).encode())
        assert status == 202 and body["queued"] == 5
    async with validator(path, scoring=False, queue_size=2) as (url, ctx):
        assert ctx.inbox is not None and ctx.inbox.waiting == 3
        status, text = await get(url, "/metrics")
    assert status == 200
    assert sample(text, "sn1_validator_scoring_inbox_waiting") == 3
    assert sample(text, "sn1_validator_scoring_queue_depth") == 2
    assert sample(text, "sn1_validator_synthetic_queue_depth") == 0
    assert sample(text, "sn1_validator_organic_stale_dropped_total") == 0
    assert sample(text, "sn1_validator_last_weights_set_timestamp_seconds") == 0


@pytest.fixture
async def refusing_reference() -> str:
    """A reference server that refuses the key, quoting it back (as some do)."""
    async def refuse(request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return web.json_response({"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error",
                                            "code": "invalid_api_key", "param": None}}, status=401)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    async with serve_app(app) as url:
        yield url + "/v1"


async def test_health_and_metrics_count_reference_failures_without_the_key(refusing_reference: str) -> None:
    """A reference model refusing every call skipped every job with a WARNING in the log, and nothing polled
    said so: scores stood still while ``/health`` answered ``ok``."""
    metrics = ValidatorMetrics()
    ctx = make_ctx()
    async with aiohttp.ClientSession() as session:
        reference = CachedReference(OpenAIReference(refusing_reference, session=session, api_key=SECRET),
                                    status=ReferenceStatus(kind="llm"))
        ctx.reference = reference.status
        async with serve_app(create_validator_app(ctx, metrics=metrics)) as url:
            _, before = await get(url, "/health")
            with pytest.raises(ReferenceError):
                await reference.reply(BODY)
            status, text = await get(url, "/health")
            _, prom = await get(url, "/metrics")
            with pytest.raises(ReferenceError):
                await reference.reply(BODY | {"seed": 2})  # another question: not the cached failure
            _, again = await get(url, "/metrics")
    assert json.loads(before)["reference"]["failures"] == 0
    health = json.loads(text)["reference"]
    assert status == 200 and health["kind"] == "llm" and health["calls"] == 1 and health["failures"] == 1
    assert "HTTP 401" in health["last_error"] and "Incorrect API key" in health["last_error"]
    assert health["last_error_at"] is not None and health["last_ok_at"] is None
    assert SECRET not in text and SECRET not in prom
    # A counter (the alerts read it with increase()): a gauge was flagged by Prometheus as "might not be a counter"
    assert "# TYPE sn1_validator_reference_failures_total counter" in prom
    assert sample(prom, "sn1_validator_reference_failures_total") == 1
    assert sample(again, "sn1_validator_reference_failures_total") == 2  # each scrape counts what it has not yet


async def test_a_scores_file_the_validator_cannot_read_is_kept_aside_not_overwritten(tmp_path: Path) -> None:
    """``sn1 validator`` started on a damaged scores file (half written by hand, or by a disk that filled)
    said "starting fresh" and its first save replaced the file: weeks of scores a hand could repair, gone.
    It is renamed aside, named in the WARNING, and a SIGTERM leaves a readable new file beside it."""
    port = free_port()
    env_file, _ = validator_env(tmp_path, port)
    state = tmp_path / "state"
    state.mkdir()
    damaged = '{"miners": {"1": {"hotkey": "hk1", "tasks": {"InferenceTask": 0.9'
    (state / "scores.json").write_text(damaged)
    log = tmp_path / "validator.log"
    async with validator_process(env_file, f"http://127.0.0.1:{port}", log):
        pass
    aside = list(state.glob("scores.json.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_text() == damaged, tail(log)
    assert json.loads((state / "scores.json").read_text())["miners"] == {}
    assert f"kept as {aside[0]}" in tail(log, 0)



@pytest.fixture
async def model_server() -> str:
    """An OpenAI-compatible server under /v1 that serves ``real-model`` to the key ``sk-right`` alone, and
    quotes a wrong key back in its refusal (as OpenAI's own does)."""
    def refused(request: web.Request) -> web.Response | None:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key == "sk-right":
            return None
        return web.json_response({"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error",
                                            "code": "invalid_api_key", "param": None}}, status=401)

    async def models(request: web.Request) -> web.Response:
        return refused(request) or web.json_response({"object": "list", "data": [{"id": "real-model"}]})

    async def chat(request: web.Request) -> web.Response:
        return refused(request) or web.json_response({"choices": [{"message": {"content": "hi"}}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_app(app) as url:
        yield url


async def checked(url: str, *, key: str | None = "sk-right", model: str | None = "real-model") -> tuple[bool, str]:
    lines, sink = log_lines("INFO")
    try:
        async with aiohttp.ClientSession() as session:
            ok = await CachedReference(OpenAIReference(url, session=session, api_key=key, model=model)).check()
    finally:
        logger.remove(sink)
    return ok, "\n".join(lines)


async def test_a_reference_url_that_serves_a_web_page_says_so_not_the_json_parsers_words() -> None:
    """A REFERENCE_LLM_URL at a web UI (a 200 HTML page for ``/models``) was told as ``JSONDecodeError: Expecting
    value: line 1 column 1 (char 0)``; it says what came and which setting to fix, as the miner's does."""
    app = web.Application()
    app.router.add_get("/models", lambda _r: web.Response(text="<html>a chat UI</html>", content_type="text/html"))
    async with serve_app(app) as url:
        ok, log = await checked(url)
    assert not ok
    assert "HTTP 200 with 'text/html' that is not JSON, no model list (REFERENCE_LLM_URL is the OpenAI-compatible " \
           "base URL, usually ending in /v1)" in log, log
    assert "Expecting value" not in log, log


async def test_a_reference_model_that_cannot_work_is_named_at_start_with_the_setting_to_fix(model_server: str) -> None:
    """REFERENCE_LLM_URL without /v1, a wrong key, a model the server does not serve, a server that is down:
    each skipped every job, and the validator said nothing until the first job's WARNING, minutes later."""
    ok, log = await checked(model_server + "/v1")
    assert ok and log == "INFO reference model: real-model at " + model_server + "/v1"

    ok, log = await checked(model_server)
    assert not ok and "HTTP 404 (REFERENCE_LLM_URL is the OpenAI-compatible base URL, usually ending in /v1)" in log

    ok, log = await checked(model_server + "/v1", key=SECRET)
    assert not ok and "HTTP 401 (check REFERENCE_LLM_API_KEY)" in log and SECRET not in log

    ok, log = await checked(model_server + "/v1", model="gpt-nonexistent")
    assert not ok and "REFERENCE_LLM_MODEL gpt-nonexistent is not served" in log and "it lists real-model" in log

    ok, log = await checked(model_server + "/v1", model=None)
    assert not ok and "REFERENCE_LLM_MODEL is unset" in log

    ok, log = await checked(f"http://127.0.0.1:{free_port()}/v1")
    assert not ok and "WARNING reference model failing, jobs skipped: its model list at http://127.0.0.1:" in log
    assert "could not be read at start: ClientConnectorError" in log, log


async def test_a_reference_model_down_at_start_fails_ready_from_the_start_until_it_answers() -> None:
    """A reference model the start's check could not reach was a WARNING ("every job is skipped until it
    answers") while ``/ready`` said ``reference: llm: no call yet`` and answered 200 until a job asked the model:
    never, with synthetic jobs off and no organic traffic. Its run of failures begins at start now: ``/ready`` is a
    503 naming it, and the recheck's question clears it once the model server is up."""
    port = free_port()
    ctx = make_ctx()
    async with aiohttp.ClientSession() as session:
        reference = CachedReference(OpenAIReference(f"http://127.0.0.1:{port}/v1", session=session, api_key=SECRET,
                                                    model="real-model"), status=ReferenceStatus(kind="llm"))
        ctx.reference = reference.status
        assert not await reference.check()
        async with serve_app(create_validator_app(ctx)) as url:
            status, body = await get(url, "/ready")
            assert status == 503, body
            check = json.loads(body)["checks"]["reference"]
            assert not check["ok"] and "its model list at http://127.0.0.1:" in check["detail"], check
            assert "could not be read at start: ClientConnectorError" in check["detail"], check
            assert check["last_tried_by"] == "start" and "by the check at start)" in check["detail"], check
            _, health = await get(url, "/health")
            assert json.loads(health)["reference"]["failures"] == 0, "no job was skipped"
            async with serve_app(flaky_reference_model({"down": False}), port=port):
                await recheck_cycle(None, reference, quiet=0.0)  # the model server is up: its question answered
            status, body = await get(url, "/ready")
    assert status == 200 and json.loads(body)["checks"]["reference"]["ok"], body
    assert SECRET not in body


async def test_a_reference_model_with_no_model_list_is_named_at_start_too() -> None:
    """A server with no ``/models`` (a 404 at a ``/v1`` URL) passed the start's check in silence: the README's
    ``reference model: MODEL at URL`` line, which the other servers get, never came."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", lambda _: web.json_response({"choices": []}))
    async with serve_app(app) as url:
        ok, log = await checked(url + "/v1")
    assert ok and log == f"INFO reference model: real-model at {url}/v1 (it lists no models: not checked)"


async def test_a_refused_reference_call_names_the_setting_to_fix(model_server: str) -> None:
    """A job's ``reference LLM answered HTTP 404`` did not say the URL lacked /v1 (or 401, the key)."""
    async with aiohttp.ClientSession() as session:
        for url, key, hint in ((model_server, "sk-right", "usually ending in /v1"),
                               (model_server + "/v1", SECRET, "check REFERENCE_LLM_API_KEY")):
            with pytest.raises(ReferenceError) as e:
                await OpenAIReference(url, session=session, api_key=key, model="real-model").reply(BODY)
            assert hint in str(e.value) and SECRET not in str(e.value)


async def test_a_validator_without_a_permit_says_so_at_start(tmp_path: Path) -> None:
    """The first WARNING about a missing permit came with the first metagraph refresh, a minute after start
    (``METAGRAPH_REFRESH_SECONDS``): an operator who started it and looked at once saw nothing wrong."""
    port = free_port()
    closed = socket.socket()  # bound, never listening: a refused connection (a port merely free might be taken
    closed.bind(("127.0.0.1", 0))  # meanwhile by another suite's server, which answers)
    reference = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"  # the reference's start WARNING
    env_file, hotkey = validator_env(tmp_path, port, REFERENCE_LLM_URL=reference, REFERENCE_LLM_MODEL="m")
    graph = json.loads((tmp_path / "metagraph.json").read_text())
    for neuron in graph["neurons"]:
        neuron["validator_permit"] = False
    (tmp_path / "metagraph.json").write_text(json.dumps(graph))
    log = tmp_path / "validator.log"
    with closed:
        async with validator_process(env_file, f"http://127.0.0.1:{port}", log):
            pass
    text = tail(log, 0)
    # In the order "Running against the real chain" gives them (it said "validator starting" came first).
    said = [text.find(line) for line in ("this validator (uid 0) holds no validator permit",
                                         f"reference model failing, jobs skipped: its model list at {reference} ",
                                         "validator starting ", "serving on ")]
    assert 0 <= said[0] < said[1] < said[2] < said[3], text
    step = " ".join(README[README.index("## Running against the real chain"):].split())
    assert ("At start it logs a WARNING when its hotkey is not registered or holds no permit, then `reference "
            "model: MODEL at URL` (or a WARNING") in step and "then `validator starting ...` and `serving on" in step


async def test_scores_the_disk_refuses_stay_in_memory_and_health_says_why(tmp_path: Path) -> None:
    """A save the disk refused raised into the scoring worker: a traceback per job, each job called
    "failed, dropped" although it was scored, and ``/health`` said nothing. Now one WARNING, the reason in
    ``/health``, and the next save after the disk recovers writes every score."""
    path = tmp_path / "scores.json"
    ctx = make_ctx()
    ctx.scores = ScoreBook({"InferenceTask": 1.0}, path=path)
    lines, handler = log_lines("INFO")
    try:
        async with serve_app(create_validator_app(ctx)) as url:
            path.mkdir()
            (path / "in-the-way").write_text("")  # a real OSError: a file cannot replace a directory
            for uid in (1, 2):
                ctx.scores.update(uid, f"hk{uid}", "InferenceTask", 1.0)
                await ctx.scores.save_off_loop()
            health = json.loads((await get(url, "/health"))[1])
            assert "IsADirectoryError" in health["scores_save_error"]
            (path / "in-the-way").unlink()
            path.rmdir()
            ctx.scores.update(3, "hk3", "InferenceTask", 1.0)
            await ctx.scores.save_off_loop()
            assert json.loads((await get(url, "/health"))[1])["scores_save_error"] is None
    finally:
        logger.remove(handler)
    assert set(json.loads(path.read_text())["miners"]) == {"1", "2", "3"}
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1 and f"WARNING scores not saved to {path}" in warnings[0], lines
    assert any(line.startswith(f"INFO recovered: scores not saved to {path}") and ": saved again after" in line
               for line in lines), lines


def two_miners() -> tuple[list[int], MetagraphSnapshot]:
    """Two free ports and a metagraph serving uids 1 and 2 on them (nothing listens until a test serves one)."""
    ports = [free_port(), free_port()]
    return ports, snapshot(VALIDATOR.ss58_address, {1: (MINERS[1].ss58_address, f"127.0.0.1:{ports[0]}"),
                                                    2: (MINERS[2].ss58_address, f"127.0.0.1:{ports[1]}")})


def uid1_miner() -> web.Application:
    """The reference miner of uid 1, taking this validator's signature."""
    from neurons.miner.app import create_miner_app
    from neurons.miner.backends.deterministic import DeterministicBackend
    from shared.signing import Authorizer, RequestVerifier

    verifier = RequestVerifier(MINERS[1].ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
    return create_miner_app(DeterministicBackend(), verifier)


async def polls(uid1_up: list[bool], level: str = "INFO") -> tuple[list[str], list[int]]:
    """Availability polls of ``two_miners``, uid 1 served at the polls ``uid1_up`` says and uid 2 at none: the lines
    logged from ``level``, and the miners' ports."""
    ports, snap = two_miners()
    lines, handler = log_lines(level)
    book = AvailabilityBook()
    try:
        async with make_session() as session:
            client = MinerClient(session, Signer(VALIDATOR))
            for up, run in itertools.groupby(uid1_up):
                async with contextlib.AsyncExitStack() as serving:
                    if up:
                        await serving.enter_async_context(serve_app(uid1_miner(), port=ports[0]))
                    for _ in run:
                        await poll_all(client, _view(snap), book, timeout=2, concurrency=4)
    finally:
        logger.remove(handler)
    return lines, ports


async def test_no_reachable_miner_is_a_warning_with_a_reason() -> None:
    """``availability: 0/2 miners up`` at INFO, the reasons at DEBUG: a validator whose host could not reach
    any miner (a firewall, a wrong network) looked like one on a subnet of dead miners."""
    ports, snap = two_miners()
    lines, handler = log_lines("INFO")
    try:
        async with make_session() as session:
            book = await poll_all(MinerClient(session, Signer(VALIDATOR)), _view(snap), AvailabilityBook(),
                                  timeout=2, concurrency=4)
    finally:
        logger.remove(handler)
    assert book.entries == {1: None, 2: None}
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1, lines
    assert warnings[0].startswith("WARNING availability: none of 2 serving miner(s) answered the poll")
    assert f"uid 1: unreachable at 127.0.0.1:{ports[0]}" in warnings[0]


async def test_polls_no_miner_answers_are_one_warning_and_their_end_one_line() -> None:
    """The WARNING came at every poll (each AVAILABILITY_INTERVAL, a second on a fast local network) for as long
    as the miners were out of reach, and nothing said when they came back but ``1/2 miners up``."""
    lines, _ = await polls([False, False, False, True, True])
    told = [line for line in lines if not line.startswith("INFO availability: ") or "miners up" not in line]
    assert len(told) == 2, lines
    assert told[0].startswith("WARNING availability: none of 2 serving miner(s) answered the poll"), told
    assert told[1].startswith("INFO recovered: availability: miners answer the poll again after ") and \
        told[1].endswith("(3 failure(s))"), told


async def test_the_polls_line_names_the_miners_that_do_not_answer_and_why() -> None:
    """A miner killed showed in the log as ``availability: 1/2 miners up`` alone, its uid and reason at DEBUG: the
    operator could not tell which miner was gone, or why, without ``/miner_availabilities``. The line names the
    uids not answering and the first one's reason."""
    ports, snap = two_miners()
    lines, handler = log_lines("INFO")
    try:
        async with make_session() as session:
            client = MinerClient(session, Signer(VALIDATOR))
            async with serve_app(uid1_miner(), port=ports[0]):
                book = await poll_all(client, _view(snap), AvailabilityBook(), timeout=2, concurrency=4)
                await poll_all(client, _view(snap), book, timeout=2, concurrency=4)
    finally:
        logger.remove(handler)
    assert book.entries[1] is not None and book.entries[2] is None
    polls = [line for line in lines if line.startswith("INFO availability: ")]
    assert len(polls) == 1, lines  # the second poll said the same: at DEBUG
    assert polls[0].startswith(f"INFO availability: 1/2 miners up; not answering: uid(s) 2 (uid 2: unreachable at "
                               f"127.0.0.1:{ports[1]}: "), polls[0]
    assert not [line for line in lines if line.startswith("WARNING")], lines  # one miner down: no outage


async def test_a_poll_that_says_what_the_last_said_is_debug_and_a_change_is_info() -> None:
    """``availability: 58/58 miners up`` was INFO at every poll (every 30 s, 2,880 alike a day), a miner lost among
    them. A poll whose line says what the last INFO one said is DEBUG; a miner lost or back is INFO at once."""
    lines, _ = await polls([True, True, True, False, True, True], level="DEBUG")  # uid 2 never up, uid 1 gone once
    said = [line.split(";")[0] for line in lines if line.split(" ", 1)[1].startswith("availability: ")
            and "miners up" in line]
    assert said == ["INFO availability: 1/2 miners up", "DEBUG availability: 1/2 miners up",
                     "DEBUG availability: 1/2 miners up", "INFO availability: 0/2 miners up",
                     "INFO availability: 1/2 miners up", "DEBUG availability: 1/2 miners up"], lines
    back = [line for line in lines if line.startswith("INFO availability: 1/2 miners up; answering again")]
    assert back == [line for line in lines if "answering again" in line] and len(back) == 1, lines  # uid 1, once
    assert back[0].startswith("INFO availability: 1/2 miners up; answering again: uid(s) 1; not answering: uid(s) 2 "
                              "(uid 2: unreachable at "), back


async def test_a_metagraph_read_that_says_what_the_last_said_is_debug_then_info_again_after_ten_minutes() -> None:
    """``metagraph: block N: 64 neurons, 58 serving an axon`` was INFO every cycle (every 60 s), the block its only
    change. The same counts are DEBUG; a neuron more, or fewer serving, is INFO; and so is the same line once ten
    minutes passed since the last INFO one (the loop is seen to run)."""
    from neurons.validator.loops import metagraph_cycle
    from shared.metagraph import MetagraphView
    from shared.unchanged import Unchanged
    from tests.helpers import StaticSource

    ports, snap = two_miners()
    view = MetagraphView(StaticSource(snap))
    now = [0.0]
    told = Unchanged(clock=lambda: now[0])
    scores = ScoreBook({"InferenceTask": 1.0})
    lines, handler = log_lines("DEBUG")
    try:
        for _ in range(2):
            await metagraph_cycle(view, scores, told=told)
        view.source.snapshot = snapshot(VALIDATOR.ss58_address, {1: (MINERS[1].ss58_address, f"127.0.0.1:{ports[0]}"),
                                                                2: (MINERS[2].ss58_address, None)})
        await metagraph_cycle(view, scores, told=told)
        now[0] = 599.0
        await metagraph_cycle(view, scores, told=told)
        now[0] = 601.0
        await metagraph_cycle(view, scores, told=told)
    finally:
        logger.remove(handler)
    assert [line for line in lines if " metagraph: block " in line] == [
        "INFO metagraph: block 1: 3 neurons, 2 serving an axon", "DEBUG metagraph: block 1: 3 neurons, 2 serving an axon",
        "INFO metagraph: block 1: 3 neurons, 1 serving an axon", "DEBUG metagraph: block 1: 3 neurons, 1 serving an axon",
        "INFO metagraph: block 1: 3 neurons, 1 serving an axon"], lines


async def test_a_token_in_the_reference_url_is_never_quoted_back_into_the_log() -> None:
    """``REFERENCE_LLM_URL=http://user:token@host/v1`` is allowed (instead of REFERENCE_LLM_API_KEY); only the
    key was masked in a refusal's text, so a server quoting the credentials it refused had the token logged."""
    async def refuse(request: web.Request) -> web.Response:
        auth = aiohttp.BasicAuth.decode(request.headers["Authorization"])
        return web.json_response({"error": {"message": f"bad credentials {auth.login}:{auth.password}",
                                            "type": "invalid_request_error", "code": None, "param": None}}, status=401)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        with_token = url.replace("http://", f"http://user:{SECRET}@") + "/v1"
        with pytest.raises(ReferenceError) as e:
            await OpenAIReference(with_token, session=session, model="real-model").reply(BODY)
    assert "bad credentials user:***" in str(e.value) and SECRET not in str(e.value)


async def test_health_says_why_weights_were_not_set_and_how_old_the_metagraph_is() -> None:
    """A set the chain refused was a WARNING in the log alone: ``/health`` showed an old
    ``last_weights_set_at`` and nothing of why, nor whether the metagraph could still be read."""
    wrong_key = bt.ExtrinsicResult(success=False, message="IncorrectWeightVersionKey",
                                   error=bt.ChainError("IncorrectWeightVersionKey", name="IncorrectWeightVersionKey"))
    sink, _ = _scripted_sink("//Charlie", [wrong_key])
    ctx = make_ctx()
    ctx.scores = _book(1.0, 0.5)
    metrics = ValidatorMetrics()
    try:
        async with serve_app(create_validator_app(ctx, metrics=metrics)) as url:
            with pytest.raises(RuntimeError):
                await weights_cycle(ctx.scores, sink, _graph(2), power=1.0)
            health = json.loads((await get(url, "/health"))[1])
            _, prom = await get(url, "/metrics")
    finally:
        await sink.close()
    assert health["weights_not_set"].startswith("RuntimeError: SetWeights refused (IncorrectWeightVersionKey)")
    assert health["last_weights_set_at"] is None
    assert health["metagraph_block"] == 1 and 0 <= health["metagraph_age_seconds"] < 60
    assert 0 < sample(prom, "sn1_validator_metagraph_age_seconds") < 60


async def test_a_reference_model_down_for_many_jobs_is_one_warning_and_one_line_when_back(tmp_path: Path) -> None:
    """Each job the reference model failed was a WARNING of its own: under organic traffic, thousands of lines
    a minute. A run of failures is one WARNING (then a line a minute), and its end one INFO line."""
    state = {"down": True}
    app = flaky_reference_model(state)
    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(f"{m.record['level'].name} {m.record['message']}"), level="INFO",
                         filter=lambda r: "reference model" in r["message"])
    try:
        async with serve_app(app) as url, aiohttp.ClientSession() as session:
            reference = CachedReference(OpenAIReference(url + "/v1", session=session, model="m"))
            scorer = scorer_with(reference, tmp_path, reference.status)
            for i in range(5):
                body = {**BODY, "seed": i}
                assert await score(scorer, {1: body}, {1: ['{"choices":[{"delta":{"content":"x"}}]}']}) == {}
            state["down"] = False
            assert await score(scorer, {1: BODY}, {1: ['{"choices":[{"delta":{"content":"x"}}]}']})
    finally:
        logger.remove(handler)
    assert len(lines) == 2, lines
    assert lines[0].startswith("WARNING reference model failing, jobs skipped: organic InferenceTask job skipped: "
                               "reference LLM answered HTTP 503")
    assert lines[1].startswith("INFO recovered: reference model failing, jobs skipped: it answers again after")
    assert "(5 failure(s))" in lines[1]


def per_uid(prom: str, name: str) -> dict[int, float]:
    """``uid -> value`` of one per-uid gauge's series in a ``/metrics`` text."""
    prefix = name + '{uid="'
    return {int(line[len(prefix):].split('"', 1)[0]): float(line.rsplit(" ", 1)[1])
            for line in prom.splitlines() if line.startswith(prefix)}


async def test_metrics_show_each_miners_score_and_weight_and_drop_a_uid_that_left(tmp_path: Path) -> None:
    """Per-uid scores and weights were in ``GET /scores`` alone: a dashboard showed scoring work, never who
    the validator pays. Each uid of the metagraph gets a score and a weight series, equal to ``/scores``', and
    a uid that leaves the metagraph loses both (the series stay as many as the subnet's uids)."""
    worse = [HONEST[0].replace("content\": \"", "content\": \"not ")]
    batch = [answered(f"rid-{i}", chunks={"1": HONEST, "2": worse}) for i in range(3)]
    async with validator(tmp_path / "scoring_inbox.db") as (url, ctx):
        status, _ = await post(url, "/scoring", json.dumps(batch).encode())
        assert status == 202
        await wait_until(lambda: sum(m.organic_counts.get("InferenceTask", 0) for m in ctx.scores.miners.values())
                         == 6, 10)
        assert organic(ctx, 1) > organic(ctx, 2) > 0
        _, prom = await get(url, "/metrics")
        report = json.loads((await get(url, "/scores"))[1])
        scores = {m["uid"]: m["score"] for m in report["miners"]}
        assert per_uid(prom, "sn1_validator_miner_score") == pytest.approx(scores, abs=1e-6)
        assert set(scores) == {1, 2} and scores[1] > scores[2] > 0
        assert per_uid(prom, "sn1_validator_miner_weight") == {1: 0.0, 2: 0.0}, "no weights cycle yet"

        weights = await weights_cycle(ctx.scores, DisabledSink(), ctx.metagraph.snapshot, power=1.0)
        _, prom = await get(url, "/metrics")
        shown = per_uid(prom, "sn1_validator_miner_weight")
        assert shown == pytest.approx(weights) and shown[1] > shown[2] > 0 and sum(shown.values()) == pytest.approx(1)

        ctx.metagraph.snapshot = snapshot(VALIDATOR.ss58_address, {1: (MINERS[1].ss58_address, None)})  # uid 2 left
        _, prom = await get(url, "/metrics")
    assert set(per_uid(prom, "sn1_validator_miner_score")) == set(per_uid(prom, "sn1_validator_miner_weight")) == {1}
    assert 'uid="2"' not in prom
