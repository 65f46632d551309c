"""Tool calls are scored against the reference model's calls: an agent's request is no longer a free pass.

Before, an answer that called a tool the request offered was not scored at all, so a miner could answer
every agent with any call of any offered tool (or text where a call was demanded) and lose nothing."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.validator.reference import CachedReference, DeterministicReference, OpenAIReference
from neurons.validator.reference_status import ReferenceStatus
from neurons.validator.rewards.tools import Call, Reply, call_similarity, tool_reward, value_similarity
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring import Scorer, ScoringJob
from neurons.validator.tasks import default_registry
from neurons.validator.tasks.base import RewardContext
from shared.corpus import builtin_corpus
from shared.jsonutil import dumps
from shared.protocol import chunk_object
from tests.helpers import loop_gaps, serve_app

CORPUS = builtin_corpus()
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
STOCKS = {"type": "function", "function": {
    "name": "get_stock_price", "description": "A company's stock price",
    "parameters": {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]}}}
ASK = {"messages": [{"role": "user", "content": "What is the weather in Paris today?"}], "task": "InferenceTask",
       "seed": 3, "tools": [STOCKS, WEATHER]}
TIMES = [0.05, 0.1, 0.2, 0.3, 0.4]


async def honest_chunks(body: dict[str, Any]) -> list[str]:
    """What the local network's honest miner streams for ``body`` (a call, or text after a tool result)."""
    return [data async for data in DeterministicBackend().stream(body)]


def call_chunks(name: str, arguments: str) -> list[str]:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
    return [dumps(chunk_object(completion_id="c", model="m", delta={"role": "assistant", "tool_calls": [call]})),
            dumps(chunk_object(completion_id="c", model="m", delta={}, finish_reason="tool_calls"))]


def text_chunks(text: str) -> list[str]:
    return [dumps(chunk_object(completion_id="c", model="m", delta={"role": "assistant", "content": text})),
            dumps(chunk_object(completion_id="c", model="m", delta={}, finish_reason="stop"))]


def scorer_with(reference: Any, tmp_path, status: ReferenceStatus | None = None) -> Scorer:
    """A scorer over ``reference``; ``status``: the reference's record, as the validator hands it in."""
    registry = default_registry()
    return Scorer(registry, RewardContext(reference, CORPUS),
                  ScoreBook(registry.probabilities, alpha=0.5, path=tmp_path / "scores.json"), reference=status)


async def score(scorer: Scorer, bodies: dict[int, dict], chunks: dict[int, list[str]]) -> dict[int, float]:
    job = ScoringJob(source="organic", task="InferenceTask", bodies=bodies, hotkeys={u: f"hk{u}" for u in bodies},
                     chunks=chunks, timings={u: TIMES[:len(c)] for u, c in chunks.items()}, deadline_s=10.0)
    return await scorer.score(job)


async def test_an_agents_request_is_scored_by_the_call_the_reference_model_makes(tmp_path) -> None:
    """With the reproducible reference, the honest miner's call is worth 1; a call of the wrong function,
    the right one with made-up arguments, or text where the model calls a tool are what an agent notices."""
    reference_call = (await DeterministicReference().reply(ASK)).calls[0]
    assert reference_call.name == "get_weather", "the test model picks the tool that fits the question"
    bodies = {u: ASK for u in (1, 2, 3, 4, 5)}
    rewards = await score(scorer_with(DeterministicReference(), tmp_path), bodies, {
        1: await honest_chunks(ASK),
        2: call_chunks("get_stock_price", reference_call.arguments),
        3: call_chunks("get_weather", json.dumps({"city": "Berlin"})),
        4: text_chunks("It is sunny in Paris today, about 21 degrees."),
        5: call_chunks("get_weather", "{not json"),
    })
    assert rewards[1] == 1.0
    assert rewards[2] == 0.0, "the wrong function"
    assert 0.0 <= rewards[3] < 0.5, "the right function with another city: a near miss at most"
    assert rewards[4] == 0.0, "text where the model calls a tool"
    assert rewards[5] == 0.0, "arguments that are not JSON"


async def test_after_a_tool_result_the_text_answer_is_scored_as_text(tmp_path) -> None:
    """The agent's second turn: the reference answers in text, and so is the miner judged."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    second = {**ASK, "messages": [*ASK["messages"], {"role": "assistant", "content": None, "tool_calls": [call]},
                                  {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'}]}
    rewards = await score(scorer_with(DeterministicReference(), tmp_path), {1: second, 2: second}, {
        1: await honest_chunks(second), 2: call_chunks("get_weather", "{}")})
    assert rewards[1] == 1.0
    assert rewards[2] == 0.0, "calling again where the model answers"


async def test_calls_the_request_did_not_allow_are_a_zero_and_text_where_one_was_demanded_too(tmp_path) -> None:
    plain = {k: v for k, v in ASK.items() if k != "tools"}
    none = {**ASK, "tool_choice": "none"}
    required = {**ASK, "tool_choice": "required"}
    rewards = await score(scorer_with(DeterministicReference(), tmp_path), {1: plain, 2: none, 3: required}, {
        1: call_chunks("get_weather", "{}"), 2: call_chunks("get_weather", "{}"),
        3: text_chunks("It is sunny in Paris today.")})
    assert rewards == {1: 0.0, 2: 0.0, 3: 0.0}


def sampled_llm(message: dict[str, Any]) -> web.Application:
    """A hosted reference model (not reproducible) that answers every request with ``message``."""
    async def completions(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", **message}}]})
    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def test_with_a_sampled_reference_arguments_are_compared_by_meaning_and_a_choice_of_text_is_not_scored(
        tmp_path) -> None:
    """A model sampled at temperature words a string argument its own way, and may answer instead of calling:
    the arguments are compared by similarity, and text against a reference's call is left unscored (unless
    the request demanded a call)."""
    said = {"content": None, "tool_calls": [{"id": "call_9", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Paris, France", "unit": "celsius"})}}]}
    async with serve_app(sampled_llm(said)) as url, aiohttp.ClientSession() as session:
        reference = CachedReference(OpenAIReference(url + "/v1", session=session))
        assert (await reference.reply(ASK)).calls == (Call("get_weather", said["tool_calls"][0]["function"]
                                                           ["arguments"]),)
        required = {**ASK, "tool_choice": "required"}
        rewards = await score(scorer_with(reference, tmp_path), {1: ASK, 2: ASK, 3: ASK, 4: ASK, 5: required}, {
            1: call_chunks("get_weather", json.dumps({"unit": "celsius", "city": "Paris, France"})),
            2: call_chunks("get_weather", json.dumps({"city": "Paris", "unit": "celsius"})),
            3: call_chunks("get_stock_price", json.dumps({"ticker": "PARIS"})),
            4: text_chunks("It is sunny in Paris."),
            5: text_chunks("It is sunny in Paris.")})
    assert rewards[1] == 1.0, "the same arguments in another key order"
    assert 0.6 < rewards[2] < 1.0, "the same city, worded more briefly"
    assert rewards[3] == 0.0
    assert 4 not in rewards, "a sampled model may answer instead of calling: not scored"
    assert rewards[5] == 0.0, "tool_choice required, answered in text"


def test_call_similarity_pairs_calls_by_name_and_counts_missing_and_extra_ones() -> None:
    a, b = Call("f", '{"x": 1}'), Call("g", '{"y": "two words"}')
    assert call_similarity((a, b), (b, a)) == 1.0, "a parallel call's order is the model's choice"
    assert call_similarity((a,), (a, b)) == 0.5, "a missing call"
    assert call_similarity((a, b, Call("h", "{}")), (a, b)) == 2 / 3, "an extra call"
    assert call_similarity((Call("f", '{"x": 2}'),), (a,)) == 0.0
    assert call_similarity((Call("f", "[1]"),), (a,)) == 0.0, "arguments must be an object"
    assert value_similarity({"flag": True}, {"flag": 1}) == 0.0, "true is not 1 in JSON"
    assert value_similarity({"a": [1, 2], "b": {"c": "x"}}, {"a": [1, 3], "b": {"c": "x"}}) == 0.75


def test_tool_reward_keeps_text_against_text_for_the_task() -> None:
    """Both answering in text is the task's own reward to give: asking this function is a mistake."""
    try:
        tool_reward((), Reply(text="hello"), ASK, reproducible=True)
    except ValueError:
        return
    raise AssertionError("text against text must not be judged as calls")


async def test_synthetic_agent_prompts_offer_tools_and_tell_the_honest_miner_from_a_guessing_one(tmp_path) -> None:
    """A share of the built-in inference prompts are an agent's, offering 1 to 6 tools: without them a request
    with ``tools`` was always a caller's, and no synthetic task checked a call. The honest miner's call scores
    1; the lazy profile's (a random offered tool, random words for arguments) far less."""
    import random

    from neurons.miner.quality import LazyBackend
    from neurons.validator.datasets import PromptGenerator
    from neurons.validator.synthetic import challenge_body
    from neurons.validator.tasks.inference import InferenceTask

    rng = random.Random(5)
    datasets = {"inference": PromptGenerator(CORPUS, tool_share=1.0)}
    lazy = LazyBackend(DeterministicBackend())
    honest_rewards, lazy_rewards = [], []
    for _ in range(12):
        challenge = InferenceTask().build(rng, datasets)
        assert challenge.tools and 1 <= len(challenge.tools) <= 6
        bodies = {1: challenge_body(challenge, 11), 2: challenge_body(challenge, 12)}
        assert bodies[1]["tools"] == challenge.tools
        job = ScoringJob(source="synthetic", task="InferenceTask", bodies=bodies, hotkeys={1: "hk1", 2: "hk2"},
                         chunks={1: await honest_chunks(bodies[1]), 2: [d async for d in lazy.stream(bodies[2])]},
                         timings={1: TIMES, 2: TIMES}, deadline_s=10.0)
        rewards = await scorer_with(DeterministicReference(), tmp_path).score(job)
        honest_rewards.append(rewards[1])
        lazy_rewards.append(rewards[2])
    assert honest_rewards == [1.0] * 12
    assert max(lazy_rewards) <= 0.5 and sum(lazy_rewards) / 12 < 0.2, lazy_rewards


def test_a_dataset_prompt_may_offer_tools_checked_as_a_callers(tmp_path) -> None:
    from neurons.validator.datasets import load_jsonl_datasets

    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "Weather in Oslo?", "tools": [WEATHER]}) + "\n")
    record = load_jsonl_datasets(good)["inference"].records[0]
    assert record["tools"] == [WEATHER]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps({"prompt": "Hi", "tools": [{"type": "x"}]}) + "\n")
    try:
        load_jsonl_datasets(bad)
    except ValueError as e:
        assert str(e).startswith(f"{bad}:2: tools.") , e
    else:
        raise AssertionError("a tool every miner's server would refuse must stop the validator at start")


async def test_an_empty_answer_to_an_agents_request_is_a_zero_whatever_the_reference(tmp_path) -> None:
    """No call and no text is not a choice to answer in text: it was left unscored when a sampled reference
    called a tool, so a miner could answer every agent's request with nothing and never be scored on them (an
    empty answer is a 0 everywhere else). A caller's ``max_tokens`` does not excuse it either: the reference
    model, asked the same, says something (its call)."""
    said = {"content": None, "tool_calls": [{"id": "call_9", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]}
    capped = {**ASK, "max_tokens": 64}
    for reference_kind in ("sampled", "deterministic"):
        async with serve_app(sampled_llm(said)) as url, aiohttp.ClientSession() as session:
            reference = CachedReference(OpenAIReference(url + "/v1", session=session)) \
                if reference_kind == "sampled" else DeterministicReference()
            scorer = scorer_with(reference, tmp_path)
            organic = await score(scorer, {1: ASK, 2: capped}, {1: text_chunks(""), 2: text_chunks("")})
            job = ScoringJob(source="synthetic", task="InferenceTask", bodies={1: ASK}, hotkeys={1: "hk1"},
                             chunks={1: text_chunks("")}, timings={1: TIMES}, deadline_s=10.0)
            synthetic = await scorer.score(job)
        assert organic == {1: 0.0, 2: 0.0}, (reference_kind, organic)
        assert synthetic == {1: 0.0}, (reference_kind, synthetic)


async def test_megabytes_of_arguments_cost_the_validator_little(tmp_path) -> None:
    """A miner's 8 MB of tiny keys (what the miner client lets through) were decoded on the event loop three
    times per call: about 5 s per answer (12 s for this job), while every race's timings and /health waited.
    Only a call paired with the reference's is decoded, and only up to ``MAX_ARGUMENT_CHARS`` (0 past it)."""
    from neurons.validator.rewards.tools import MAX_ARGUMENT_CHARS

    huge = json.dumps({f"k{i}": [i, {"a": "b"}] for i in range(280_000)})
    assert len(huge) > 8_000_000
    many = [{"index": i, "id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            for i in range(20_000)]
    flood = [dumps(chunk_object(completion_id="c", model="m", delta={"role": "assistant", "tool_calls": many}))]
    for reproducible in (True, False):
        scorer = scorer_with(DeterministicReference(), tmp_path)
        scorer.ctx.reference.reproducible = reproducible  # False: the similarity path, as a sampled reference's
        async with loop_gaps(0.01) as gaps:
            rewards = await score(scorer, {1: ASK, 2: ASK, 3: ASK}, {1: call_chunks("get_weather", huge),
                                                                     2: call_chunks("get_weather", huge), 3: flood})
        assert rewards == {1: 0.0, 2: 0.0, 3: 0.0}
        assert max(gaps) < 2.0, f"the event loop held for {max(gaps):.1f}s"
    fits = json.dumps({"city": "Paris", "note": "x" * (MAX_ARGUMENT_CHARS - 40)})
    assert call_similarity((Call("get_weather", fits),), (Call("get_weather", '{"city": "Paris"}'),)) == 0.5


async def test_a_call_is_timed_from_its_name_not_from_an_empty_call_sent_at_once(tmp_path) -> None:
    """The latency penalty times a call from its first chunk that names a function: an empty tool-call delta
    (an index, an id) sent at once, and the call at the deadline, had full latency credit, as a space or a
    "." before text once had."""
    call = (await DeterministicReference().reply(ASK)).calls[0]
    empty = dumps(chunk_object(completion_id="c", model="m", delta={
        "role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function"}]}))
    named = dumps(chunk_object(completion_id="c", model="m", delta={"tool_calls": [
        {"index": 0, "function": {"name": call.name, "arguments": call.arguments}}]}))
    end = dumps(chunk_object(completion_id="c", model="m", delta={}, finish_reason="tool_calls"))
    job = ScoringJob(source="organic", task="InferenceTask", bodies={1: ASK, 2: ASK}, hotkeys={1: "hk1", 2: "hk2"},
                     chunks={1: [empty, named, end], 2: [named, end]},
                     timings={1: [0.05, 9.5, 9.6], 2: [0.05, 0.1]}, deadline_s=10.0)
    rewards = await scorer_with(DeterministicReference(), tmp_path).score(job)
    assert rewards[2] == 1.0
    assert rewards[1] < 0.1, "the call came at 95 % of the deadline"


async def test_text_to_a_synthetic_agents_prompt_is_a_zero_even_against_a_sampled_reference(tmp_path) -> None:
    """A built-in agent's prompt asks for one call ("Check the weather: city "Oslo", days 3"): text
    is no answer to it. With a sampled reference that called, text was left unscored, so a miner that cannot
    make the call (a model-free one) answered in text and sat out every agent's prompt; now it is a 0, and a
    call is still judged against the reference's."""
    import random

    from neurons.validator.datasets import PromptGenerator
    from neurons.validator.synthetic import challenge_body
    from neurons.validator.tasks.inference import InferenceTask

    challenge = InferenceTask().build(random.Random(7), {"inference": PromptGenerator(CORPUS, tool_share=1.0)})
    wanted = challenge.expected["call"]["name"]
    assert wanted in {t["function"]["name"] for t in challenge.tools}
    bodies = {1: challenge_body(challenge, 11), 2: challenge_body(challenge, 12)}
    arguments = (await DeterministicReference().reply(bodies[2])).calls[0].arguments
    said = {"content": None, "tool_calls": [{"id": "call_9", "type": "function",
                                             "function": {"name": wanted, "arguments": arguments}}]}
    async with serve_app(sampled_llm(said)) as url, aiohttp.ClientSession() as session:
        scorer = scorer_with(CachedReference(OpenAIReference(url + "/v1", session=session)), tmp_path)
        job = ScoringJob(source="synthetic", task="InferenceTask", bodies=bodies, hotkeys={1: "hk1", 2: "hk2"},
                         chunks={1: text_chunks("Here are some recent pages about it."),
                                 2: call_chunks(wanted, arguments)},
                         timings={1: TIMES, 2: TIMES}, deadline_s=10.0, expected=challenge.expected)
        rewards = await scorer.score(job)
    assert rewards == {1: 0.0, 2: 1.0}


async def test_a_call_cut_by_the_callers_max_tokens_scores_as_the_references_cut_call(tmp_path) -> None:
    """The caller's ``max_tokens`` cuts the reference model's call as it cuts an honest miner's (the API returns
    it cut, as OpenAI does): both arguments half a JSON object. Scored as "not JSON", the honest miner's was a 0,
    so any key's small limit handed every miner a 0; compared as text, the same cut is the reference's call."""
    cut = '{"city": "Par'
    said = {"content": None, "tool_calls": [{"id": "call_9", "type": "function", "function": {
        "name": "get_weather", "arguments": cut}}], "finish_reason": "length"}
    small = {**ASK, "max_tokens": 5}
    for reproducible in (True, False):
        async with serve_app(sampled_llm(said)) as url, aiohttp.ClientSession() as session:
            reference = CachedReference(OpenAIReference(url + "/v1", session=session, reproducible=reproducible))
            rewards = await score(scorer_with(reference, tmp_path), {u: small for u in (1, 2, 3, 4)}, {
                1: call_chunks("get_weather", cut), 2: call_chunks("get_weather", '{"city": "Ber'),
                3: call_chunks("get_stock_price", cut), 4: call_chunks("get_weather", "{not json")})
        assert rewards[1] == 1.0, (reproducible, "the reference's very cut")
        assert 0.0 < rewards[2] < (0.5 if reproducible else 1.0), (reproducible, "another city, cut: a near miss")
        assert rewards[3] == 0.0, (reproducible, "the wrong function")
        assert rewards[4] < rewards[1], reproducible


async def test_a_json_answer_cut_by_the_callers_max_tokens_scores_as_the_references_cut_text(tmp_path) -> None:
    """The same limit on a ``response_format`` answer (the API returns it cut, as OpenAI does): it is scored as
    text against the reference's cut text, so the honest miner's cut is the reference's answer, never a 0."""
    cut = '{"city": "Paris", "weather": "sunny", "celsius": 2'
    small = {**ASK, "tools": None, "response_format": {"type": "json_object"}, "max_tokens": 12}

    def cut_chunks(text: str) -> list[str]:
        return [dumps(chunk_object(completion_id="c", model="m", delta={"role": "assistant", "content": text})),
                dumps(chunk_object(completion_id="c", model="m", delta={}, finish_reason="length"))]
    for reproducible in (True, False):
        async with serve_app(sampled_llm({"content": cut, "finish_reason": "length"})) as url, \
                aiohttp.ClientSession() as session:
            reference = CachedReference(OpenAIReference(url + "/v1", session=session, reproducible=reproducible))
            rewards = await score(scorer_with(reference, tmp_path), {u: small for u in (1, 2)}, {
                1: cut_chunks(cut), 2: cut_chunks('{"city": "Berlin", "weather": "rain", "celsius": 1')})
        assert rewards[1] == 1.0, (reproducible, "the reference's very cut")
        assert rewards[2] < rewards[1], reproducible
