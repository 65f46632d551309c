"""Synthetic agents' requests are generated, not picked from a handful: four fixed tools and four templates let a
miner recognise every synthetic agent's request by its tool set and answer it from a lookup table. The local
network's honest model still makes exactly the call each asks for; a guessing miner and a table do not."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import jsonschema_rs

from api.answer_checks import tool_check
from api.race import MinerRun
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.miner.backends.tool_calls import planned_tool_call
from neurons.miner.quality import LazyBackend
from neurons.validator.datasets import PromptGenerator
from neurons.validator.reference import DeterministicReference
from neurons.validator.scoring import ScoringJob
from neurons.validator.synthetic import challenge_body
from neurons.validator.tasks.inference import InferenceTask
from shared.corpus import builtin_corpus
from shared.metagraph import Neuron
from shared.protocol import ChatCompletionRequest
from tests.validator.test_tool_rewards import TIMES, call_chunks, honest_chunks, scorer_with

CORPUS = builtin_corpus()
AGENTS = PromptGenerator(CORPUS, tool_share=1.0)
# Keywords OpenAI's strict mode refused (some are taken since): a strict tool uses none of them.
NOT_STRICT = {"minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
              "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "uniqueItems", "patternProperties",
              "minProperties", "maxProperties", "oneOf", "allOf", "not", "if", "then", "else"}


def agents(n: int, first_seed: int = 0) -> list[dict[str, Any]]:
    """``n`` built-in agents' records, one per seed (a validator's generator with that seed)."""
    return [AGENTS.sample(random.Random(seed)) for seed in range(first_seed, first_seed + n)]


def tool_set(record: dict[str, Any]) -> str:
    return json.dumps(sorted(json.dumps(t, sort_keys=True) for t in record["tools"]))


def wording(record: dict[str, Any]) -> str:
    """The request's words with its values (quoted text, numbers) masked: what a template-matcher sees."""
    return re.sub(r"-?\d+(?:\.\d+)?", "N", re.sub(r'"[^"]*"', "Q", record["messages"][-1]["content"]))


class _Fixed:
    """A dataset that hands out one record."""

    name = "fixed"

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return self.record


def test_agents_prompts_vary_past_recognition_and_a_lookup_table() -> None:
    """Over 5,000 seeds: nearly every tool set is new, thousands of function names and wordings; a table keyed on
    the tool set (names) learned on half answers almost none of the other half. Before: 4 tools, 4 templates.
    (10,000 seeds took 5 s of CPU for the same shares: 5,000 tool sets, 4,389 names, 4,989 wordings, no hit.)"""
    records = agents(5_000)
    assert len({tool_set(r) for r in records}) >= 4_950
    assert len({t["function"]["name"] for r in records for t in r["tools"]}) >= 2_000
    assert len({wording(r) for r in records}) >= 4_500
    assert {len(r["tools"]) for r in records} == {1, 2, 3, 4, 5, 6}
    types = {json.dumps(s.get("type")) for r in records for t in r["tools"]
             for s in t["function"]["parameters"]["properties"].values()}
    assert types >= {'"string"', '"integer"', '"number"', '"boolean"', '"object"', '"array"'}
    assert any("enum" in s for r in records for t in r["tools"] for s in t["function"]["parameters"]["properties"]
               .values())

    def key(r: dict[str, Any]) -> tuple[str, ...]:
        return tuple(sorted(t["function"]["name"] for t in r["tools"]))
    table = {key(r): r["call"] for r in records[:2_500]}
    hits = sum(table.get(key(r)) == r["call"] for r in records[2_500:])
    assert hits <= 12, hits  # at most 0.5 %


def test_every_kind_of_agents_request_passes_the_apis_request_validation() -> None:
    """Each request is validated as the API validates a caller's (``challenge_body`` runs
    ``ChatCompletionRequest``, which the miner's app validates with too), each schema against JSON Schema's
    (2020-12) metaschema, in Rust (jsonschema's own took ~3 ms a schema, most of the test); and every variant is
    made:
    strict tools, each ``tool_choice``, system and developer messages, an earlier turn with a tool result."""
    seen: set[str] = set()
    checked: set[str] = set()  # the metaschema check once per distinct schema: 1 in 7 repeats
    for seed, record in enumerate(agents(1_500)):
        challenge = InferenceTask().build(random.Random(seed), {"inference": _Fixed(record)})
        body = challenge_body(challenge, seed)
        assert body["tools"] == record["tools"] and body.get("tool_choice") == record.get("tool_choice")
        ChatCompletionRequest.model_validate(body)
        for tool in record["tools"]:
            if (schema := json.dumps(tool["function"]["parameters"], sort_keys=True)) not in checked:
                jsonschema_rs.meta.validate(tool["function"]["parameters"])
                checked.add(schema)
            seen |= {"strict"} if tool["function"].get("strict") else set()
        choice = record.get("tool_choice")
        seen.add(choice if isinstance(choice, str) else "named" if choice else "no tool_choice")
        seen |= {m["role"] for m in record["messages"]}
    assert seen >= {"strict", "auto", "required", "named", "no tool_choice", "system", "developer", "assistant",
                    "tool", "user"}, seen


def test_strict_tools_follow_openais_strict_mode_rules() -> None:
    """A ``strict`` tool's every object is closed (``additionalProperties: false``) and requires every property,
    and no keyword strict mode refuses appears, so OpenAI (and a miner's server) takes it."""
    strict = [t["function"]["parameters"] for r in agents(2_000) for t in r["tools"] if t["function"].get("strict")]
    assert len(strict) >= 300

    def check(schema: dict[str, Any]) -> None:
        assert not NOT_STRICT & set(schema), schema
        if schema.get("type") == "object":
            assert schema["additionalProperties"] is False
            assert sorted(schema["required"]) == sorted(schema["properties"])
            for sub in schema["properties"].values():
                check(sub)
        if schema.get("type") == "array":
            check(schema["items"])
    for parameters in strict:
        check(parameters)


async def test_the_honest_model_makes_exactly_the_call_asked_for_and_scores_1(tmp_path) -> None:
    """The deterministic model (the local network's honest miner and reference) answers each request with
    ``expected["call"]``: the function and the very arguments the message states; the API's answer check takes
    it as a caller's answer (arguments that fit a strict function's schema, a call where one is required), and
    the real rule scores it 1."""
    scorer = scorer_with(DeterministicReference(), tmp_path)
    rng = random.Random(11)
    for _ in range(150):
        challenge = InferenceTask().build(rng, {"inference": AGENTS})
        wanted = challenge.expected["call"]
        body = challenge_body(challenge, rng.randrange(2**31))
        chunks = await honest_chunks(body)
        assert _call(chunks) == (wanted["name"], wanted["arguments"]), challenge.messages[-1]["content"]
        run = MinerRun(Neuron(uid=1, hotkey="hk1"))
        for data in chunks:
            run.absorb(data)
        assert tool_check(body)(run) is None
        job = ScoringJob(source="synthetic", task="InferenceTask", bodies={1: body}, hotkeys={1: "hk1"},
                         chunks={1: chunks}, timings={1: TIMES}, deadline_s=10.0, expected=challenge.expected)
        assert (await scorer.score(job)) == {1: 1.0}, challenge.messages[-1]["content"]


def _call(chunks: list[str]) -> tuple[str, Any]:
    deltas = [c["tool_calls"][0] for data in chunks for choice in json.loads(data)["choices"]
              if (c := choice["delta"]).get("tool_calls")]
    return deltas[0]["function"]["name"], json.loads("".join(d["function"].get("arguments", "") for d in deltas))


async def test_a_guessing_miner_and_a_lookup_table_score_low(tmp_path) -> None:
    """The ``lazy`` profile (a random offered tool, random words for its arguments) and a table of the honest
    calls to 3,000 earlier synthetic agents' requests (keyed on the request's message; the lazy guess where it
    has no entry) both score low. With four tools and four templates over the corpus's 150 titles, the table
    held nearly every request and scored 1."""
    table = {r["messages"][-1]["content"]: planned_tool_call({**r, "seed": 0}) for r in agents(3_000, 10_000)}
    lazy = LazyBackend(DeterministicBackend())
    scorer = scorer_with(DeterministicReference(), tmp_path)
    rng = random.Random(5)
    rewards: dict[int, list[float]] = {2: [], 3: []}
    for _ in range(60):
        challenge = InferenceTask().build(rng, {"inference": AGENTS})
        bodies = {2: challenge_body(challenge, 12), 3: challenge_body(challenge, 13)}
        learned = table.get(challenge.messages[-1]["content"])
        looked_up = call_chunks(learned["function"]["name"], learned["function"]["arguments"]) if learned \
            else [d async for d in lazy.stream(bodies[3])]
        job = ScoringJob(source="synthetic", task="InferenceTask", bodies=bodies, hotkeys={2: "hk2", 3: "hk3"},
                         chunks={2: [d async for d in lazy.stream(bodies[2])], 3: looked_up},
                         timings={2: TIMES, 3: TIMES}, deadline_s=10.0, expected=challenge.expected)
        for uid, reward in (await scorer.score(job)).items():
            rewards[uid].append(reward)
    for uid, got in rewards.items():
        assert max(got) <= 0.5 and sum(got) / len(got) < 0.2, (uid, got)
