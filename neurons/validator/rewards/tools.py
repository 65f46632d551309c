"""Tool calls judged against the reference model's: an agent's request is scored like any other.

Agents (the OpenAI Agents SDK, LangChain, Pydantic AI) send ``tools`` and act on the calls that come
back: a call of the wrong function, or with the wrong arguments, is what such a caller notices. Until
this module, an answer that called a tool it was offered was not scored at all, so a miner could answer
every agent with any call of any offered tool and lose nothing.

The rule, with the reference model asked the same request:

- both call tools: the calls are paired by function name; a pair scores the similarity of its
  arguments (the same keys with the same values: 1), an unpaired call on either side scores 0, and
  the reward is the mean over the longer list. Arguments that are not a JSON object score 0, but against
  a reference's that are not one either (the caller's ``max_tokens`` cut its call too, as it cut an honest
  miner's) they are compared as text. With a
  reproducible reference (the same deterministic model) an honest miner makes the very same calls:
  anything else earns at most half that similarity, as a text answer's near miss does;
- one calls a tool and the other answers in text: with a reproducible reference, a 0. Otherwise a
  model sampled at temperature may well decide either way, so the answer is not scored, unless the
  request demanded a call (``tool_choice`` ``"required"`` or a named function) and the miner answered
  in text: that is a 0 whatever the reference says;
- both answer in text: the task's own text reward, as without tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from api.answer_checks import must_call
from neurons.validator.rewards.text import NEAR_MISS_CREDIT, same_text, similarity

# A call's arguments are compared up to this depth and size: they come from a miner, and comparing two
# huge nested objects must not cost the validator more than an answer's text does.
MAX_DEPTH = 16
MAX_ITEMS = 1_000
# A miner's arguments are parsed only up to this many characters (or twice the reference call's, if more):
# decoding 8 MB of tiny keys held the event loop for seconds, three times per call. Longer ones score 0,
# as no model's call of a 64-token task, or an agent's tool, is that far from the reference's.
MAX_ARGUMENT_CHARS = 100_000


@dataclass(frozen=True)
class Call:
    """One tool call: the function's name and its arguments as the model wrote them (JSON text)."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Reply:
    """What a model answered: its text, and the tools it called (none: a text answer)."""

    text: str = ""
    calls: tuple[Call, ...] = field(default_factory=tuple)


def calls_of(tool_calls: Any) -> tuple[Call, ...]:
    """The calls of an OpenAI message's ``tool_calls`` (a call without a function name is kept with the name
    "": it calls nothing the request offered, and is scored so)."""
    out = []
    for call in tool_calls if isinstance(tool_calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            name, arguments = fn.get("name"), fn.get("arguments")
            out.append(Call(name if isinstance(name, str) else "", arguments if isinstance(arguments, str) else ""))
    return tuple(out)


def offers_tools(body: dict[str, Any]) -> bool:
    """The model may call a tool: ``tools`` given and ``tool_choice`` not ``"none"``."""
    return bool(body.get("tools")) and body.get("tool_choice") != "none"


def _arguments(call: Call, limit: int | None = None) -> dict[str, Any] | None:
    """A call's arguments as a JSON object; None for anything else, or for text past ``limit``."""
    if limit is not None and len(call.arguments) > limit:
        return None
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def value_similarity(a: Any, b: Any, depth: int = 0) -> float:
    """How alike two JSON values are, in [0, 1]: equal is 1; strings by the text similarity (a sampled
    model words a ``query`` argument its own way); objects and lists key by key and item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return 1.0 if a is b else 0.0  # True == 1 in Python; in a JSON argument they differ
    if isinstance(a, str) and isinstance(b, str):
        if same_text(a, b):
            return 1.0
        return similarity(a[:10_000], b[:10_000])
    if depth >= MAX_DEPTH:
        return 0.0
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(dict.fromkeys([*a, *b]))[:MAX_ITEMS]
        if not keys:
            return 1.0
        return sum(value_similarity(a[k], b[k], depth + 1) for k in keys if k in a and k in b) / len(keys)
    if isinstance(a, list) and isinstance(b, list):
        longer = min(max(len(a), len(b)), MAX_ITEMS)
        if not longer:
            return 1.0
        pairs = zip(a[:MAX_ITEMS], b[:MAX_ITEMS], strict=False)  # the shorter list's missing items score 0
        return sum(value_similarity(x, y, depth + 1) for x, y in pairs) / longer
    if isinstance(a, int | float) and isinstance(b, int | float):
        return 1.0 if a == b else 0.0
    return 1.0 if a is None and b is None else 0.0


def call_similarity(answer: tuple[Call, ...], reference: tuple[Call, ...]) -> float:
    """Calls paired by name, in order (a parallel call's order is the model's choice): each pair scores its
    arguments' similarity, and the mean is over the longer list, so a missing or an extra call costs."""
    if not answer or not reference:
        return 0.0
    left = list(reference)
    total = 0.0
    for call in answer:
        if not left:
            break  # every further call is unpaired: it scores 0, and is not even parsed
        match = next((i for i, r in enumerate(left) if r.name == call.name), None)
        if match is None:
            continue
        paired = left.pop(match)
        mine, theirs = _arguments(call, _limit(paired)), _arguments(paired)
        if mine is not None and theirs is not None:
            total += value_similarity(mine, theirs)
        elif theirs is None and len(call.arguments) <= _limit(paired):
            total += value_similarity(call.arguments, paired.arguments)  # cut JSON both (``_key``): as text
    return total / max(len(answer), len(reference))


def _limit(reference: Call) -> int:
    """How long a miner's arguments may be, to be compared with ``reference``'s."""
    return max(MAX_ARGUMENT_CHARS, 2 * len(reference.arguments))


def same_calls(answer: tuple[Call, ...], reference: tuple[Call, ...]) -> bool:
    """The same functions called with the same arguments (as JSON values, in any key order)."""
    if len(answer) != len(reference):
        return False
    limit = max((_limit(r) for r in reference), default=MAX_ARGUMENT_CHARS)
    mine = [_key(c, limit) for c in answer]
    if any(m is None for m in mine):
        return False
    return sorted(mine) == sorted(_key(r, limit) or "" for r in reference)


def _key(call: Call, limit: int) -> str | None:
    """The call as compared by ``same_calls``: its name and its arguments as a JSON value, or, when they are not
    a JSON object, as the text they are (the caller's ``max_tokens`` cut the reference's call too: an honest
    miner's is cut the same, and scoring it 0 made any caller's small limit a free 0 for every miner). None:
    longer than ``limit``."""
    value = _arguments(call, limit)
    if value is not None:
        return f"{call.name}\0{json.dumps(value, sort_keys=True)}"
    return None if len(call.arguments) > limit else f"{call.name}\1{call.arguments.strip()}"


def tool_reward(answer: tuple[Call, ...], reference: Reply, body: dict[str, Any], *,
                reproducible: bool) -> float | None:
    """The reward of an answer to a request that offered tools, when either side called one (the rule is in
    the module docstring); None: not scored. Both answering in text is the task's to judge (a ValueError)."""
    if not answer and must_call(body):
        return 0.0
    if not answer and not reference.calls:
        raise ValueError("both answered in text: the task's own reward judges that")
    if answer and reference.calls:
        if reproducible:
            return 1.0 if same_calls(answer, reference.calls) else \
                NEAR_MISS_CREDIT * call_similarity(answer, reference.calls)
        return call_similarity(answer, reference.calls)
    return 0.0 if reproducible else None
