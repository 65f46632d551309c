"""A synthetic agent's request: 1 to 6 generated tools in random order, and a user message that asks, in
varied words, for one call of one of them with concrete values (the call the answer is compared with).

Each value is stated by its parameter's name (``city "Oslo"``, ``the days is 3``, ``nonstop: yes``), as the
deterministic test model reads it (``neurons/miner/backends/stated_arguments.py``), so the call the prompt
asks for is well defined and the model the local network runs makes it. Sometimes a system message comes
first, sometimes an earlier turn (small talk, or a call of another offered tool and its result); the
request may be ``strict``, and may carry ``tool_choice`` "auto", "required" or the wanted function's name.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from neurons.miner.backends.stated_arguments import name_words
from neurons.miner.backends.tool_calls import relevance
from neurons.validator.agents.catalogue import DOMAINS
from neurons.validator.agents.tools import Built, Prop, build_tool, draw

MAX_TOOLS = 6
STRICT_SHARE = 0.3  # of requests, how many declare their tools strict
STATED_OPTIONAL = 0.5  # of a tool's declared optional parameters, how many a request gives a value

OPENERS = ("Please {ask}.", "Can you {ask}?", "Could you {ask} for me?", "I need you to {ask}.", "{Ask}.",
           "Hey, {ask}, thanks.", "I'd like to {ask}.", "Would you {ask}?", "{Ask} now, please.",
           "Quick one: {ask}.", "Go ahead and {ask}.", "My assistant should {ask}.")
CLAUSES = ("Use {pairs}.", "Details: {pairs}.", "Parameters: {pairs}.", "Here is what I have: {pairs}.",
           "Go with {pairs}.", "Set {pairs}.", "Info — {pairs}.", "With {pairs}.", "({pairs})")
WHOLE = ("{Ask} with {pairs}.", "{Ask} ({pairs}).", "I want to {ask}: {pairs}.", "{Ask} for me — {pairs}, please.",
         "Time to {ask}; {pairs}.")
PAIRS = ("{label} {value}", "{label}: {value}", "{label}={value}", "{label} = {value}", "the {label} is {value}",
         "{label} set to {value}", "{label} should be {value}", "{label} being {value}")
SYSTEMS = ("You are a helpful assistant.", "You are an assistant with access to tools. Call a tool when it helps.",
           "You are {name}, a concise assistant. Prefer tools over guessing.",
           "Answer briefly. Use the functions provided when the user asks for an action.",
           "You are an operations agent for {name} Inc. Today is {date}.",
           "Always call exactly one tool for a request that needs one.",
           "You are a travel and productivity assistant. Be precise with arguments.")
SMALL_TALK = (("Hi there!", "Hello! How can I help you today?"),
              ("Are you able to use tools?", "Yes, I can call the tools I have been given."),
              ("Good morning", "Good morning! What would you like to do?"),
              ("I have a few errands to run.", "Sure, tell me what you need and I will take care of it."),
              ("Thanks for earlier.", "You're welcome! Anything else?"))
DONE = ("Done.", "All set.", "That's taken care of.", "Finished: the tool reported success.")


def agent_prompt(rng: random.Random, topics: Sequence[str]) -> dict[str, Any]:
    """A record for ``InferenceTask``: ``messages``, ``tools``, maybe ``tool_choice``, and ``call`` (the
    function's name and the arguments the message states). ``topics``: strings for a search's query."""
    strict = rng.random() < STRICT_SHARE
    domains = rng.sample(DOMAINS, rng.randint(1, MAX_TOOLS))
    wanted = build_tool(domains[0], rng, strict=strict)
    arguments, text = request(wanted, rng, topics)
    others = [t for t in (build_tool(d, rng, strict=strict) for d in domains[1:]) if t.name != wanted.name]
    # Another tool may share as many words with the message: the request would ask for two (ambiguous to a
    # model as to the test model's word count), so it is left out.
    others = [t for t in others if relevance(t.tool["function"], text) < relevance(wanted.tool["function"], text)]
    offered = [wanted, *others]
    rng.shuffle(offered)
    messages = [*_before(rng, offered, wanted, topics), {"role": "user", "content": text}]
    record: dict[str, Any] = {"messages": messages, "tools": [t.tool for t in offered],
                              "call": {"name": wanted.name, "arguments": arguments}}
    if (choice := _tool_choice(rng, wanted.name)) is not None:
        record["tool_choice"] = choice
    return record


def request(built: Built, rng: random.Random, topics: Sequence[str]) -> tuple[dict[str, Any], str]:
    """The arguments a request gives and the user message stating them: every required parameter, and
    some optional ones."""
    strict = built.tool["function"].get("strict") is True
    given = [p for p in built.props if p.param.required or strict or rng.random() < STATED_OPTIONAL]
    arguments = {p.name: draw(p, rng, topics) for p in given}
    pairs = [pair for p in given for pair in _pairs(p, arguments[p.name], rng)]
    if rng.random() < 0.5:
        rng.shuffle(pairs)
    ask = rng.choice(built.domain.asks)
    fill = {"ask": ask, "Ask": ask[0].upper() + ask[1:], "pairs": _joined(pairs, rng)}
    if rng.random() < 0.3:
        return arguments, rng.choice(WHOLE).format(**fill)
    opener, clause = rng.choice(OPENERS).format(**fill), rng.choice(CLAUSES).format(**fill)
    return arguments, f"{opener} {clause}" if rng.random() < 0.7 else f"{clause} {opener}"


def _pairs(prop: Prop, value: Any, rng: random.Random) -> list[str]:
    """How the message states ``prop``'s value: one "label value" pair (a nested object's: one per field)."""
    if prop.fields:
        return [pair for f in prop.fields for pair in _pairs(f, value[f.name], rng)]
    label = prop.name if rng.random() < 0.3 else " ".join(name_words(prop.name))
    return [rng.choice(PAIRS).format(label=label, value=_said(prop, value, rng))]


def _said(prop: Prop, value: Any, rng: random.Random) -> str:
    if isinstance(value, list):
        said = [_said(prop, v, rng) for v in value]
        return said[0] if len(said) == 1 else ", ".join(said[:-1]) + rng.choice((" and ", ", and ", ", ")) + said[-1]
    if isinstance(value, bool):
        return rng.choice(("true", "yes")) if value else rng.choice(("false", "no"))
    if isinstance(value, int | float):
        return json.dumps(value)
    enum = prop.param.kind == "enum" or prop.param.item == "enum"
    return value if enum and rng.random() < 0.6 else f'"{value}"'


def _joined(pairs: list[str], rng: random.Random) -> str:
    if len(pairs) == 1:
        return pairs[0]
    style = rng.randrange(3)
    if style == 0:
        return ", ".join(pairs[:-1]) + " and " + pairs[-1]
    return ("; " if style == 1 else ", ").join(pairs)


def _before(rng: random.Random, offered: list[Built], wanted: Built, topics: Sequence[str]) -> list[dict[str, Any]]:
    """What comes before the request: maybe a system message, maybe an earlier turn."""
    out: list[dict[str, Any]] = []
    if rng.random() < 0.4:
        system = rng.choice(SYSTEMS).format(name=rng.choice(("Nova", "Atlas", "Juniper", "Orbit", "Kite")),
                                            date=f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
        out.append({"role": rng.choice(("system", "system", "developer")), "content": system})
    turn = rng.random()
    if turn < 0.2:
        said, answered = rng.choice(SMALL_TALK)
        out += [{"role": "user", "content": said}, {"role": "assistant", "content": answered}]
    elif turn < 0.35 and len(offered) > 1:
        out += _earlier_call(rng, next(t for t in offered if t is not wanted), topics)
    return out


def _earlier_call(rng: random.Random, built: Built, topics: Sequence[str]) -> list[dict[str, Any]]:
    """A finished turn in which another offered tool was called: an agent's conversation goes on."""
    arguments, text = request(built, rng, topics)
    call_id = f"call_{rng.getrandbits(64):016x}"
    call = {"id": call_id, "type": "function", "function": {"name": built.name, "arguments": json.dumps(arguments)}}
    return [{"role": "user", "content": text}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"ok": True})},
            {"role": "assistant", "content": rng.choice(DONE)}]


def _tool_choice(rng: random.Random, name: str) -> str | dict[str, Any] | None:
    """None (most callers send none), "auto", "required" or the wanted function by name."""
    roll = rng.random()
    if roll < 0.45:
        return None
    if roll < 0.7:
        return "auto"
    if roll < 0.85:
        return "required"
    return {"type": "function", "function": {"name": name}}
