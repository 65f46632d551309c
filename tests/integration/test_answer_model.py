"""The ``model`` of an answer is the model the caller asked for, whatever the miner's answer says.

A miner is untrusted and its model server names the model in every chunk: relayed as it came, a miner asked for
model X could answer "model Y" (or a 1 MB name, or one with a line break) in the caller's answer. The caller now
gets the model the request named (or its session's), as OpenAI names the model a request was served by; the
validator scores the answer against the model asked for, never the one a miner names. A request for any model
gets the miner's name for it, when it is a name (a miner's answer naming something else fails the miner).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import Script, api_with_miners, chunk, post, sse

ASKED = "big/model-x"


def claiming(model: str, *, after: float = 0.0) -> Script:
    """A miner whose answer names ``model``, its first chunk ``after`` seconds in."""
    steps = sse(chunk("Hello", model=model), chunk(" there", model=model), chunk(finish="stop", model=model))
    return Script(steps=[(after if i == 0 else 0, s) for i, s in enumerate(steps)])


def models_in(stream: str) -> list[str]:
    """The ``model`` of every chunk of an SSE answer."""
    return [json.loads(line[6:])["model"] for line in stream.splitlines()
            if line.startswith("data: {")]


@pytest.mark.parametrize("stream", [False, True])
async def test_the_answer_names_the_model_asked_for_not_the_miners_claim(tmp_path: Path, stream: bool) -> None:
    async with api_with_miners(tmp_path, {1: claiming("cheap/model-y")}) as api:
        status, _, raw = await post(api, {"model": ASKED, "messages": [{"role": "user", "content": "hi"}],
                                          "stream": stream, "stream_options": {"include_usage": True} if stream
                                          else None})
    assert status == 200, raw
    if stream:
        models = models_in(raw)
        assert len(models) >= 4 and set(models) == {ASKED}, models  # the usage chunk the API adds too
    else:
        assert json.loads(raw)["model"] == ASKED


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_for_any_model_gets_the_model_the_miner_names(tmp_path: Path, stream: bool) -> None:
    async with api_with_miners(tmp_path, {1: claiming("cheap/model-y")}) as api:
        status, _, raw = await post(api, {"messages": [{"role": "user", "content": "hi"}], "stream": stream})
    assert status == 200, raw
    assert (set(models_in(raw)) if stream else {json.loads(raw)["model"]}) == {"cheap/model-y"}


@pytest.mark.parametrize("claim", ["x" * 5000, "evil\nINFO forged log line"])
async def test_an_answer_naming_no_model_name_fails_the_miner(tmp_path: Path, claim: str) -> None:
    """Asked for any model, the miner's name for it reaches the caller: a 5,000-character one or one with a line
    break is no name, and the answer is the miner's failure (the other, slower, miner answers)."""
    async with api_with_miners(tmp_path, {1: claiming(claim), 2: claiming("fine/model", after=0.3)}) as api:
        for stream in (False, True):
            status, headers, raw = await post(api, {"messages": [{"role": "user", "content": "hi"}],
                                                    "stream": stream, "uids": [1, 2]})
            assert status == 200, raw
            assert headers["x-sn1-miner-uid"] == "2" and claim not in raw
