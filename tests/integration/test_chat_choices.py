"""``n`` > 1 on chat completions: n choices, each the winner of its own race, streamed or not."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.helpers import Script, api_with_miners, chunk, openai_client, post, sse

HONEST = {1, 2, 3}
MESSAGES = [{"role": "user", "content": "Name a river."}]


async def test_n_choices_each_answered_and_choice_0_is_the_n_1_answer(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        client = openai_client(api)
        many = await client.chat.completions.create(model="default", messages=MESSAGES, n=3, seed=7)
        one = await client.chat.completions.create(model="default", messages=MESSAGES, seed=7)
    assert [c.index for c in many.choices] == [0, 1, 2]
    texts = [c.message.content for c in many.choices]
    assert all(texts) and len(set(texts)) == 3, "each choice has its own seed, so its own answer"
    assert texts[0] == one.choices[0].message.content
    assert all(c.finish_reason for c in many.choices)
    assert many.usage.prompt_tokens == one.usage.prompt_tokens, "the prompt is counted once"
    assert many.usage.completion_tokens > one.usage.completion_tokens


async def test_streamed_choices_interleave_under_one_id_with_one_usage_chunk(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        client = openai_client(api)
        chunks = [c async for c in await client.chat.completions.create(
            model="default", messages=MESSAGES, n=2, seed=7, stream=True, stream_options={"include_usage": True})]
        whole = await client.chat.completions.create(model="default", messages=MESSAGES, n=2, seed=7)
    assert len({c.id for c in chunks}) == 1
    texts: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {i: ch.message.content for i, ch in enumerate(whole.choices)}
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].usage is not None and not chunks[-1].choices
    assert usage[0].completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize(("extra", "says"), [
    ({"n": 9}, "Expected a value <= 8"),
    ({"n": 2, "inference_mode": "Mixture-of-Agents"}, "mixture"),
    ({"n": 2, "session_id": "s"}, "session_id"),
])
async def test_what_n_cannot_do_is_a_400_naming_n(tmp_path: Path, extra: dict, says: str) -> None:
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        with pytest.raises(openai.BadRequestError) as err:
            await openai_client(api).chat.completions.create(model="default", messages=MESSAGES, extra_body=extra)
    assert err.value.body["param"] == "n" and says in err.value.body["message"]


async def test_a_choice_no_miner_answers_fails_the_request(tmp_path: Path) -> None:
    """All or nothing, as at OpenAI: one miner that always fails, so every race fails."""
    async with api_with_miners(tmp_path, {1: Script([], status=500)}) as api:
        with pytest.raises(openai.APIStatusError) as err:
            await openai_client(api).chat.completions.create(model="default", messages=MESSAGES, n=2)
    assert err.value.status_code == 502 and err.value.body["code"] == "no_valid_answer"


async def test_a_seed_at_the_top_of_its_range_wraps_for_the_next_choices(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        client = openai_client(api)
        top = await client.chat.completions.create(model="default", messages=MESSAGES, n=2, seed=2**63 - 1)
        bottom = await client.chat.completions.create(model="default", messages=MESSAGES, seed=-(2**63))
    assert top.choices[1].message.content == bottom.choices[0].message.content


def _slow_miner() -> Script:
    """A model streaming as real ones do: chunks apart in time, its usage in the last one."""
    steps = [(0.0, sse(chunk("Hello"))[0])]
    steps += [(0.02, b) for b in sse(*[chunk(" word") for _ in range(10)],
                                     chunk(None, finish="stop", usage={"prompt_tokens": 7, "completion_tokens": 11,
                                                                       "total_tokens": 18}))]
    return Script(steps=steps)


@pytest.mark.parametrize(("path", "asked"), [
    ("/v1/chat/completions", {"messages": MESSAGES, "n": 2}),
    ("/v1/completions", {"prompt": "Name a river.", "n": 2}),
], ids=["chat-n2", "completions-n2"])
async def test_streamed_choices_report_and_charge_the_usage_the_miners_sent_at_the_end(
        tmp_path: Path, path: str, asked: dict) -> None:
    """The usage was taken when the winners were known, before their streams were relayed: the
    miners' counts (in their last chunks) were missed, and a rough estimate of the first chunk was
    reported and charged, so a streaming key spent far less than it used of its daily limit."""
    async with api_with_miners(tmp_path, {1: _slow_miner(), 2: _slow_miner()}) as api:
        key_id = (await api.ctx.store.list_keys())[0].id
        status, _, text = await post(api, {**asked, "stream": True, "stream_options": {"include_usage": True}},
                                     path=path)
        assert status == 200, text
        await api.ctx.usage.flush()
        charged = await api.ctx.usage.tokens_today(key_id)
    usages = [u for line in text.splitlines() if line.startswith("data: {")
              and (u := json.loads(line[6:]).get("usage"))]
    assert usages == [{"prompt_tokens": 7, "completion_tokens": 22, "total_tokens": 29}], usages
    assert charged == 29
