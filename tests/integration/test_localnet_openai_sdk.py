"""The OpenAI SDK against a real local subnet: the issue's "done when" flows."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import openai
import pytest


def client(info: dict, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=info["api_url"] + "/v1", api_key=info["api_key"], max_retries=0, timeout=30, **kw)


def test_non_streaming_completion(localnet: dict) -> None:
    resp = client(localnet).chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "Hello"}]
    )
    completion = resp.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "sn1/deterministic"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    uid = int(resp.headers["x-sn1-miner-uid"])
    assert uid in {m["uid"] for m in localnet["miners"]}
    assert resp.headers["x-request-id"]


def test_streaming_completion_with_api_key_header(localnet: dict) -> None:
    c = client(localnet, default_headers={"api-key": localnet["api_key"]})
    stream = c.chat.completions.create(
        model="sn1/deterministic", messages=[{"role": "user", "content": "Stream please"}], stream=True
    )
    pieces = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
    text = "".join(pieces)
    assert len([p for p in pieces if p]) > 3
    assert text.endswith(".")


def test_subnet_extras_and_seed_are_deterministic(localnet: dict) -> None:
    c = client(localnet)
    kwargs = dict(
        model="sn1/deterministic",
        messages=[{"role": "user", "content": "How are you?"}],
        temperature=0.7,
        seed=42,
        extra_body={"task": "InferenceTask", "sampling_parameters": {"mixture": False, "max_new_tokens": 256,
                                                                      "do_sample": True}},
    )
    first = c.chat.completions.create(**kwargs).choices[0].message.content
    second = c.chat.completions.create(**kwargs).choices[0].message.content
    other = c.chat.completions.create(**{**kwargs, "seed": 43}).choices[0].message.content
    assert first == second, "same messages + seed + sampling must give the same answer"
    assert first != other


def test_max_tokens_reaches_the_miner(localnet: dict) -> None:
    out = client(localnet).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "short"}], max_tokens=5
    )
    assert len(out.choices[0].message.content.split()) == 5
    assert out.choices[0].finish_reason == "length"


def test_stop_ends_the_answer_before_the_sequence(localnet: dict) -> None:
    c = client(localnet)
    kwargs = dict(model="default", seed=5, messages=[{"role": "user", "content": "Hello"}])
    full = c.chat.completions.create(**kwargs).choices[0].message.content
    stop = " " + full.split()[2]
    choice = c.chat.completions.create(**kwargs, stop=[stop]).choices[0]
    assert choice.message.content == full[: full.index(stop)] and choice.finish_reason == "stop"


def test_logprobs_come_in_openai_shape_and_agree_streamed_or_not(localnet: dict) -> None:
    c = client(localnet)
    kwargs = dict(model="default", seed=9, messages=[{"role": "user", "content": "Hello"}], logprobs=True,
                  top_logprobs=3)
    choice = c.chat.completions.create(**kwargs).choices[0]
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert t.logprob < 0 and bytes(t.bytes).decode() == t.token and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[1].logprob < t.logprob
    streamed = [t for ch in c.chat.completions.create(**kwargs, stream=True)
                if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in tokens]
    assert c.chat.completions.create(**{**kwargs, "logprobs": False, "top_logprobs": None}).choices[0].logprobs is None


def test_an_endpoint_this_api_lacks_is_a_404_naming_it(localnet: dict) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client(localnet).embeddings.create(model="default", input="hi")
    assert "Invalid URL (POST /v1/embeddings)" in e.value.message
    # OpenAI's stored chat completions: a 405 "use POST" read as if the listing existed, an untyped error
    with pytest.raises(openai.NotFoundError) as e:
        client(localnet).chat.completions.list()
    assert "Invalid URL (GET /v1/chat/completions)" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client(localnet).chat.completions.retrieve("chatcmpl-1")


def test_unknown_model_is_404_model_not_found(localnet: dict) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client(localnet).chat.completions.create(model="no/such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"


def test_unknown_uid_is_400(localnet: dict) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(localnet).chat.completions.create(model="default", messages=[{"role": "user", "content": "x"}],
                                                 extra_body={"uids": [999]})
    assert "999" in e.value.message


def test_bad_key_is_401(localnet: dict) -> None:
    c = openai.OpenAI(base_url=localnet["api_url"] + "/v1", api_key="sn1-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="default", messages=[{"role": "user", "content": "x"}])


def test_explicit_uid_answers_and_is_reported(localnet: dict) -> None:
    uid = localnet["miners"][1]["uid"]
    resp = client(localnet).chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "x"}], extra_body={"uids": [uid]}
    )
    assert resp.headers["x-sn1-miner-uid"] == str(uid)


def test_localnet_json_lists_everything(localnet: dict) -> None:
    with open(f"{localnet['dir']}/localnet.json") as f:
        data = json.load(f)
    assert set(data) >= {"api_url", "validator_url", "admin_key", "api_key", "miners"}
    assert all(set(m) >= {"uid", "hotkey", "url", "backend"} for m in data["miners"])
    for m in data["miners"]:
        with urllib.request.urlopen(m["url"] + "/health", timeout=5) as r:
            assert r.status == 200


def test_subnet_doc_example_async_streaming_with_mixture_on_and_off(localnet: dict) -> None:
    """The subnet doc's own example: AsyncOpenAI, api-key header, stream, extra_body with mixture."""
    import asyncio

    async def run(mixture: bool) -> str:
        headers = {"api-key": localnet["api_key"], "Content-Type": "application/json"}
        client = openai.AsyncOpenAI(
            base_url=localnet["api_url"] + "/v1", max_retries=0,
            timeout=openai.Timeout(30, connect=10, read=20),
            http_client=openai.DefaultAsyncHttpxClient(headers=headers), api_key=localnet["api_key"],
        )
        result = await client.chat.completions.create(
            model="sn1/deterministic", messages=[{"role": "user", "content": "How are you?"}], stream=True,
            temperature=0.7, seed=42, extra_headers=headers,
            extra_body={"task": "InferenceTask",
                        "sampling_parameters": {"mixture": mixture, "max_new_tokens": 256, "do_sample": True}},
        )
        text = "".join([c.choices[0].delta.content or "" async for c in result if c.choices])
        await client.close()
        return text

    plain, mixed = asyncio.run(run(False)), asyncio.run(run(True))
    assert plain and mixed
    assert plain != mixed, "the mixture answer is generated from a synthesis prompt, not the plain one"


def test_web_retrieval_returns_deduplicated_results_from_the_local_corpus(localnet: dict) -> None:
    """The README's curl: miners search the same offline corpus the validator verifies against."""
    from shared.corpus import BASE_URL, builtin_corpus
    from shared.urls import normalise_url

    doc = builtin_corpus().documents[0]
    query = urllib.parse.urlencode({"search_query": doc.title, "n_miners": 3, "n_results": 5})
    req = urllib.request.Request(f"{localnet['api_url']}/web_retrieval?{query}",
                                 headers={"api-key": localnet["api_key"]})
    with urllib.request.urlopen(req, timeout=30) as r:
        results = json.loads(r.read())["results"]
    assert 1 <= len(results) <= 5
    urls = [normalise_url(x["url"]) for x in results]
    assert len(set(urls)) == len(urls), "results are de-duplicated by URL"
    assert all(x["url"].startswith(BASE_URL) and x["content"] for x in results)
    assert any(x["url"] == doc.url for x in results), "the document matching the query is found"
