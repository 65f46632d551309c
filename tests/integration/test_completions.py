"""``POST /v1/completions`` through the real API app and real deterministic miners, with the OpenAI
SDK: each prompt answered as one user message, batches and ``n``, streaming, ``echo``, ``logprobs``,
and a 400 naming the field for what a chat model cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.helpers import Script, api_with_miners, call, chunk, openai_client, post, sse

HONEST = {1, 2, 3}


async def test_a_prompt_is_answered_as_one_user_message(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        client = openai_client(api)
        done = await client.completions.create(model="default", prompt="Name a river.", seed=5, max_tokens=40)
        chat = await client.chat.completions.create(model="default", seed=5, max_tokens=40,
                                                    messages=[{"role": "user", "content": "Name a river."}])
        short = await client.completions.create(model="default", prompt="Name a river.", seed=5)
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    (choice,) = done.choices
    assert choice.index == 0 and choice.text == chat.choices[0].message.content and choice.logprobs is None
    assert choice.finish_reason == chat.choices[0].finish_reason
    assert done.usage.prompt_tokens == chat.usage.prompt_tokens
    assert done.usage.completion_tokens == chat.usage.completion_tokens
    # OpenAI's default for this route is 16 tokens
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 16


async def test_a_batch_of_prompts_times_n_in_order_each_as_if_asked_alone(tmp_path: Path) -> None:
    prompts = ["Name a river.", "Name a mountain."]
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        client = openai_client(api)
        batch = await client.completions.create(model="default", prompt=prompts, n=2, seed=9, max_tokens=20)
        alone = [await client.completions.create(model="default", prompt=p, seed=9 + j, max_tokens=20)
                 for p in prompts for j in range(2)]
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert [c.text for c in batch.choices] == [a.choices[0].text for a in alone], "prompt i's choice j: seed + j"
    assert len({c.text for c in batch.choices}) == 4
    # each prompt counted once, every completion counted
    assert batch.usage.prompt_tokens == alone[0].usage.prompt_tokens + alone[2].usage.prompt_tokens
    assert batch.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)


async def test_streamed_choices_add_up_to_the_whole_answer(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        client = openai_client(api)
        fields = {"model": "default", "prompt": ["Name a river.", "Hi"], "seed": 4, "max_tokens": 30}
        whole = await client.completions.create(**fields)
        chunks = [c async for c in await client.completions.create(
            **fields, stream=True, stream_options={"include_usage": True})]
        plain = [c async for c in await client.completions.create(**fields, stream=True)]
    assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert finished == {c.index: c.finish_reason for c in whole.choices}
    assert chunks[-1].usage is not None and not chunks[-1].choices, "usage comes last, once"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in plain), "no usage chunk unless asked for"


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_echo_puts_the_prompt_before_the_answer(tmp_path: Path, stream: bool) -> None:
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        client = openai_client(api)
        plain = await client.completions.create(model="default", prompt="Say hi.", seed=2)
        if stream:
            text = "".join([ch.text async for c in await client.completions.create(
                model="default", prompt="Say hi.", seed=2, echo=True, stream=True) for ch in c.choices])
        else:
            text = (await client.completions.create(model="default", prompt="Say hi.", seed=2, echo=True)).choices[0].text
    assert text == "Say hi." + plain.choices[0].text


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_logprobs_in_the_completions_shape(tmp_path: Path, stream: bool) -> None:
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        client = openai_client(api)
        fields = {"model": "default", "prompt": "Name a river.", "seed": 3, "logprobs": 2, "max_tokens": 12}
        if stream:
            parts = [ch async for c in await client.completions.create(**fields, stream=True) for ch in c.choices]
            text = "".join(p.text for p in parts)
            tokens, offsets, tops, lps = [], [], [], []
            for p in parts:
                if p.logprobs is not None:
                    tokens += p.logprobs.tokens
                    offsets += p.logprobs.text_offset
                    tops += p.logprobs.top_logprobs
                    lps += p.logprobs.token_logprobs
        else:
            (choice,) = (await client.completions.create(**fields)).choices
            text, lp = choice.text, choice.logprobs
            tokens, offsets, tops, lps = lp.tokens, lp.text_offset, lp.top_logprobs, lp.token_logprobs
    assert "".join(tokens) == text and len(tokens) == len(offsets) == len(tops) == len(lps) > 0
    assert offsets == [len("".join(tokens[:i])) for i in range(len(tokens))], "offsets run over the whole text"
    assert all(t in top and len(top) <= 3 and top[t] == lp for t, top, lp in zip(tokens, tops, lps, strict=True))


@pytest.mark.parametrize(("extra", "param", "says"), [
    # lm-evaluation-harness's local-completions sends token ids by default: the 400 says how to send text
    ({"prompt": [1, 2, 3]}, "prompt", "token ids are not served here (they need the model's tokenizer, and the "
                                      "miners' models differ): send the text (lm-evaluation-harness: "
                                      "tokenized_requests=False)"),
    ({"prompt": [[1, 2], [3]]}, "prompt", "send the text (lm-evaluation-harness: tokenized_requests=False)"),
    ({"prompt": []}, "prompt", "at least one"),
    ({"prompt": 5}, "prompt", ""),
    ({"suffix": "return x"}, "suffix", "fill-in-the-middle"),
    ({"echo": True, "logprobs": 1}, "echo", "loglikelihood"),
    ({"best_of": 3}, "best_of", "best_of"),
    ({"prompt": ["a"] * 3, "n": 3}, "n", "at most 8"),
    ({"prompt": ["a"] * 9}, "prompt", "at most 8"),  # LangChain's batch of 20: the prompts are the field to cut
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "maximum length 4"),
    ({"logprobs": 6}, "logprobs", ""),
    ({"max_tokens": "5"}, "max_tokens", ""),
    ({"uids": [99]}, "uids", "Unknown uid 99"),
    # chat completions' own: refused, not dropped (and not mistaken for n > 1)
    ({"session_id": "sess-1"}, "session_id", "/v1/chat/completions only"),
    ({"mixture": True}, "mixture", "/v1/chat/completions only"),
    ({"inference_mode": "mixture-of-miners"}, "inference_mode", "/v1/chat/completions only"),
    ({"sampling_parameters": {"mixture": True}}, "sampling_parameters.mixture", "/v1/chat/completions only"),
    # chat completions' fields, which would change the answer: refused, not dropped (a 16-token answer for
    # max_completion_tokens 200, prose for a JSON schema, no call for tools)
    ({"max_completion_tokens": 200}, "max_completion_tokens", "max_tokens"),
    ({"top_logprobs": 2}, "top_logprobs", "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format", "/v1/chat/completions"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "/v1/chat/completions"),
    ({"tool_choice": "required"}, "tool_choice", "/v1/chat/completions"),
    ({"functions": [{"name": "f"}]}, "functions", "/v1/chat/completions"),
    ({"web_search_options": {}}, "web_search_options", "/v1/chat/completions"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "/v1/chat/completions"),
])
async def test_what_a_chat_miner_cannot_do_is_a_400(tmp_path: Path, extra: dict, param: str | None,
                                                    says: str) -> None:
    scripts = {1: Script([(0, d) for d in sse(chunk("never"), chunk(finish="stop"))])}
    async with api_with_miners(tmp_path, scripts) as api:
        status, _, text = await post(api, {"model": "default", "prompt": "hi", **extra}, path="/v1/completions")
    error = json.loads(text)["error"]
    assert status == 400 and error["param"] == param and says in error["message"], error
    assert scripts[1].bodies == [], "no miner was asked"


async def test_no_valid_answer_is_the_sdks_typed_error(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {1: Script([], status=500)}) as api:
        with pytest.raises(openai.APIStatusError) as err:
            await openai_client(api).completions.create(model="default", prompt="hi")
    assert err.value.status_code == 502 and err.value.body["code"] == "no_valid_answer"


async def test_the_miners_get_a_chat_request_with_the_sampling_asked_for(tmp_path: Path) -> None:
    scripts = {1: Script([(0, d) for d in sse(chunk("ok"), chunk(finish="stop"))])}
    async with api_with_miners(tmp_path, scripts) as api:
        r = await openai_client(api).completions.create(model="default", prompt="Once upon", temperature=0.3, stop=["\n"],
                                              max_tokens=7, seed=11, user="u1",
                                              extra_body={"uids": [1], "sampling_parameters": {"top_k": 5}})
    assert r.choices[0].text == "ok"
    (body,) = scripts[1].bodies
    assert body["messages"] == [{"role": "user", "content": "Once upon"}]
    assert {k: body[k] for k in ("temperature", "stop", "max_tokens", "seed", "user", "sampling_parameters")} == {
        "temperature": 0.3, "stop": ["\n"], "max_tokens": 7, "seed": 11, "user": "u1",
        "sampling_parameters": {"top_k": 5}}
    assert "prompt" not in body and "uids" not in body


@pytest.mark.parametrize(("path", "body", "param", "says"), [
    ("/v1/completions", {"messages": [{"role": "user", "content": "hi"}]}, "prompt", "/v1/chat/completions"),
    ("/v1/chat/completions", {"prompt": "hi"}, "messages", "/v1/completions"),
    ("/v1/chat/completions", {"input": "hi"}, "messages", "/v1/responses"),
    ("/v1/responses", {"messages": [{"role": "user", "content": "hi"}]}, "input", "/v1/chat/completions"),
    ("/v1/responses", {"prompt": {"id": "pmpt_1"}}, "input", "Missing required parameter: 'input'."),  # the Responses API's own prompt
])
async def test_a_body_for_another_route_is_told_where_it_goes(tmp_path: Path, path: str, body: dict, param: str,
                                                              says: str) -> None:
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        status, _, text = await post(api, {"model": "default", **body}, path=path)
    error = json.loads(text)["error"]
    assert status == 400 and error["param"] == param and says in error["message"], error


async def test_sampling_parameters_max_new_tokens_is_the_limit_when_max_tokens_is_not_sent(tmp_path: Path) -> None:
    """The subnet's ``sampling_parameters`` fill what the OpenAI fields leave unset, as on chat completions: OpenAI's
    default of 16 is the limit only when neither sets one (it was always sent, and max_new_tokens never counted)."""
    sampling = {"sampling_parameters": {"max_new_tokens": 40}}
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        client = openai_client(api)
        done = await client.completions.create(model="default", prompt="Name a river.", seed=5, extra_body=sampling)
        chat = await client.chat.completions.create(model="default", seed=5, extra_body=sampling,
                                                    messages=[{"role": "user", "content": "Name a river."}])
        capped = await client.completions.create(model="default", prompt="Name a river.", seed=5, max_tokens=6,
                                                 extra_body=sampling)
    assert done.usage.completion_tokens == chat.usage.completion_tokens > 16
    assert done.choices[0].text == chat.choices[0].message.content
    assert capped.usage.completion_tokens == 6 and capped.choices[0].finish_reason == "length", "max_tokens wins"


async def test_chat_fields_that_change_nothing_are_accepted(tmp_path: Path) -> None:
    """What a chat client sends by default, with no effect on a text answer (no tools, plain text), is not
    refused with the fields that would change it."""
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        done = await openai_client(api).completions.create(
            model="default", prompt="Name a river.", extra_body={
                "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "top_logprobs": None,
                "parallel_tool_calls": False, "metadata": {"run": "1"}})
    assert done.choices[0].text


def _sampled(text: str, logprob: float, top: dict[str, float]) -> str:
    """A chat chunk of one token ``text`` sampled with ``logprob``, the model's most likely tokens ``top``."""
    obj = json.loads(chunk(text))
    obj["choices"][0]["logprobs"] = {"content": [{"token": text, "logprob": logprob, "bytes": None, "top_logprobs": [
        {"token": t, "logprob": lp, "bytes": None} for t, lp in top.items()]}]}
    return json.dumps(obj)


async def _top_logprobs(api, stream: bool, **fields) -> tuple[list[str], list[float | None], list[dict]]:
    """The tokens, their log probabilities and their top_logprobs of a one-prompt completion, streamed or not."""
    client = openai_client(api)
    if not stream:
        lp = (await client.completions.create(model="default", prompt="Hi", seed=3, **fields)).choices[0].logprobs
        return lp.tokens, lp.token_logprobs, lp.top_logprobs
    tokens, lps, tops = [], [], []
    async for c in await client.completions.create(model="default", prompt="Hi", seed=3, stream=True, **fields):
        for choice in c.choices:
            if choice.logprobs is not None:
                tokens += choice.logprobs.tokens
                lps += choice.logprobs.token_logprobs
                tops += choice.logprobs.top_logprobs
    return tokens, lps, tops


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_top_logprobs_always_hold_the_sampled_token(tmp_path: Path, stream: bool) -> None:
    """OpenAI: "The API will always return the logprob of the sampled token, so there may be up to logprobs+1
    elements": with logprobs 0, each token's top_logprobs is the token alone (it was {}); a token sampled from
    outside the model's top ones is in its top_logprobs with them."""
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        tokens, lps, tops = await _top_logprobs(api, stream, logprobs=0, max_tokens=8)
    assert tokens and tops == [{t: lp} for t, lp in zip(tokens, lps, strict=True)]
    steps = sse(_sampled("Hey", -2.5, {"Hi": -0.1}), _sampled(" there", -0.2, {" there": -0.2}), chunk(finish="stop"))
    scripts = {1: Script([(0, d) for d in steps])}
    async with api_with_miners(tmp_path, scripts) as api:
        tokens, lps, tops = await _top_logprobs(api, stream, logprobs=1)
    assert tokens == ["Hey", " there"] and lps == [-2.5, -0.2]
    assert tops == [{"Hi": -0.1, "Hey": -2.5}, {" there": -0.2}]


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_the_model_servers_system_fingerprint_is_kept(tmp_path: Path, stream: bool) -> None:
    """``system_fingerprint`` (the backend configuration a ``seed`` reproduces on) comes back as on chat
    completions and OpenAI's Completions API; LangChain's ``OpenAI`` keeps it in its ``llm_output``."""
    def printed(data: str) -> str:
        return json.dumps(json.loads(data) | {"system_fingerprint": "fp_miner1"})

    scripts = {1: Script([(0, d) for d in sse(printed(chunk("Hello")), printed(chunk(finish="stop")))])}
    async with api_with_miners(tmp_path, scripts) as api:
        client = openai_client(api)
        if stream:
            chunks = [c async for c in await client.completions.create(model="default", prompt="Hi", stream=True)]
            assert chunks and {c.system_fingerprint for c in chunks} == {"fp_miner1"}
        else:
            done = await client.completions.create(model="default", prompt="Hi")
            assert done.choices[0].text == "Hello" and done.system_fingerprint == "fp_miner1"


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_a_refusal_is_the_text(tmp_path: Path, stream: bool) -> None:
    """A chat model that declines says so in ``refusal``, which a text completion has no field for: its words are
    the text (it was dropped: an empty text, finish_reason stop, and the refusal's tokens charged)."""
    declined = json.loads(chunk())
    declined["choices"][0]["delta"] = {"refusal": "I can't help with that."}
    scripts = {1: Script([(0, d) for d in sse(json.dumps(declined), chunk(finish="stop"))])}
    async with api_with_miners(tmp_path, scripts) as api:
        client = openai_client(api)
        if stream:
            text = "".join([ch.text async for c in await client.completions.create(
                model="default", prompt="Pick a lock.", stream=True) for ch in c.choices])
        else:
            text = (await client.completions.create(model="default", prompt="Pick a lock.")).choices[0].text
    assert text == "I can't help with that."


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_a_batch_is_charged_its_usage_once(tmp_path: Path, stream: bool) -> None:
    """A key's daily token limit is charged what the batch's usage says: each prompt once, every completion."""
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        key, _ = await api.ctx.store.create_key(100, daily_token_limit=10_000)
        client = openai_client(api, key)
        fields = {"model": "default", "prompt": ["Name a river.", "Name a hill."], "n": 2, "max_tokens": 9, "seed": 1}
        if stream:
            chunks = [c async for c in await client.completions.create(
                **fields, stream=True, stream_options={"include_usage": True})]
            usage = chunks[-1].usage
        else:
            usage = (await client.completions.create(**fields)).usage
        status, own = await call(api, "GET", "/v1/usage", key=key)
    assert usage.completion_tokens == 4 * 9 and status == 200
    assert own["totals"]["total_tokens"] == usage.total_tokens
    assert own["tokens_remaining_today"] == 10_000 - usage.total_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_keys_active_session_is_named_as_bypassed_not_skipped_in_silence(tmp_path: Path, stream: bool) -> None:
    """A key's session pins its chat completions; its text completions race (a batch or ``n`` is several races).
    They raced in silence: a caller who opened a session for its prompt cache had no word that its completions
    went elsewhere. The answer's ``x-sn1-session-bypassed`` names the session now, as chat's ``n`` > 1 does; not
    for another model than the session's, nor with ``uids`` (neither would run in the session on chat)."""
    async with api_with_miners(tmp_path, {}, honest=HONEST) as api:
        body = {"model": "default", "prompt": "Name a river.", "max_tokens": 5, "stream": stream}
        status, headers, _ = await post(api, body, path="/v1/completions")
        assert status == 200 and "x-sn1-session-bypassed" not in headers, "no session, nothing bypassed"
        status, session = await call(api, "POST", "/v1/sessions", {"model": "default"})
        assert status == 200, session
        status, headers, text = await post(api, body, path="/v1/completions")
        assert status == 200 and headers["x-sn1-session-bypassed"] == session["session_id"], (headers, text)
        assert "x-sn1-session-id" not in headers
        status, headers, _ = await post(api, body | {"uids": [1]}, path="/v1/completions")
        assert status == 200 and "x-sn1-session-bypassed" not in headers, "uids choose the miner: no session asked"
        status, current = await call(api, "GET", "/v1/sessions")
        assert status == 200 and current == session, "the session stays where it was"
