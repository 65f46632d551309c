"""A mixture of miners against real miners (honest and fault-injecting) behind the real API.

What the caller gets when one of the mixture's miners fails, and what the request's INFO line says of it."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.chaos.fleet import HONEST, MESSAGES, chat, fleet
from tests.helpers import AnswersOnce, Script, api_with_miners, chunk, info_lines, post, sse


@pytest.fixture
def lines() -> Iterator[list[str]]:
    with info_lines() as out:
        yield out


def api_line(lines: list[str]) -> str:
    found = [line for line in lines if " | api | chat rid=" in line and " mixture=True " in line]
    assert len(found) == 1, lines
    return found[0]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_line_of_a_mixture_names_every_miner_asked_and_why_one_failed(tmp_path: Path, lines: list[str],
                                                                               stream: bool) -> None:
    """A mixture's INFO line named the final miner alone (``uids=[1]``): never the first stage's miners, nor
    the one that failed it (``failed=3:http_5xx``), which a plain request's line says."""
    async with fleet(tmp_path, {1: HONEST, 2: HONEST, 3: "http500"}) as f, aiohttp.ClientSession() as s:
        reply = await chat(s, f, {"model": "default", "messages": MESSAGES, "mixture": True, "stream": stream})
        assert reply.status == 200, reply.text
        await asyncio.sleep(0.3)  # the access log's flush interval
    assert sorted(reply.headers["x-sn1-mixture-uids"].split(",")) == ["1", "2"]
    line = api_line(lines)
    uids = re.search(r" uids=\[([\d,]*)\] ", line)
    assert uids and sorted(uids.group(1).split(",")) == ["1", "2", "3"], line
    assert f" winner={reply.headers['x-sn1-miner-uid']} " in line and line.endswith(" failed=3:http_5xx"), line


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_failed_synthesis_goes_to_the_next_miner_that_answered(tmp_path: Path, lines: list[str],
                                                                      stream: bool) -> None:
    """The top miner answered the first stage and then failed the synthesis: the caller got a 502 though two
    valid answers were in hand and an honest miner that had given one was idle."""
    top = AnswersOnce([(0, d) for d in sse(chunk("first view"), chunk(finish="stop"))])
    async with api_with_miners(tmp_path, {1: top}, honest={2, 3}, incentives={1: 0.8, 2: 0.15, 3: 0.05}) as api:
        status, headers, text = await post(api, {"messages": MESSAGES, "mixture": True, "stream": stream})
        await asyncio.sleep(0.3)
    assert status == 200, text
    assert headers["x-sn1-miner-uid"] == "2", "the top-incentive miner among those left that answered stage one"
    assert sorted(headers["x-sn1-mixture-uids"].split(",")) == ["1", "2", "3"]
    assert top.calls == 2
    line = api_line(lines)
    assert " winner=2 " in line and " status=ok " in line and line.endswith(" failed=1:http_5xx"), line


async def test_a_mixture_refuses_a_named_session_and_says_it_bypassed_the_keys(tmp_path: Path) -> None:
    """A session named with a mixture (``session_id`` or ``x-session-id``) was ignored in silence, even one that
    does not exist: the caller asked for its pinned miner and got a mixture of others. It is a 400 naming it now,
    as with ``n`` > 1; the key's own session (not named) is bypassed, and the answer's ``x-sn1-session-bypassed``
    says so, as an ``n`` > 1 answer's does."""
    async with api_with_miners(tmp_path, {}, honest={1, 2, 3}) as api:
        for sent, headers, param in (({"session_id": "no-such-session"}, {}, "session_id"),
                                     ({}, {"x-session-id": "no-such-session"}, "x-session-id")):
            status, _, text = await post(api, {"messages": MESSAGES, "mixture": True, **sent}, headers=headers)
            assert status == 400, text
            err = json_error(text)
            assert (err["code"], err["param"]) == ("unsupported_parameter", param), err
        async with aiohttp.ClientSession() as http, http.post(api.url + "/v1/sessions", json={"model": "default"},
                                                              headers={"api-key": api.key}) as r:
            session = await r.json()
            assert r.status == 200, session
        for stream in (False, True):
            status, headers, text = await post(api, {"messages": MESSAGES, "mixture": True, "stream": stream})
            assert status == 200, text
            assert headers["x-sn1-session-bypassed"] == session["session_id"] and "x-sn1-session-id" not in headers


def json_error(text: str) -> dict:
    return json.loads(text)["error"]


async def test_a_caller_that_leaves_during_the_first_stage_stops_its_miners_and_leaves_the_mixtures_line(
        tmp_path: Path, lines: list[str]) -> None:
    """A caller that hung up while the first stage waited for a stalled miner left only the middleware's line
    (``status=499 code=client_closed_request``): not which miners were asked, nor that it was a mixture, as a plain
    request's ``status=client_closed`` line says. Its miner requests are stopped, as a plain request's are."""
    async with fleet(tmp_path, {1: HONEST, 2: "stall-headers", 3: "stall-mid"}, request_timeout=6.0) as f, \
            aiohttp.ClientSession() as s:
        with pytest.raises(asyncio.TimeoutError):
            await chat(s, f, {"model": "default", "messages": MESSAGES, "mixture": True}, limit=0.5)
        await asyncio.sleep(0.4)
        assert f.in_flight() == 0 and [f.stats[u].cancelled for u in (2, 3)] == [1, 1]
    line = api_line(lines)
    uids = re.search(r" uids=\[([\d,]*)\] ", line)
    assert uids and sorted(uids.group(1).split(",")) == ["1", "2", "3"], line
    assert " winner=None stream=False mixture=True status=client_closed " in line, line


class OverflowsOnSynthesis(AnswersOnce):
    """A miner that answers the first stage, then refuses the synthesis as its model server refuses an input
    longer than its context: the conversation and every first-stage answer in one prompt."""

    later_status = 400


async def test_a_synthesis_too_long_for_the_final_model_is_not_told_as_the_callers_messages(tmp_path: Path) -> None:
    """The synthesis prompt (the conversation and the first stage's answers) overflowed the final miner's context:
    the caller got OpenAI's ``400 context_length_exceeded`` naming ``messages`` ("reduce the length of the
    messages"), on which agent frameworks trim their history, though its messages fit (the first stage answered
    them). It is a 400 ``model_server_rejected`` saying what overflowed and what to do."""
    top = OverflowsOnSynthesis([(0, d) for d in sse(chunk("first view"), chunk(finish="stop"))],
                               error_code="model_server_rejected",  # how a miner passes its model server's 400 on
                               error_message="This model's maximum context length is 4096 tokens.")
    async with api_with_miners(tmp_path, {1: top}, honest={2}, incentives={1: 0.9, 2: 0.1}) as api:
        status, _, text = await post(api, {"messages": MESSAGES, "mixture": True})
    err = json_error(text)
    assert (status, err["code"], err["param"]) == (400, "model_server_rejected", None), text
    assert err["message"].startswith("Mixture, final stage: the synthesis of 2 answers "), err
    assert "max_tokens" in err["message"] and "maximum context length is 4096" in err["message"], err


class OneSystemMessage(Script):
    """A miner whose model's chat template takes one system message, the first (Mistral's: vLLM refuses any other
    with a 400 its miner passes on as ``model_server_rejected``)."""

    @property
    def status(self) -> int:
        messages = (self.bodies[-1] or {}).get("messages") or [] if self.bodies else []
        return 400 if any(m.get("role") == "system" for m in messages[1:]) else 200

    @status.setter
    def status(self, _: int) -> None:
        pass


@pytest.mark.parametrize("content", ["Answer in French.", [{"type": "text", "text": "Answer in French."}]],
                         ids=["text", "parts"])
async def test_a_conversation_with_a_system_message_gets_one_system_message_in_its_synthesis(
        tmp_path: Path, content: str | list) -> None:
    """The synthesis instruction was a system message put before the caller's own: two system messages, which a
    chat template taking one (Mistral's) refuses, so every mixture with a system prompt on such a model was a 400
    ``model_server_rejected``. The instruction now follows the caller's system message, in it (as the original
    Mixture-of-Agents does)."""
    views = {uid: sse(chunk(f"view {uid}"), chunk(finish="stop")) for uid in (1, 2)}
    scripts = {uid: OneSystemMessage([(0, d) for d in views[uid]], error_code="model_server_rejected",
                                     error_message="After the optional system message, conversation roles must "
                                                   "alternate user/assistant/user/assistant/...") for uid in (1, 2)}
    messages = [{"role": "system", "content": content}, *MESSAGES]
    async with api_with_miners(tmp_path, scripts, incentives={1: 0.9, 2: 0.1}) as api:
        status, _, text = await post(api, {"messages": messages, "mixture": True})
    assert status == 200, text
    sent = scripts[1].bodies[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"] and sent[1:] == MESSAGES, sent
    system = sent[0]["content"] if isinstance(content, str) else "".join(p["text"] for p in sent[0]["content"])
    assert system.startswith("Answer in French.") and "view 1" in system and "view 2" in system, system
