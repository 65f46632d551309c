"""Every chat and web-retrieval request leaves one INFO access-log line (ids, never the key), refused
ones included, written even at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from loguru import logger
from multidict import CIMultiDict

from tests.compat.support import sample
from tests.helpers import AnswersOnce, Script, api_with_miners, chunk, info_lines, post, sse

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def lines() -> Iterator[list[str]]:
    with info_lines() as out:
        yield out


def chat_lines(lines: list[str]) -> list[str]:
    """The API's chat lines (an in-process miner's own lines carry the same ``chat rid=...``)."""
    return [line for line in lines if " | api | chat rid=" in line]


async def test_each_request_is_logged_once_with_ids_winner_and_latency(tmp_path: Path, lines: list[str]) -> None:
    scripts = {2: Script([(0, d) for d in sse(chunk("hi"), chunk(finish="stop"))])}
    async with api_with_miners(tmp_path, scripts) as api:
        key_id = (await api.ctx.store.list_keys())[0].id
        for rid, stream in (("rid-one", False), ("rid-two", True)):
            status, _, text = await post(api, {"messages": MESSAGES, "uids": [2], "stream": stream},
                                         headers={"x-request-id": rid})
            assert status == 200, text
        await asyncio.sleep(0.3)  # the access log's flush interval (0.1 s) has passed: no explicit flush
        logged = chat_lines(lines)
        assert len(logged) == 2, logged
        for line, rid, stream in zip(logged, ("rid-one", "rid-two"), (False, True), strict=True):
            assert f" | INFO    | api | chat rid={rid} key={key_id} uids=[2] winner=2 stream={stream} " in line
            assert " status=ok latency_ms=" in line
            assert api.key not in line


async def test_lines_still_queued_are_written_when_the_api_stops(tmp_path: Path, lines: list[str]) -> None:
    scripts = {2: Script([(0, d) for d in sse(chunk("hi"), chunk(finish="stop"))])}
    async with api_with_miners(tmp_path, scripts) as api:
        api.ctx.request_log.flush_seconds = 3600  # nothing but the shutdown can write it
        status, _, text = await post(api, {"messages": MESSAGES, "uids": [2]}, headers={"x-request-id": "late"})
        assert status == 200, text
        await asyncio.sleep(0.05)
        assert chat_lines(lines) == [] and api.ctx.request_log.pending == 1
    assert len(chat_lines(lines)) == 1 and "chat rid=late " in chat_lines(lines)[0]


async def test_a_failed_request_is_logged_with_its_outcome(tmp_path: Path, lines: list[str]) -> None:
    async with api_with_miners(tmp_path, {2: Script([], status=500)}) as api:
        status, _, _ = await post(api, {"messages": MESSAGES, "uids": [2]}, headers={"x-request-id": "broken"})
        assert status == 502
        api.ctx.request_log.flush()
    (line,) = chat_lines(lines)
    assert "chat rid=broken " in line and " winner=None " in line and " status=error " in line


def failed_uids(line: str) -> dict[str, str]:
    """The line's ``failed=2:http_5xx,3:bad_response`` as uid -> kind."""
    field = next((f for f in line.split() if f.startswith("failed=")), "failed=")
    return dict(token.split(":") for token in field.removeprefix("failed=").split(",") if token)


async def test_the_line_says_why_each_miner_that_lost_failed(tmp_path: Path, lines: list[str]) -> None:
    """Which miners were asked and which won was said, never why the others lost (a DEBUG line each): a
    502 read ``status=error`` alone at INFO. Each miner that failed is named with its error's kind."""
    slow = Script([(0.3, d) for d in sse(chunk("hi"), chunk(finish="stop"))])  # wins after the others failed
    garbage = Script([(0, b"data: {not json\n\n")])
    scripts = {1: slow, 2: Script([], status=500), 3: garbage, 4: Script([], status=401)}
    async with api_with_miners(tmp_path, scripts) as api:
        status, _, text = await post(api, {"messages": MESSAGES, "uids": [1, 2, 3, 4]},
                                     headers={"x-request-id": "won"})
        assert status == 200, text
        status, _, _ = await post(api, {"messages": MESSAGES, "uids": [2, 3, 4], "stream": True},
                                  headers={"x-request-id": "lost"})
        assert status == 502
        status, _, _ = await post(api, {"messages": MESSAGES, "uids": [1]}, headers={"x-request-id": "clean"})
        assert status == 200
        api.ctx.request_log.flush()
        async with aiohttp.ClientSession() as s, s.get(api.url + "/metrics") as r:
            text = await r.text()
    kinds = {"2": "http_5xx", "3": "bad_response", "4": "signature"}
    for uid, kind in kinds.items():  # the metric says it too: miner_errors_total{uid} said which, never why
        assert sample(text, "sn1_api_miner_errors_total", uid=uid, kind=kind) == 2, (uid, kind)
    (won,) = [x for x in chat_lines(lines) if "chat rid=won " in x]
    assert " uids=[1,2,3,4] winner=1 " in won and " status=ok " in won and failed_uids(won) == kinds, won
    (lost,) = [x for x in chat_lines(lines) if "chat rid=lost " in x]
    assert " winner=None " in lost and " status=error " in lost and failed_uids(lost) == kinds, lost
    (clean,) = [x for x in chat_lines(lines) if "chat rid=clean " in x]
    assert "failed=" not in clean, "nothing failed: nothing more on the line"


async def test_a_miner_that_drops_mid_answer_is_told_from_one_that_cannot_be_reached(tmp_path: Path,
                                                                                        lines: list[str]) -> None:
    """A miner whose connection broke mid-answer (a crash, a restart) and one with nothing listening were both
    ``unreachable``: the on-call engineer checked a firewall for a miner whose process was dying. The first is
    now ``dropped``, in the line and in ``miner_errors_total{kind}``; a miner too slow stays ``timeout``."""
    won = Script([(0.3, d) for d in sse(chunk("hi"), chunk(finish="stop"))])  # answers after the others failed
    dies = Script([(0, b"data: " + chunk("half an ans").encode() + b"\n\n")], die=True)  # connected, then gone
    slow = Script([(5, d) for d in sse(chunk("late"), chunk(finish="stop"))])
    async with api_with_miners(tmp_path, {1: won, 2: dies, 4: slow}, unlistened={3}) as api:
        for stream in (False, True):
            status, _, text = await post(api, {"messages": MESSAGES, "uids": [1, 2, 3], "stream": stream},
                                         headers={"x-request-id": f"drop-{stream}"})
            assert status == 200, text
        status, _, _ = await post(api, {"messages": MESSAGES, "uids": [4], "timeout": 0.5},
                                  headers={"x-request-id": "slow"})
        assert status == 504
        api.ctx.request_log.flush()
        for _ in range(100):  # a race is counted once it is settled, after its last miner ended
            async with aiohttp.ClientSession() as s, s.get(api.url + "/metrics") as r:
                text = await r.text()
            if sample(text, "sn1_api_miner_errors_total", uid="3", kind="unreachable") == 2:
                break
            await asyncio.sleep(0.05)
    assert dies.calls == 2
    # streamed, the dying miner's first words won the race: the caller's answer broke, and the line says how
    for stream, outcome in ((False, " winner=1 stream=False mixture=False status=ok "),
                            (True, " winner=2 stream=True mixture=False status=failed_mid_stream ")):
        (line,) = [x for x in chat_lines(lines) if f"chat rid=drop-{stream} " in x]
        assert outcome in line and failed_uids(line) == {"2": "dropped", "3": "unreachable"}, line
    assert sample(text, "sn1_api_miner_errors_total", uid="2", kind="dropped") == 2
    assert sample(text, "sn1_api_miner_errors_total", uid="3", kind="unreachable") == 2
    assert sample(text, "sn1_api_miner_errors_total", uid="2", kind="unreachable") == 0
    (line,) = [x for x in chat_lines(lines) if "chat rid=slow " in x]
    assert failed_uids(line) == {"4": "timeout"}, line


async def test_requests_no_miner_answers_are_one_warning_and_their_end_one_line(tmp_path: Path) -> None:
    """Every miner failing failed every request with an INFO line each (``status=error``) and no WARNING. The
    first is now a WARNING with each miner's reason, the rest are counted, and answers coming back are an INFO
    line. A request whose caller chose its miners (``uids``) is not counted: its miner is its choice."""
    said: list[tuple[str, str]] = []
    sink = logger.add(lambda m: said.append((m.record["level"].name, m.record["message"])), level="INFO")
    scripts = {2: Script([], status=500), 3: Script([], status=502)}
    try:
        # no miner set aside for its failures (``MinerHealth``): every request races them, a 502 each
        async with api_with_miners(tmp_path, scripts, miner_failures_to_set_aside=0) as api:
            api.ctx.no_answer.settle = 0.0  # its end is said at the first answer (the settle is a unit test's)
            status, _, _ = await post(api, {"messages": MESSAGES, "uids": [2]}, headers={"x-request-id": "aimed"})
            assert status == 502
            assert not [m for _, m in said if "no miner gave a valid answer" in m], "a caller's choice, no outage"
            for i in range(5):
                status, _, _ = await post(api, {"messages": MESSAGES}, headers={"x-request-id": f"down-{i}"})
                assert status == 502
            scripts[2].status, scripts[2].steps = 200, [(0, d) for d in sse(chunk("hi"), chunk(finish="stop"))]
            status, _, _ = await post(api, {"messages": MESSAGES}, headers={"x-request-id": "back"})
            assert status == 200
    finally:
        logger.remove(sink)
    told = [(level, m) for level, m in said if m.removeprefix("recovered: ").startswith("requests failing, no miner gave a valid answer")]
    assert len(told) == 2, told
    (level, first), (end_level, end) = told
    assert level == "WARNING" and first.startswith("requests failing, no miner gave a valid answer: rid=down-0 "
                                                   "answered HTTP 502 no_valid_answer: "), first
    assert "uid 2: HTTP 500" in first and "uid 3: HTTP 502" in first and "are the miners up" in first
    assert end_level == "INFO" and "miners answer again after" in end and "(5 failure(s))" in end, end


async def test_a_mixture_no_miner_answers_is_counted_once_as_a_plain_request_is(tmp_path: Path) -> None:
    """Every miner failing failed every mixture request with no WARNING and no count: the first stage's failure
    was never told, and the final stage's was taken for a caller's short deadline (the node cuts a mixture's
    deadline itself). Each such request is now counted into the "requests no miner answers" run once, whichever
    stage no miner answered, as a plain request is; one naming its uids still is not (its miners are its choice)."""
    said: list[tuple[str, str]] = []
    sink = logger.add(lambda m: said.append((m.record["level"].name, m.record["message"])), level="INFO")
    scripts = {2: Script([], status=500), 3: Script([], status=502)}
    try:
        async with api_with_miners(tmp_path, scripts, miner_failures_to_set_aside=0) as api:
            status, _, _ = await post(api, {"messages": MESSAGES, "mixture": True, "uids": [2, 3]},
                                      headers={"x-request-id": "aimed"})
            assert status == 502 and api.ctx.no_answer.failures == 0, "a caller's choice, no outage"
            for i in range(3):
                status, _, text = await post(api, {"messages": MESSAGES, "mixture": True},
                                             headers={"x-request-id": f"mix-{i}"})
                assert status == 502 and "Mixture, first stage" in text, text
                assert api.ctx.no_answer.failures == i + 1
        async with api_with_miners(tmp_path, {2: AnswersOnce([(0, d) for d in sse(chunk("hi"), chunk(finish="stop"))]),
                                              3: Script([], status=500)}, miner_failures_to_set_aside=0) as api:
            status, _, text = await post(api, {"messages": MESSAGES, "mixture": True},
                                         headers={"x-request-id": "mix-final"})
            assert status == 502 and "Mixture" not in text, text  # stage one answered (uid 2); its final stage not
            assert api.ctx.no_answer.failures == 1
    finally:
        logger.remove(sink)
    told = [(level, m) for level, m in said if m.removeprefix("recovered: ").startswith("requests failing, no miner gave a valid answer")]
    assert [level for level, _ in told] == ["WARNING", "WARNING"], told
    assert told[0][1].startswith("requests failing, no miner gave a valid answer: rid=mix-0 answered HTTP 502 "
                                 "no_valid_answer: Mixture, first stage: "), told
    assert "uid 2: HTTP 500" in told[0][1] and "uid 3: HTTP 502" in told[0][1], told
    assert "rid=mix-final answered HTTP 502 no_valid_answer" in told[1][1] and "uid 2: HTTP 500" in told[1][1], told


async def _send(url: str, *, key: str, body: bytes, rid: str) -> tuple[int, CIMultiDict[str]]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=body, headers={"Authorization": f"Bearer {key}", "x-request-id": rid,
                                                   "Content-Type": "application/json"}) as r:
            await r.read()
            return r.status, r.headers.copy()


async def test_refused_requests_get_one_line_each_and_their_request_id(tmp_path: Path, lines: list[str]) -> None:
    async with api_with_miners(tmp_path, {}, honest={1}, max_body_bytes=4096) as api:
        chat = api.url + "/v1/chat/completions"
        ok_body = json.dumps({"messages": MESSAGES, "uids": [1]}).encode()
        limited, limited_record = await api.ctx.store.create_key(1)
        key_id = (await api.ctx.store.list_keys())[0].id
        cases = [("no-key", "sn1-wrong", ok_body, 401, "invalid_api_key", None),
                 ("bad-json", api.key, b"{bad", 400, "invalid_json", key_id),
                 ("first", limited, ok_body, 200, None, limited_record.id),
                 ("over-limit", limited, ok_body, 429, "rate_limit_exceeded", limited_record.id)]
        for rid, key, body, status, _, _ in cases:
            got, headers = await _send(chat, key=key, body=body, rid=rid)
            assert got == status
            assert headers.get("x-request-id") == rid, "a refusal names the request id its line carries"
        async with aiohttp.ClientSession() as s:
            async with s.get(api.url + "/web_retrieval?search_query=x", headers={"x-request-id": "web-no-key"}) as r:
                assert r.status == 401
        got, _ = await _send(chat, key=api.key, body=b'{"x": "' + b"a" * 8192 + b'"}', rid="too-big")
        assert got == 413
        api.ctx.request_log.flush()
    for rid, _, _, status, code, kid in cases:
        (line,) = [x for x in chat_lines(lines) if f" | chat rid={rid} " in x]
        if status == 200:
            assert " status=ok " in line
        else:
            assert f" key={kid} status={status} code={code} latency_ms=" in line
    (big,) = [x for x in lines if " | chat rid=too-big " in x]  # aiohttp's own refusal, not an ApiError
    assert f" key={key_id} status=413 code=request_entity_too_large " in big
    (web,) = [x for x in lines if " | web_retrieval rid=web-no-key " in x]
    assert " key=None status=401 code=missing_api_key " in web


async def test_every_route_and_every_refusal_leaves_one_line_with_the_id_it_answers(
        tmp_path: Path, lines: list[str]) -> None:
    """Routes that ask no miner, unknown paths and methods, and admin calls (whose path holds a key)
    each leave one line naming the route's pattern, and their responses carry its request id. An
    admin-key call says ``key=admin`` (it said ``key=None``, as an unauthenticated one does); a wrong
    admin key, or an API key on an admin route, stays ``key=None``."""
    async with api_with_miners(tmp_path, {}) as api:
        key_id = (await api.ctx.store.list_keys())[0].id
        bearer = {"Authorization": f"Bearer {api.key}"}
        admin = {"admin-key": "admin-secret-for-tests"}
        cases = [("GET", "/v1/models", bearer, 200, "http", key_id, "/v1/models", "None"),
                 ("GET", "/v1/usage", bearer, 200, "http", key_id, "/v1/usage", "None"),
                 ("GET", "/nowhere", bearer, 404, "http", None, "?", "not_found"),
                 ("PUT", "/v1/chat/completions", bearer, 405, "http", None, "?",
                  "method_not_allowed"),
                 ("GET", "/v1/chat/completions", bearer, 404, "http", None, "?", "not_found"),  # OpenAI's, not ours
                 ("PUT", f"/api_management/modify-api-key/{api.key}", admin, 400, "http", "admin",
                  "/api_management/modify-api-key/{api_key}", None),
                 ("GET", "/api_management/api-keys", admin, 200, "http", "admin", "/api_management/api-keys",
                  "None"),
                 ("GET", "/api_management/api-keys", {"admin-key": "wrong"}, 401, "http", None,
                  "/api_management/api-keys", "invalid_admin_key"),
                 ("GET", "/api_management/api-keys", bearer, 401, "http", None, "/api_management/api-keys",
                  "invalid_admin_key")]
        async with aiohttp.ClientSession() as s:
            for i, (method, path, headers, status, _, _, _, _) in enumerate(cases):
                async with s.request(method, api.url + path, headers={**headers, "x-request-id": f"r{i}"},
                                     data=b"{bad" if method == "PUT" else None) as r:
                    await r.read()
                    assert r.status == status, (path, await r.text())
                    assert r.headers.get("x-request-id") == f"r{i}", path
        api.ctx.request_log.flush()
    for i, (method, _, _, status, kind, kid, route, code) in enumerate(cases):
        (line,) = [x for x in lines if f" | {kind} rid=r{i} " in x]
        assert f" key={kid} method={method} route={route} status={status} " in line, line
        if code:
            assert f" code={code} " in line, line
    assert not any(api.key in x or "admin-secret-for-tests" in x for x in lines)


async def test_a_client_that_leaves_before_its_answer_leaves_one_line(tmp_path: Path, lines: list[str]) -> None:
    """A web retrieval whose caller hangs up while the miners are asked: a 499 line, not none."""
    scripts = {2: Script([(5.0, b"")])}
    async with api_with_miners(tmp_path, scripts) as api:
        async with aiohttp.ClientSession() as s:
            with pytest.raises(asyncio.TimeoutError):
                async with s.get(api.url + "/web_retrieval?search_query=x&uids=2",
                                 headers={"Authorization": f"Bearer {api.key}", "x-request-id": "gone"},
                                 timeout=aiohttp.ClientTimeout(total=0.5)) as r:
                    await r.read()
        await asyncio.sleep(0.3)
        api.ctx.request_log.flush()
    (line,) = [x for x in lines if " | web_retrieval rid=gone " in x]
    assert " status=499 code=client_closed_request " in line, line


async def test_a_stream_is_logged_when_it_ends_with_its_real_outcome(tmp_path: Path, lines: list[str]) -> None:
    """The line of a stream comes at its end: a winner that dies mid-stream is not ``ok``, and a
    caller that hangs up mid-stream is ``client_closed``."""
    dies = Script([(0, d) for d in sse(chunk("Hel"), done=False)] + [(0.3, b"")], die=True)
    slow = Script([(0, d) for d in sse(chunk("Hel"), done=False)] + [(5.0, b"")])
    async with api_with_miners(tmp_path, {2: dies, 3: slow}) as api:
        status, _, text = await post(api, {"messages": MESSAGES, "uids": [2], "stream": True},
                                     headers={"x-request-id": "dies"})
        assert status == 200 and "error" in text
        async with aiohttp.ClientSession() as s:
            async with s.post(api.url + "/v1/chat/completions",
                              json={"messages": MESSAGES, "uids": [3], "stream": True},
                              headers={"Authorization": f"Bearer {api.key}", "x-request-id": "leaves"}) as r:
                await r.content.readany()  # the first chunk: the stream has begun
                api.ctx.request_log.flush()
                assert not [x for x in lines if " | chat rid=leaves " in x], "no line at the stream's start"
        await asyncio.sleep(0.3)
        api.ctx.request_log.flush()
    (died,) = [x for x in lines if " | chat rid=dies " in x]
    assert " winner=2 " in died and " status=failed_mid_stream " in died, died
    (left,) = [x for x in lines if " | chat rid=leaves " in x]
    assert " winner=3 " in left and " status=client_closed " in left, left



async def test_a_request_that_ended_in_an_error_names_its_code(tmp_path: Path, lines: list[str]) -> None:
    """A refused request's line names the code its caller got (``status=400 code=invalid_json``); a raced one's did
    not: a stream whose miner died mid-way said ``status=failed_mid_stream`` (its caller's last event said
    ``miner_failed_mid_stream``), and a race no miner won ``status=error`` alone (a 502 ``no_valid_answer`` read as
    a 504 ``deadline_exceeded`` does). Each now says ``code=...`` after its status, as the refusal's does: chat,
    and a text completion stream (its choices' line)."""
    dies = Script([(0, d) for d in sse(chunk("Hel"), done=False)] + [(0.3, b"")], die=True)
    async with api_with_miners(tmp_path, {2: dies, 3: Script([], status=500)}) as api:
        status, _, text = await post(api, {"messages": MESSAGES, "uids": [2], "stream": True},
                                     headers={"x-request-id": "died"})
        assert status == 200 and "miner_failed_mid_stream" in text, text
        status, _, text = await post(api, {"prompt": "Hi", "uids": [2], "stream": True}, path="/v1/completions",
                                     headers={"x-request-id": "text-died"})
        assert status == 200 and "miner_failed_mid_stream" in text, text
        status, _, text = await post(api, {"messages": MESSAGES, "uids": [3]}, headers={"x-request-id": "lost"})
        assert status == 502 and "no_valid_answer" in text, text
        api.ctx.request_log.flush()
    (died,) = [x for x in lines if " | chat rid=died " in x]
    assert " status=failed_mid_stream code=miner_failed_mid_stream latency_ms=" in died, died
    (text_died,) = [x for x in lines if " | completions rid=text-died " in x]
    assert " status=failed_mid_stream code=miner_failed_mid_stream latency_ms=" in text_died, text_died
    (lost,) = [x for x in lines if " | chat rid=lost " in x]
    assert " status=error code=no_valid_answer latency_ms=" in lost, lost


async def test_a_stream_the_apis_own_shutdown_cuts_is_logged_shut_down(tmp_path: Path, lines: list[str]) -> None:
    """A restart (SIGTERM) cuts the streams still running once its grace is over; their lines said
    ``status=client_closed``, as if each caller had hung up, and an operator saw no sign that the restart had
    cut anyone. A caller that does hang up is still ``client_closed`` (the test above)."""
    slow = Script([(0, d) for d in sse(chunk("Hel"), done=False)] + [(30.0, b"")])
    async with aiohttp.ClientSession() as s:
        async with api_with_miners(tmp_path, {3: slow}) as api:
            r = await s.post(api.url + "/v1/chat/completions", json={"messages": MESSAGES, "uids": [3], "stream": True},
                             headers={"Authorization": f"Bearer {api.key}", "x-request-id": "cut"})
            await r.content.readany()  # the stream has begun; the API stops under it
            reading = asyncio.create_task(r.content.read())
        with contextlib.suppress(aiohttp.ClientError):
            await reading
        r.release()
    (line,) = [x for x in lines if " | chat rid=cut " in x]
    assert " winner=3 " in line and " status=shut_down " in line, line


async def test_a_caller_that_hangs_up_while_the_api_stops_is_still_client_closed(tmp_path: Path,
                                                                                 lines: list[str]) -> None:
    """A caller that hangs up in the stop's grace left on its own, the stop cut nothing: its line said
    ``status=shut_down``, as every request cancelled once the stop began did."""
    slow = Script([(0, d) for d in sse(chunk("Hel"), done=False)] + [(30.0, b"")])
    serving = api_with_miners(tmp_path, {3: slow})
    api = await serving.__aenter__()
    stopping = None
    try:
        async with aiohttp.ClientSession() as s:
            r = await s.post(api.url + "/v1/chat/completions", json={"messages": MESSAGES, "uids": [3], "stream": True},
                             headers={"Authorization": f"Bearer {api.key}", "x-request-id": "left"})
            await r.content.readany()  # the stream has begun; the API begins to stop
            stopping = asyncio.create_task(serving.__aexit__(None, None, None))
            for _ in range(500):
                if api.ctx.stopping:
                    break
                await asyncio.sleep(0.01)
            r.close()  # the caller hangs up, within the grace
    finally:
        await (stopping or serving.__aexit__(None, None, None))
    (line,) = [x for x in lines if " | chat rid=left " in x]
    assert " winner=3 " in line and " status=client_closed " in line, line

async def test_a_web_retrieval_every_miner_failed_is_logged_with_its_502(tmp_path: Path, lines: list[str]) -> None:
    async with api_with_miners(tmp_path, {2: Script([], status=500)}) as api:
        async with aiohttp.ClientSession() as s:
            async with s.get(api.url + "/web_retrieval?search_query=x&uids=2",
                             headers={"Authorization": f"Bearer {api.key}", "x-request-id": "web-fail"}) as r:
                assert r.status == 502 and r.headers["x-request-id"] == "web-fail"
        api.ctx.request_log.flush()
    (line,) = [x for x in lines if " | web_retrieval rid=web-fail " in x]
    assert " uids=[2] results=0 status=502 latency_ms=" in line, line


async def test_a_client_request_id_is_taken_as_the_request_id(tmp_path: Path, lines: list[str]) -> None:
    """OpenAI takes a caller's own id in ``X-Client-Request-Id``; it was ignored, so a caller that sent it found
    nothing of it in the log. Without an ``x-request-id`` it is the request's id (checked as that one is), sent
    back in ``x-request-id``, logged and passed to the miners."""
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        for sent, expect in (({"X-Client-Request-Id": "client-7"}, "client-7"),
                             ({"X-Client-Request-Id": "client-8", "x-request-id": "mine"}, "mine")):
            status, headers, text = await post(api, {"messages": MESSAGES, "uids": [1]}, headers=sent)
            assert status == 200 and CIMultiDict(headers)["x-request-id"] == expect, text
        status, headers, _ = await post(api, {"messages": MESSAGES, "uids": [1]},
                                        headers={"X-Client-Request-Id": "a b=c"})
        assert status == 200 and CIMultiDict(headers)["x-request-id"] != "a b=c", "not an id: a new one"
        api.ctx.request_log.flush()
    assert [x for x in chat_lines(lines) if " | chat rid=client-7 " in x]
    assert [x for x in chat_lines(lines) if " | chat rid=mine " in x]


async def test_a_request_id_sent_twice_with_two_values_is_a_400_naming_the_header(tmp_path: Path,
                                                                                 lines: list[str]) -> None:
    """Two ``x-request-id`` headers (a client's own beside a proxy's) named two ids, and the first was taken in
    silence: the caller could log the other and find nothing of its request. A 400 ``duplicate_header`` whose
    ``param`` names the header, on every route, before the key is read (not charged), with a new id of its own; the
    same value twice is that id, as for the key headers and ``x-session-id``."""
    scripts = {1: Script([(0, d) for d in sse(chunk("hi"), chunk(finish="stop"))])}
    async with api_with_miners(tmp_path, scripts) as api, aiohttp.ClientSession() as s:
        for name in ("x-request-id", "X-Client-Request-Id"):
            for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
                headers = [("Authorization", f"Bearer {api.key}"), (name, "mine-1"), (name, "mine-2")]
                async with s.request(method, api.url + path, headers=headers,
                                     json={"messages": MESSAGES} if method == "POST" else None) as r:
                    err, rid = await r.json(), r.headers["x-request-id"]
                    assert r.status == 400 and "x-ratelimit-remaining-requests" not in r.headers, (name, path, err)
                assert err["error"] == {"message": f"The {name} header was sent 2 times with different values: send "
                                                   "it once.", "type": "invalid_request_error",
                                        "code": "duplicate_header", "param": name}, err
                assert rid not in ("mine-1", "mine-2"), "an id of its own, not one of the two"
                api.ctx.request_log.flush()
                assert [x for x in lines if f" rid={rid} " in x and "status=400 code=duplicate_header" in x], lines
        assert scripts[1].calls == 0, "no miner was asked"
        same = [("Authorization", f"Bearer {api.key}"), ("x-request-id", "same"), ("x-request-id", "same")]
        async with s.post(api.url + "/v1/chat/completions", json={"messages": MESSAGES}, headers=same) as r:
            assert r.status == 200 and r.headers["x-request-id"] == "same", await r.text()
        assert CIMultiDict(scripts[1].headers[-1])["x-request-id"] == "same"


async def test_every_miner_down_at_the_last_poll_is_a_503_and_a_warning(tmp_path: Path) -> None:
    """The validator's last poll found every miner down: each request was a 404 model_not_found, logged at INFO
    alone, as if callers asked for a model nobody serves."""
    import time

    from api.availability import AvailabilityCache

    said: list[tuple[str, str]] = []
    sink = logger.add(lambda m: said.append((m.record["level"].name, m.record["message"])), level="INFO")
    try:
        async with api_with_miners(tmp_path, {}, honest={1, 2}) as api:
            cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", "5unused")
            cache.entries, cache.refreshed_at = {1: None, 2: None}, time.monotonic()
            api.ctx.availability = cache
            for i in range(3):
                status, _, text = await post(api, {"model": "sn1/deterministic", "messages": MESSAGES},
                                             headers={"x-request-id": f"down-{i}"})
                assert status == 503 and '"no_miners_available"' in text, text
    finally:
        logger.remove(sink)
    told = [(level, m) for level, m in said if m.removeprefix("recovered: ").startswith("requests failing")]
    assert len(told) == 1 and told[0][0] == "WARNING", told
    assert "rid=down-0 answered HTTP 503 no_miners_available: No miner is available: none of the 2" in told[0][1]


async def test_no_line_is_built_when_the_access_log_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``LOG_LEVEL=WARNING`` wrote no line, yet each request still built one (an f-string and its fields) on the
    hot path, to be dropped."""
    import api.chat

    def built(*_: object, **__: object) -> str:
        raise AssertionError("the line was built with the access log off")

    monkeypatch.setattr(api.chat, "answer_line", built)
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        api.ctx.request_log.enabled = False
        for stream in (False, True):
            status, _, text = await post(api, {"messages": MESSAGES, "uids": [1], "stream": stream})
            assert status == 200, text


async def test_a_mixture_whose_first_stage_fails_names_the_miners_that_failed(tmp_path: Path,
                                                                             lines: list[str]) -> None:
    """A mixture request none of whose miners gave a first-stage answer was logged by the middleware alone
    (``status=502 code=no_valid_answer``): never which miners were asked nor why each failed, as a plain race's
    line says (``failed=1:http_5xx``); and a Responses request cut and asked again (``truncation: "auto"``) lost
    that attempt's line altogether. Its line is the race's now, once."""
    scripts = {1: Script([], status=500), 2: Script([], status=500)}
    async with api_with_miners(tmp_path, scripts) as api:
        status, _, text = await post(api, {"messages": MESSAGES, "mixture": True}, headers={"x-request-id": "mix-1"})
        assert status == 502, text
        await asyncio.sleep(0.3)  # the access log's flush interval
    logged = [line for line in chat_lines(lines) if " rid=mix-1 " in line]
    assert len(logged) == 1, logged
    assert " winner=None stream=False mixture=True status=error " in logged[0], logged
    failed = logged[0].rsplit(" failed=", 1)[-1]
    assert sorted(failed.split(",")) == ["1:http_5xx", "2:http_5xx"], logged
